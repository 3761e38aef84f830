// Softmax statistics of one row of logits, arranged so that p_k, 1 - p_k and
// log(1 - p_k) stay accurate when one class takes (almost) all the mass.
//
// Two reductions over the row: TopTwo (max, its first index, second largest value),
// then rest_sum = sum_{j != arg} exp(z_j - ref) with ref = the second largest value.
// Every other quantity follows from these without cancellation:
//   rest   = sum_{j != arg} p_j / p_arg = exp(ref - max) * rest_sum
//   p_arg  = 1 / (1 + rest),  1 - p_arg = rest / (1 + rest)
//   p_j    = exp(z_j - ref) * exp(ref - max) * p_arg     (j != arg)
//   log(1 - p_arg) = ref - max + log(rest_sum) - log1p(rest)   (finite for any gap)
// Only log(1 - p_arg) needs ref = max2: with ref = max, a gap above ~88 (float) underflows
// rest_sum to 0 and log(1 - p_arg) to -inf, while p_j, 1 - p_j and -log p_j stay exact.
// Losses without negative terms therefore skip the second-largest pass (ref = max).
#pragma once

#include "noisy/common.h"

namespace noisy {

template <class T>
struct TopTwo {
  T max1 = neg_infinity<T>();
  T max2 = neg_infinity<T>();
  int64_t arg = -1;  // first index of the maximum; -1 until a value beats -inf

  NOISY_HD void add(T z, int64_t index) {
    if (z > max1) {
      max2 = max1;
      max1 = z;
      arg = index;
    } else if (z > max2) {
      max2 = z;
    }
  }

  // Combines partial results over disjoint column sets; ties keep the lower index,
  // so every split of the row gives the same arg as a sequential scan.
  NOISY_HD void merge(const TopTwo& other) {
    const bool other_wins = other.max1 > max1 ||
        (other.max1 == max1 && other.arg >= 0 && (arg < 0 || other.arg < arg));
    if (other_wins) {
      max2 = max1 > other.max2 ? max1 : other.max2;
      max1 = other.max1;
      arg = other.arg;
    } else if (other.max1 > max2) {
      max2 = other.max1;
    }
  }

  // Reference point for the sum over the non-arg classes (the max when all of them are -inf).
  NOISY_HD T rest_reference() const { return is_finite(max2) ? max2 : max1; }
};

template <class T>
struct SoftmaxRow {
  T max1;
  T max2;
  T ref;
  int64_t arg;
  T rest_sum;      // sum_{j != arg} exp(z_j - ref)
  T rest;          // sum_{j != arg} p_j / p_arg
  T log1p_rest;    // log(1 + rest) = -log p_arg
  T ref_prob;      // exp(ref - LSE(z)): p_j = exp(z_j - ref) * ref_prob for j != arg
  T p_arg;

  NOISY_HD SoftmaxRow(const TopTwo<T>& top, T rest_sum_)
      : max1(top.max1), max2(top.max2), ref(top.rest_reference()), arg(top.arg), rest_sum(rest_sum_) {
    // A +inf logit has no softmax (torch's is NaN): with ref = max2 the row would come out as
    // p_arg = 1 and a finite loss. NaN then reaches every quantity, as a NaN logit does.
    const T ref_rel = is_finite(max1) ? math_exp(ref - max1) : quiet_nan<T>();
    rest = ref_rel * rest_sum;
    log1p_rest = math_log1p(rest);
    p_arg = T(1) / (T(1) + rest);
    ref_prob = ref_rel * p_arg;
  }

  // log(1 - p_arg); finite for any gap when ref = max2.
  NOISY_HD T log1m_p_arg() const { return ref - max1 + math_log(rest_sum) - log1p_rest; }

  // The term of rest_sum contributed by column j (zero for the arg column).
  NOISY_HD T rel_exp(T z, int64_t j) const { return j == arg ? T(0) : math_exp(z - ref); }

  // p_j from rel = rel_exp(z_j, j).
  NOISY_HD T prob(T rel, int64_t j) const { return j == arg ? p_arg : rel * ref_prob; }

  NOISY_HD T one_minus_prob(T rel, int64_t j) const {
    return j == arg ? rest * p_arg : T(1) - rel * ref_prob;
  }

  // p_j / (1 - p_arg) for j != arg: the softmax over the row without the arg class; 0 where
  // every other class has probability 0 (-inf logits; 0 / 0 would make the row's gradient NaN).
  NOISY_HD T prob_without_arg(T rel) const { return rest_sum > T(0) ? rel / rest_sum : T(0); }

  // -log p_j; for the arg class log1p(rest), which keeps its accuracy as p_arg -> 1. The
  // difference max1 - z first: LSE(z) - z would round max1 + log1p_rest at the logits' magnitude
  // (at logits near 1e5, an error of 1e-3).
  NOISY_HD T neg_log_prob(T z, int64_t j) const { return j == arg ? log1p_rest : (max1 - z) + log1p_rest; }
};

// Sums over the columns of a row run block by block: each block's partial sum in Acc (the
// CPU's vectorized loops, a warp's lane-strided loops), the blocks' sums added in double. A
// float running sum stops growing once it is 2^24 times its terms (each lane of an 8-lane SIMD
// sum of 2^28 equal terms stopped at 2^24: CE of 2^28 equal logits gave log(2^27)); blocks
// bound that error for any number of classes, and a row of at most kSumBlock columns sums as
// before, bit for bit. A multiple of every group width, so a lane keeps the same columns.
constexpr int64_t kSumBlock = 1024;

// block(begin, end) for consecutive blocks [begin, end) of at most kSumBlock columns.
template <class Block>
NOISY_HD void for_each_column_block(int64_t classes, const Block& block) {
  for (int64_t begin = 0; begin < classes; begin += kSumBlock) {
    block(begin, classes - begin < kSumBlock ? classes : begin + kSumBlock);
  }
}

// The two reductions over a row of `classes` logits, logit(j) -> Acc, done by a Group
// of threads: one thread on the CPU (which caches the row), a warp on CUDA. A Group has
// `lane`, a static `width`, an all-reduce `sum`, and
//   top_two_of(logit, classes, second)           the TopTwo of the whole row (max2 may be
//                                                left at -inf when !second),
//   rest_exp_sum(logit, begin, end, arg, ref)    this lane's part of rest_sum over the
//                                                columns [begin, end) (one block),
//   rel_exp(s, logit, j)                         exp(z_j - ref) (0 for arg) for later passes.
// Every thread of the group gets the result.
// second_largest = false: ref = max (see the top of this file), the same on every device.
template <class Acc, class Group, class Logit>
NOISY_HD SoftmaxRow<Acc> softmax_row(const Logit& logit, int64_t classes, const Group& group,
                                     bool second_largest = true) {
  TopTwo<Acc> top = group.top_two_of(logit, classes, second_largest);
  if (!second_largest) top.max2 = neg_infinity<Acc>();
  double rest_sum = 0;
  for_each_column_block(classes, [&](int64_t begin, int64_t end) {
    rest_sum += group.rest_exp_sum(logit, begin, end, top.arg, top.rest_reference());
  });
  return SoftmaxRow<Acc>(top, group.sum(static_cast<Acc>(rest_sum)));
}

}  // namespace noisy
