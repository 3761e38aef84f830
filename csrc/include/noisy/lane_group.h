// A row shared by the `Width` lanes of a group: on CUDA the 32 threads of a warp; in the
// tests (tests/cuda_emulation.cpp) host threads, which run this same code where no GPU is.
// Loops over the columns are lane-strided and every reduction is a butterfly all-reduce over
// `exchange.swap_xor(x, offset)`: every lane calls it together and gets lane (lane ^ offset)'s x.
#pragma once

#include "noisy/softmax_row.h"

namespace noisy {

template <int Width, class Exchange>
struct LaneGroup {
  static constexpr int width = Width;
  int lane;
  Exchange exchange;

  // Each step combines a lane's value with its partner's in the same order on both lanes
  // (combine is commutative), so every lane ends with the same bits.
  template <class T, class Combine>
  NOISY_HD T all_reduce(T x, const Combine& combine) const {
    for (int offset = Width / 2; offset > 0; offset /= 2) x = combine(x, exchange.swap_xor(x, offset));
    return x;
  }

  template <class T>
  NOISY_HD T sum(T x) const {
    return all_reduce(x, [](T a, T b) { return a + b; });
  }

  template <class T>
  NOISY_HD TopTwo<T> top_two(TopTwo<T> t) const {
    return all_reduce(t, [](TopTwo<T> a, const TopTwo<T>& b) {
      a.merge(b);
      return a;
    });
  }

  // Tracks the second largest either way: it costs a lane-strided loop no extra pass.
  // TopTwo::add's update as selects (a branch per column costs a warp more issue slots).
  template <class Logit>
  NOISY_HD auto top_two_of(const Logit& logit, int64_t classes, bool) const {
    using T = decltype(logit(0));
    T max1 = neg_infinity<T>(), max2 = neg_infinity<T>();
    int64_t arg = -1;
    for (int64_t j = lane; j < classes; j += Width) {
      const T z = logit(j);
      const bool first = z > max1;
      max2 = first ? max1 : (z > max2 ? z : max2);
      max1 = first ? z : max1;
      arg = first ? j : arg;
    }
    TopTwo<T> top;
    top.max1 = max1;
    top.max2 = max2;
    top.arg = arg;
    return top_two(top);
  }

  template <class Logit, class T>
  NOISY_HD T rest_exp_sum(const Logit& logit, int64_t begin, int64_t end, int64_t arg, T ref) const {
    T sum = 0;
    for (int64_t j = begin + lane; j < end; j += Width) {
      const T term = math_exp(logit(j) - ref);
      sum += j != arg ? term : T(0);
    }
    return sum;
  }

  // Recomputed from the logit: nothing is cached.
  template <class T, class Logit>
  NOISY_HD T rel_exp(const SoftmaxRow<T>& s, const Logit& logit, int64_t j) const { return s.rel_exp(logit(j), j); }
};

}  // namespace noisy
