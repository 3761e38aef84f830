// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// a counter-based generator: the same (key, counter) gives the same numbers on any
// device and in any thread order, so CPU and CUDA kernels draw identical samples.
#pragma once

#include "noisy/common.h"

namespace noisy {

struct Philox4x32 {
  uint32_t v[4];
};

NOISY_HD void mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}

NOISY_HD Philox4x32 philox4x32_10(Philox4x32 counter, uint32_t key0, uint32_t key1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(0xD2511F53u, counter.v[0], &hi0, &lo0);
    mul_hi_lo(0xCD9E8D57u, counter.v[2], &hi1, &lo1);
    counter = Philox4x32{{hi1 ^ counter.v[1] ^ key0, lo1, hi0 ^ counter.v[3] ^ key1, lo0}};
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  return counter;
}

// The random stream of one sample (row) for one call: key = seed, counter =
// (block, row, offset). Rows must be < 2^32.
class PhiloxStream {
 public:
  NOISY_HD PhiloxStream(uint64_t seed, uint64_t offset, uint64_t row)
      : key0_(static_cast<uint32_t>(seed)),
        key1_(static_cast<uint32_t>(seed >> 32)),
        counter_{{0u, static_cast<uint32_t>(row), static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}},
        used_(4) {}

  NOISY_HD uint32_t next_u32() {
    if (used_ == 4) {
      block_ = philox4x32_10(counter_, key0_, key1_);
      counter_.v[0] += 1u;
      used_ = 0;
    }
    return block_.v[used_++];
  }

  // Exactly uniform integer in [0, n), n >= 1 (Lemire's multiply-shift with rejection).
  NOISY_HD uint32_t below(uint32_t n) {
    uint64_t m = static_cast<uint64_t>(next_u32()) * n;
    uint32_t low = static_cast<uint32_t>(m);
    if (low < n) {
      const uint32_t threshold = (0u - n) % n;
      while (low < threshold) {
        m = static_cast<uint64_t>(next_u32()) * n;
        low = static_cast<uint32_t>(m);
      }
    }
    return static_cast<uint32_t>(m >> 32);
  }

  // Uniform float in [0, 1) with 24 random bits (exactly representable).
  NOISY_HD float uniform() { return static_cast<float>(next_u32() >> 8) * (1.0f / 16777216.0f); }

 private:
  uint32_t key0_;
  uint32_t key1_;
  Philox4x32 counter_;
  Philox4x32 block_{{0u, 0u, 0u, 0u}};
  int used_;
};

}  // namespace noisy
