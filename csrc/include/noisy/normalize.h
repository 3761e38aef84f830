// Normalizers of a weight vector (a batch or a whole training set), by mode:
//   sub_min      x - min x                                   (PMNAR)
//   min_max      (x - min x) / (max x - min x); all ones when max == min    (BLDR)
//   max          x / max x; all ones when max x <= 0                       (BLDR option)
//   rectify_sum  max(x, 0) / sum max(x, 0); all zeros when that sum is 0   (L2B)
//   sigmoid      1 / (1 + exp(-x))                                         (L2B option)
//   softmax      exp(x / t) / sum exp(x / t), t = temperature              (L2B option)
// One pass gathers the statistics (mergeable, so threads can split the vector),
// a second applies the elementwise map. The sums run in double: a float running sum stops
// growing at 2^24 times its terms, and the vector may be a whole training set.
#pragma once

#include "noisy/common.h"

namespace noisy {

enum class NormMode : int32_t { sub_min = 0, min_max = 1, max = 2, rectify_sum = 3, sigmoid = 4, softmax = 5 };

template <class T>
struct NormStats {
  T min = static_cast<T>(INFINITY);
  T max = neg_infinity<T>();
  double positive_sum = 0;
  T scaled_max = neg_infinity<T>();  // max of x / t
  double scaled_exp_sum = 0;          // sum exp(x / t - scaled_max)

  NOISY_HD void add(T x, NormMode mode, T temperature) {
    min = x < min ? x : min;
    max = x > max ? x : max;
    positive_sum += x > T(0) ? x : T(0);
    if (mode == NormMode::softmax) add_scaled(x / temperature, 1.0);
  }

  NOISY_HD void merge(const NormStats& o) {
    min = o.min < min ? o.min : min;
    max = o.max > max ? o.max : max;
    positive_sum += o.positive_sum;
    if (o.scaled_exp_sum != 0.0) add_scaled(o.scaled_max, o.scaled_exp_sum);
  }

  NOISY_HD T apply(T x, NormMode mode, T temperature) const {
    switch (mode) {
      case NormMode::sub_min: return x - min;
      case NormMode::min_max: return max > min ? (x - min) / (max - min) : T(1);
      case NormMode::max: return max > T(0) ? x / max : T(1);
      case NormMode::rectify_sum:
        return positive_sum > 0.0 ? static_cast<T>((x > T(0) ? x : T(0)) / positive_sum) : T(0);
      case NormMode::sigmoid: return T(1) / (T(1) + math_exp(-x));
      default: return static_cast<T>(math_exp(x / temperature - scaled_max) / scaled_exp_sum);
    }
  }

 private:
  // Online log-sum-exp: adds `weight` * exp(s) to the running sum.
  NOISY_HD void add_scaled(T s, double weight) {
    if (s == neg_infinity<T>()) return;  // exp(-inf) adds 0 (and -inf - -inf would be NaN)
    if (s > scaled_max) {
      scaled_exp_sum = scaled_exp_sum * math_exp(scaled_max - s) + weight;
      scaled_max = s;
    } else {
      scaled_exp_sum += weight * math_exp(s - scaled_max);
    }
  }
};

}  // namespace noisy
