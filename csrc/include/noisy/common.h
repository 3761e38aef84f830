// Torch-free helpers shared by the CPU and the CUDA kernels.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define NOISY_HD __host__ __device__ __forceinline__
#define NOISY_SIMD
#define NOISY_SIMD_SUMS
#else
#define NOISY_HD inline
// Let the CPU build vectorize a loop over the columns of a row (OpenMP SIMD); the second
// form also sums the loop's `loss_sum` and `odds_sum`.
#define NOISY_SIMD _Pragma("omp simd")
#define NOISY_SIMD_SUMS _Pragma("omp simd reduction(+ : loss_sum, odds_sum)")
#endif

namespace noisy {

// Overloads so that one template body works for float and double, on host and device.
NOISY_HD float math_exp(float x) { return expf(x); }
NOISY_HD double math_exp(double x) { return exp(x); }
NOISY_HD float math_log(float x) { return logf(x); }
NOISY_HD double math_log(double x) { return log(x); }
#if defined(__CUDA_ARCH__)
NOISY_HD float math_log1p(float x) { return log1pf(x); }
#else
// glibc's log1pf is about 3x slower than its logf. log1p(x) = log(u) x / (u - 1) with
// u = 1 + x rounded: the ratio corrects the rounding of u (a few ulp, Goldberg 1991).
NOISY_HD float math_log1p(float x) {
  const float u = 1.0f + x;
  if (u == 1.0f) return x;  // |x| below half an ulp of 1: log1p(x) = x to float precision
  if (u == INFINITY) return u;
  return logf(u) * (x / (u - 1.0f));
}
#endif
NOISY_HD double math_log1p(double x) { return log1p(x); }

// log1p(x) for |x| <= 1/2, without a library call so that loops over it vectorize:
// 2 atanh(s) with s = x / (2 + x), |s| <= 1/3, as its odd series to s^15 (truncation
// error below 1e-9; about 2 ulp in all). double needs far more terms: it calls log1p.
NOISY_HD float log1p_small(float x) {
  const float s = x / (2.0f + x);
  const float s2 = s * s;
  float series = 1.0f / 15.0f;
  series = series * s2 + 1.0f / 13.0f;
  series = series * s2 + 1.0f / 11.0f;
  series = series * s2 + 1.0f / 9.0f;
  series = series * s2 + 1.0f / 7.0f;
  series = series * s2 + 1.0f / 5.0f;
  series = series * s2 + 1.0f / 3.0f;
  return 2.0f * s * (series * s2 + 1.0f);
}
NOISY_HD double log1p_small(double x) { return log1p(x); }

template <class T>
NOISY_HD T neg_infinity() { return -static_cast<T>(INFINITY); }

template <class T>
NOISY_HD T quiet_nan() { return static_cast<T>(NAN); }

// The largest finite float or double (FLT_MAX / DBL_MAX, without <cfloat> on the device).
template <class T>
NOISY_HD T max_finite() { return static_cast<T>(sizeof(T) == 4 ? 3.4028234663852886e38 : 1.7976931348623157e308); }

// True for finite values; written without std:: so it also compiles for the device.
template <class T>
NOISY_HD bool is_finite(T x) { return x - x == T(0); }

// 16-bit storage types with the same bits as torch's bfloat16 / float16. The conversions
// are written out (round to nearest even) so CPU and CUDA round identically.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

NOISY_HD uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }
NOISY_HD float bits_float(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }

NOISY_HD float to_float(bf16_t h) { return bits_float(static_cast<uint32_t>(h.bits) << 16); }

NOISY_HD bf16_t to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  return bf16_t{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

NOISY_HD float to_float(f16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return bits_float(float_bits(magnitude) | sign);
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

NOISY_HD f16_t to_f16(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t out;
  if (u >= (143u << 23)) {  // >= 2^16 (overflow), inf or NaN
    out = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // below 2^-14: the float adder rounds into the subnormal
    const uint32_t magic = 126u << 23;
    out = float_bits(bits_float(u) + bits_float(magic)) - magic;
  } else {
    const uint32_t mantissa_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + mantissa_odd;
    out = u >> 13;
  }
  return f16_t{static_cast<uint16_t>(out | (sign >> 16))};
}

// Load a stored value in the accumulation type Acc, and store one back.
template <class Acc> NOISY_HD Acc load_as(float x) { return static_cast<Acc>(x); }
template <class Acc> NOISY_HD Acc load_as(double x) { return static_cast<Acc>(x); }
template <class Acc> NOISY_HD Acc load_as(bf16_t x) { return static_cast<Acc>(to_float(x)); }
template <class Acc> NOISY_HD Acc load_as(f16_t x) { return static_cast<Acc>(to_float(x)); }

template <class Scalar> struct Store;
template <> struct Store<float> { template <class A> NOISY_HD static float from(A x) { return static_cast<float>(x); } };
template <> struct Store<double> { template <class A> NOISY_HD static double from(A x) { return static_cast<double>(x); } };
template <> struct Store<bf16_t> { template <class A> NOISY_HD static bf16_t from(A x) { return to_bf16(static_cast<float>(x)); } };
template <> struct Store<f16_t> { template <class A> NOISY_HD static f16_t from(A x) { return to_f16(static_cast<float>(x)); } };

// The type a loss op stores its gradient in: the logits' own, except float16's, whose range
// flushes a gradient below 6e-8 to 0 (and keeps few bits below 6e-5) before backward scales it
// by the incoming gradient, which a loss scale (GradScaler) makes large.
template <class Scalar> struct GradStorage { using type = Scalar; };
template <> struct GradStorage<f16_t> { using type = float; };

// The unsigned integer type of a size in bytes.
template <int Bytes> struct UnsignedOfSize;
template <> struct UnsignedOfSize<2> { using type = uint16_t; };
template <> struct UnsignedOfSize<4> { using type = uint32_t; };
template <> struct UnsignedOfSize<8> { using type = uint64_t; };

// A strided 2-D view.
template <class Scalar>
struct Matrix {
  Scalar* data;
  int64_t row_stride;
  int64_t col_stride;
  NOISY_HD Scalar& at(int64_t row, int64_t col) const { return data[row * row_stride + col * col_stride]; }
};

}  // namespace noisy
