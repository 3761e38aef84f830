// CPU kernels: at::parallel_for over rows, the per-row math from csrc/include.
#include <ATen/Parallel.h>
#include <math.h>

// glibc's vector math library (libmvec) has a SIMD exp for double on x86-64: declaring it
// lets the `omp simd` loop below call several lanes at a time (the builds link -lmvec).
#if defined(__x86_64__) && defined(__GLIBC__)
#pragma omp declare simd notinbranch
extern "C" double exp(double) noexcept;
#define NOISY_CPU_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define NOISY_CPU_CLONES
#endif

#include <algorithm>
#include <vector>

#include "noisy/kernels.h"

namespace noisy {
namespace cpu {
namespace {

// exp(x) for x <= 0 (NaN stays NaN), inline so that the float exp loop vectorizes without a
// library call (libmvec's call was over 40% of the CE kernel in perf, the ymm registers spilled
// around each call):
// 2^n e^r with n = round(x / ln 2), r = x - n ln 2 (ln 2 split in two, the first part short
// enough for n * part to be exact), |r| <~ ln2 / 2, e^r as its Taylor polynomial to r^7
// (truncation < 6e-9). Plain multiply-adds, no fma: the AVX2 and baseline builds give the
// same bits. Results below 2^-126 (x < -87.3) flush toward 0.
inline float exp_nonpositive(float x) {
  x = x < -88.0f ? -88.0f : x;  // keeps 2^n a normal float or zero; NaN compares false
  // Adding 1.5 * 2^23 rounds x / ln 2 to an integer held in the low mantissa bits.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float poly = 1.0f / 5040.0f;
  poly = poly * r + 1.0f / 720.0f;
  poly = poly * r + 1.0f / 120.0f;
  poly = poly * r + 1.0f / 24.0f;
  poly = poly * r + 1.0f / 6.0f;
  poly = poly * r + 0.5f;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  const int32_t n_bits = __builtin_bit_cast(int32_t, shifted) - 0x4b400000;  // n as an integer
  return poly * __builtin_bit_cast(float, (n_bits + 127) << 23);
}
inline double exp_nonpositive(double x) { return exp(x); }

// One thread owns a whole row: the reductions are the identity, and the terms
// exp(z_j - ref) are computed once, vectorized, into a per-thread row buffer.
template <class Acc>
struct SerialGroup {
  static constexpr int width = 1;
  int lane = 0;
  Acc* row_cache;  // [classes]: exp(z_j - ref), 0 for the arg class

  template <class T> T sum(T x) const { return x; }
  // Loads the row into the cache; max, first arg-max and (if `second`) second largest: the
  // same result as TopTwo::add over the row, ties and NaN included. Only float compares run
  // vectorized: the arg-max is the first block of 8 holding the max, then the least offset
  // within it that holds the max (a min-reduction, no branch to mispredict); the second
  // largest a max with the arg column masked out.
  template <class Logit>
  TopTwo<Acc> top_two_of(const Logit& logit, int64_t classes, bool second) const {
    Acc* z = row_cache;
    for (int64_t j = 0; j < classes; ++j) z[j] = logit(j);
    TopTwo<Acc> top;
    Acc max1 = top.max1;
#pragma omp simd reduction(max : max1)
    for (int64_t j = 0; j < classes; ++j) max1 = z[j] > max1 ? z[j] : max1;
    if (!(max1 > top.max1)) return top;  // no value above -inf: arg stays -1
    int64_t block = 0;
    for (; block + 8 < classes; block += 8) {
      int hit = 0;
#pragma omp simd reduction(| : hit)
      for (int64_t j = block; j < block + 8; ++j) hit |= z[j] == max1;
      if (hit) break;
    }
    const int width = static_cast<int>(std::min<int64_t>(8, classes - block));
    int offset = width;
#pragma omp simd reduction(min : offset)
    for (int k = 0; k < width; ++k) offset = std::min(offset, z[block + k] == max1 ? k : width);
    const int64_t arg = block + offset;
    top.max1 = max1;
    top.arg = arg;
    if (!second) return top;
    const Acc at_arg = z[arg];
    z[arg] = top.max2;
    Acc max2 = top.max2;
#pragma omp simd reduction(max : max2)
    for (int64_t j = 0; j < classes; ++j) max2 = z[j] > max2 ? z[j] : max2;
    z[arg] = at_arg;
    top.max2 = max2;
    return top;
  }

  // Turns the block [begin, end) of the cached row into exp(z_j - ref) in place, 0 for the
  // arg column (evaluated at -inf: its term never enters the sum, which stays exact when every
  // other term is tiny).
  template <class Logit>
  Acc rest_exp_sum(const Logit&, int64_t begin, int64_t end, int64_t arg, Acc ref) const {
    Acc* rel = row_cache;
    if (arg >= begin && arg < end) rel[arg] = neg_infinity<Acc>();
    Acc sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = begin; j < end; ++j) {
      rel[j] = exp_nonpositive(rel[j] - ref);
      sum += rel[j];
    }
    return sum;
  }

  template <class Logit>
  Acc rel_exp(const SoftmaxRow<Acc>&, const Logit&, int64_t j) const { return row_cache[j]; }
};

// Rows per task: enough work per task to amortize the scheduling.
int64_t grain_for(int64_t work_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row)); }

}  // namespace

// Built for AVX2 and for the baseline, picked at load time (GCC function multiversioning).
// Not x86-64-v3: GCC contracts its multiply-adds into FMAs, 20-30% less time per row at
// C = 100 and 1000, but other last bits, which moved the mnist5k runs that tests/test_train.py
// compares with CE to a 0.1-point margin (bench/NOTES.md, v3).
template <class Scalar, class Acc>
NOISY_CPU_CLONES void loss_rows(const RowLossProblem<Scalar, Acc>& p, int64_t begin, int64_t end, Acc* row_cache) {
  for (int64_t row = begin; row < end; ++row) noisy::row_loss(p, row, SerialGroup<Acc>{0, row_cache});
}

template <class Scalar, class Acc>
void row_loss(const RowLossProblem<Scalar, Acc>& p) {
  at::parallel_for(0, p.rows, grain_for(p.classes), [&](int64_t begin, int64_t end) {
    std::vector<Acc> row_cache(p.classes);
    loss_rows(p, begin, end, row_cache.data());
  });
}

void sample_complementary(const SamplingProblem& p) {
  at::parallel_for(0, p.rows, grain_for(p.exclude.data ? p.classes * p.k : p.k), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) sample_row(p, row);
  });
}

template <class Scalar, class Acc>
void jnpl_select(const SelectProblem<Scalar, Acc>& p) {
  at::parallel_for(0, p.rows, grain_for(p.classes), [&](int64_t begin, int64_t end) {
    std::vector<Acc> row_cache(p.classes);
    for (int64_t row = begin; row < end; ++row) select_row(p, row, SerialGroup<Acc>{0, row_cache.data()});
  });
}

template <class Scalar, class Acc>
void normalize_weights(const NormalizeProblem<Scalar, Acc>& p) {
  const NormStats<Acc> stats = norm_stats_of(p, 0, 1);
  at::parallel_for(0, p.size, 4096, [&](int64_t begin, int64_t end) { normalize_elements(p, stats, begin, end, 1); });
}

template <class Scalar>
void update_history(const HistoryProblem<Scalar>& p) {
  // Sequential: rows may share an index, and the work is one arg-max per row.
  std::vector<double> row_cache(p.classes);
  for (int64_t row = 0; row < p.rows; ++row) history_row(p, row, SerialGroup<double>{0, row_cache.data()});
}

#define NOISY_INSTANTIATE_CPU(S, A)                                      \
  template void row_loss<S, A>(const RowLossProblem<S, A>&);             \
  template void jnpl_select<S, A>(const SelectProblem<S, A>&);           \
  template void normalize_weights<S, A>(const NormalizeProblem<S, A>&);  \
  template void update_history<S>(const HistoryProblem<S>&);
NOISY_FOR_EACH_FLOAT_TYPE(NOISY_INSTANTIATE_CPU)
#undef NOISY_INSTANTIATE_CPU

}  // namespace cpu
}  // namespace noisy
