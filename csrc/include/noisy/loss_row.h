// The whole negative-learning loss family as one per-row formula:
//
//   L = c_pos * (-log p_y) + sum_k n_k * a_k * (-log(1 - p_k))
//
// c_pos = 0 (pure negative losses), 1 (cross-entropy, PM) or the detached PL+ weight
// prod_{i=0..N} (1 + p_y^(2^i)); n_k = how often class k is a negative (complementary)
// label of the row; a_k = 1 (NL) or the detached 1 - p_k (NL+). With an optional clamp
// eps the log uses max(1 - p_k, eps) and a clamped term has no gradient (as torch.clamp).
//
// Gradient, with B = sum over non-arg negatives of n_k a_k p_k / (1 - p_k) and
// A = n_arg a_arg p_arg (arg = arg-max class, handled apart so nothing overflows):
//   dL/dz_i = c_pos (p_i - [i = y]) - p_i B + [i = arg] A
//             + [i != arg] (n_i a_i p_i / (1 - p_i) - A p_i / (1 - p_arg))
#pragma once

#include "noisy/softmax_row.h"

namespace noisy {

enum class PositiveTerm : int32_t { none = 0, cross_entropy = 1, pl_plus = 2 };
enum class NegativeSet : int32_t { none = 0, listed = 1, all_but_label = 2 };

struct LossSpec {
  PositiveTerm positive;
  int32_t pl_plus_n;     // N of PL+
  NegativeSet negatives;
  bool plus;             // NL+ weights a_k = 1 - p_k
  double clamp_eps;      // 0: exact log(1 - p)
};

// Detached PL+ weight prod_{i=0..n} (1 + p^(2^i)) = sum_{k < 2^(n+1)} p^k.
template <class T>
NOISY_HD T pl_plus_weight(T p, int32_t n) {
  T weight = 1;
  T power = p;
  for (int32_t i = 0; i <= n; ++i) {
    weight *= T(1) + power;
    power *= power;
  }
  return weight;
}

// A non-arg class k with probability p (<= 1/2): its loss -a_k log(max(1 - p, eps)) and its
// gradient coefficient a_k p / (1 - p) (zero when clamped). Selects over values computed
// unconditionally, so that CPU loops over the columns vectorize when `plus` is a constant.
template <class T>
NOISY_HD T negative_loss(T p, bool plus, T log_clamp_eps) {
  const T log1m = log1p_small(-p);
  const T clamped_log = log1m < log_clamp_eps ? log_clamp_eps : log1m;  // NaN stays NaN
  return -(plus ? T(1) - p : T(1)) * clamped_log;
}

template <class T>
NOISY_HD T negative_odds(T p, bool plus, T clamp_eps) {
  const T one_minus_p = T(1) - p;
  const T odds = p / one_minus_p;
  return one_minus_p < clamp_eps ? T(0) : (plus ? p : odds);
}

template <class T>
struct NegativeSums {
  T loss = 0;
  T odds_sum = 0;   // B above
  T arg_coef = 0;   // A above

  // Adds the sums of another part of the row (a block's into the double totals, and back).
  template <class U>
  NOISY_HD void merge(const NegativeSums<U>& part) {
    loss += part.loss;
    odds_sum += part.odds_sum;
    arg_coef += part.arg_coef;
  }

  NOISY_HD void add(const SoftmaxRow<T>& s, T rel, int64_t k, T count, bool plus, T clamp_eps) {
    if (k != s.arg) {
      const T p = s.prob(rel, k);
      loss += count * negative_loss(p, plus, math_log(clamp_eps));
      odds_sum += count * negative_odds(p, plus, clamp_eps);
      return;
    }
    const T one_minus_p = s.one_minus_prob(rel, k);
    const T a = plus ? one_minus_p : T(1);
    if (one_minus_p < clamp_eps) {
      loss -= count * a * math_log(clamp_eps);
      return;
    }
    // NL+ at p_arg = 1 (every other logit -inf): a = 0 and log(1 - p) = -inf, a term of limit 0
    if (a != T(0)) loss -= count * a * s.log1m_p_arg();
    arg_coef += count * a * s.p_arg;
  }

  // Gradient of the negative terms wrt z_i; `count` = n_i.
  NOISY_HD T grad(const SoftmaxRow<T>& s, T rel, int64_t i, T count, bool plus, T clamp_eps) const {
    T g = -s.prob(rel, i) * odds_sum;
    if (i == s.arg) return g + arg_coef;
    if (arg_coef != T(0)) g -= arg_coef * s.prob_without_arg(rel);
    if (count != T(0)) g += count * negative_odds(s.prob(rel, i), plus, clamp_eps);
    return g;
  }
};

template <class Scalar, class Acc>
struct RowLossProblem {
  int64_t rows;
  int64_t classes;
  Matrix<const Scalar> logits;
  const int64_t* labels;          // [rows] (positive term, and the label left out of all_but_label)
  int64_t label_stride;
  Matrix<const int64_t> negatives;  // [rows, num_negatives] for NegativeSet::listed
  int64_t num_negatives;
  Matrix<const bool> exclude;     // [rows, classes] for NegativeSet::all_but_label; data may be null
  Acc* loss;                      // [rows]
  typename GradStorage<Scalar>::type* grad;  // [rows, classes] contiguous; null: loss only
  LossSpec spec;
};

// How often class j is a negative label of the row.
template <class Scalar, class Acc>
NOISY_HD Acc negative_count(const RowLossProblem<Scalar, Acc>& P, int64_t row, int64_t j, int64_t y) {
  switch (P.spec.negatives) {
    case NegativeSet::listed: {
      Acc count = 0;
      for (int64_t t = 0; t < P.num_negatives; ++t) count += P.negatives.at(row, t) == j ? Acc(1) : Acc(0);
      return count;
    }
    case NegativeSet::all_but_label:
      return (j != y && !(P.exclude.data && P.exclude.at(row, j))) ? Acc(1) : Acc(0);
    default:
      return Acc(0);
  }
}

// A bool known at compile time inside a generic lambda (see with_plus).
template <bool Value>
struct BoolConstant {
  NOISY_HD constexpr operator bool() const { return Value; }
};

// body(plus) with `plus` a compile-time constant: the CPU loops below get one vectorizable
// body per value instead of a select inside the loop.
template <class Body>
NOISY_HD void with_plus(bool plus, const Body& body) {
  if (plus) {
    body(BoolConstant<true>{});
  } else {
    body(BoolConstant<false>{});
  }
}

// body(kept) with kept(j) = 0 for a column excluded in this row, else 1; one loop body for
// rows without an exclusion matrix, one for contiguous rows of it (the CPU loops vectorize
// only with a stride known to be 1) and one for any other stride.
template <class Scalar, class Acc, class Body>
NOISY_HD void with_kept_columns(const RowLossProblem<Scalar, Acc>& P, int64_t row, const Body& body) {
  if (P.exclude.data) {
    // Read as bytes (torch stores bool as 0 / 1): GCC has no vector type for bool loads.
    const uint8_t* excluded = reinterpret_cast<const uint8_t*>(&P.exclude.at(row, 0));
    const int64_t stride = P.exclude.col_stride;
    if (stride == 1) {
      body([=](int64_t j) { return Acc(1) - Acc(excluded[j]); });
    } else {
      body([=](int64_t j) { return Acc(1) - Acc(excluded[j * stride]); });
    }
  } else {
    body([](int64_t) { return Acc(1); });
  }
}

// The group's columns of [begin, end): one thread's whole row on the CPU (width 1: a loop the
// compiler vectorizes over the cached exp terms), a lane's strided share on CUDA. Each loop over
// the columns below is written with these bounds, and without branches (a select or a product
// by 0 / 1 instead): SIMD lanes on the CPU, and on CUDA fewer issue slots per column.
template <class Group>
NOISY_HD int64_t first_column(const Group& group, int64_t begin) { return begin + group.lane; }

// body(j, exp(z_j - ref)) (0 for arg) for the group's columns of [begin, end).
template <class Acc, class Group, class Logit, class Body>
NOISY_HD void for_each_rel(const Group& group, const SoftmaxRow<Acc>& s, const Logit& logit, int64_t begin,
                           int64_t end, const Body& body) {
  NOISY_SIMD
  for (int64_t j = first_column(group, begin); j < end; j += Group::width) body(j, group.rel_exp(s, logit, j));
}

// The negative terms of the group's columns of [begin, end) but the arg-max and y
// (NegativeSet::all_but_label).
template <class Scalar, class Acc, class Group, class Logit>
NOISY_HD void add_all_but_label(const RowLossProblem<Scalar, Acc>& P, int64_t row, const Group& group,
                                const Logit& logit, const SoftmaxRow<Acc>& s, int64_t y, int64_t begin, int64_t end,
                                Acc clamp_eps, NegativeSums<Acc>& neg) {
  const Acc log_clamp_eps = math_log(clamp_eps);
  with_plus(P.spec.plus, [&](auto plus) {
    with_kept_columns(P, row, [&](const auto& kept) {
      Acc loss_sum = 0, odds_sum = 0;
      NOISY_SIMD_SUMS
      for (int64_t j = first_column(group, begin); j < end; j += Group::width) {
        const Acc p = group.rel_exp(s, logit, j) * s.ref_prob;
        const Acc count = Acc(j != s.arg) * Acc(j != y) * kept(j);
        loss_sum += count * negative_loss(p, plus, log_clamp_eps);
        odds_sum += count * negative_odds(p, plus, clamp_eps);
      }
      neg.loss += loss_sum;
      neg.odds_sum += odds_sum;
    });
  });
}

// A gradient element's storage as an unsigned integer of its size (memcpy: no aliasing).
template <class Grad>
using StorageBits = typename UnsignedOfSize<sizeof(Grad)>::type;

template <class Grad>
NOISY_HD StorageBits<Grad> load_bits(const Grad* at) {
  StorageBits<Grad> bits;
  memcpy(&bits, at, sizeof bits);
  return bits;
}

template <class Grad>
NOISY_HD void store_bits(Grad* at, StorageBits<Grad> bits) { memcpy(at, &bits, sizeof bits); }

// rewrite(j, n_j) once for each listed column j of the row but arg and y (rewritten apart), n_j
// its listings. Counting them per listing (negative_count) is O(k^2) for k listed negatives,
// slower than eager PyTorch at JNPL's k = 110 drawn with replacement on CIFAR-100. So the
// column's stored gradient (overwritten at the end) first counts its listings in the low half of
// its bits and those visited in the high half: O(k), the last visit rewrites it. Counts that may
// not fit a half (k >= 256 with 16-bit gradients) are taken per listing.
template <class Scalar, class Acc, class Group, class Grad, class Rewrite>
NOISY_HD void rewrite_listed(const RowLossProblem<Scalar, Acc>& P, int64_t row, const Group& group,
                             const SoftmaxRow<Acc>& s, int64_t y, Grad* grad, const Rewrite& rewrite) {
  using Bits = StorageBits<Grad>;
  constexpr int kHalf = 4 * sizeof(Grad);
  constexpr Bits kLow = static_cast<Bits>((Bits(1) << kHalf) - 1);
  const auto each_owned = [&](const auto& body) {
    for (int64_t t = 0; t < P.num_negatives; ++t) {
      const int64_t k = P.negatives.at(row, t);
      if (k != s.arg && k != y && k % Group::width == group.lane) body(k);
    }
  };
  if (P.num_negatives > int64_t(kLow)) {
    each_owned([&](int64_t k) { rewrite(k, negative_count(P, row, k, y)); });
    return;
  }
  each_owned([&](int64_t k) { store_bits(grad + k, Bits(0)); });
  each_owned([&](int64_t k) { store_bits(grad + k, Bits(load_bits(grad + k) + 1)); });
  each_owned([&](int64_t k) {
    const Bits bits = static_cast<Bits>(load_bits(grad + k) + (Bits(1) << kHalf));
    if ((bits >> kHalf) == (bits & kLow)) {
      rewrite(k, static_cast<Acc>(bits & kLow));
    } else {
      store_bits(grad + k, bits);
    }
  });
}

// Loss (and gradient) of one row, computed by a Group of threads (see softmax_row).
template <class Scalar, class Acc, class Group>
NOISY_HD void row_loss(const RowLossProblem<Scalar, Acc>& P, int64_t row, const Group& group) {
  const int64_t C = P.classes;
  const LossSpec& spec = P.spec;
  const Acc clamp_eps = static_cast<Acc>(spec.clamp_eps);
  auto logit = [&](int64_t j) { return load_as<Acc>(P.logits.at(row, j)); };

  // Only log(1 - p_arg) of a negative term needs the second largest logit.
  const SoftmaxRow<Acc> s = softmax_row<Acc>(logit, C, group, spec.negatives != NegativeSet::none);

  const bool uses_label = spec.positive != PositiveTerm::none || spec.negatives == NegativeSet::all_but_label;
  const int64_t y = uses_label ? P.labels[row * P.label_stride] : -1;

  NegativeSums<Acc> neg;
  if (spec.negatives == NegativeSet::listed) {
    for (int64_t t = group.lane; t < P.num_negatives; t += Group::width) {
      const int64_t k = P.negatives.at(row, t);
      neg.add(s, group.rel_exp(s, logit, k), k, Acc(1), spec.plus, clamp_eps);
    }
  } else if (spec.negatives == NegativeSet::all_but_label) {
    NegativeSums<double> total;  // block by block (see kSumBlock)
    for_each_column_block(C, [&](int64_t begin, int64_t end) {
      NegativeSums<Acc> part;
      add_all_but_label(P, row, group, logit, s, y, begin, end, clamp_eps, part);
      total.merge(part);
    });
    neg.merge(total);
    // The arg column's term, by the lane that owns it (group.sum adds it below).
    if (s.arg >= 0 && s.arg % Group::width == group.lane && negative_count(P, row, s.arg, y) != Acc(0)) {
      neg.add(s, Acc(0), s.arg, Acc(1), spec.plus, clamp_eps);
    }
  }
  neg.loss = group.sum(neg.loss);
  neg.odds_sum = group.sum(neg.odds_sum);
  neg.arg_coef = group.sum(neg.arg_coef);

  Acc positive_coef = 0;
  Acc loss = neg.loss;
  if (spec.positive != PositiveTerm::none) {
    const Acc z_y = logit(y);
    positive_coef = spec.positive == PositiveTerm::pl_plus
        ? pl_plus_weight(s.prob(group.rel_exp(s, logit, y), y), spec.pl_plus_n)
        : Acc(1);
    loss += positive_coef * s.neg_log_prob(z_y, y);
  }
  if (group.lane == 0) P.loss[row] = loss;
  if (P.grad == nullptr) return;

  // The gradient of column j, exact for every column (see the formula at the top).
  const auto column_grad = [&](int64_t j, Acc rel, Acc count) {
    Acc g = neg.grad(s, rel, j, count, spec.plus, clamp_eps);
    if (positive_coef != Acc(0)) g += positive_coef * (j == y ? -s.one_minus_prob(rel, j) : s.prob(rel, j));
    return g;
  };
  // Every column but arg, y and the listed negatives in one pass without branches: for them
  // the formula reduces to rel_j * plain (+ n_j a_j p_j / (1 - p_j) for all_but_label). Those
  // few columns are then rewritten exactly, each by the lane that wrote it (its own later
  // store wins, no barrier needed).
  using Grad = typename GradStorage<Scalar>::type;
  Grad* grad = P.grad + row * C;
  // prob_without_arg(A) = A / rest_sum: times rel_j, A p_j / (1 - p_arg)
  const Acc plain = s.ref_prob * (positive_coef - neg.odds_sum) -
                    (neg.arg_coef != Acc(0) ? s.prob_without_arg(neg.arg_coef) : Acc(0));
  if (spec.negatives == NegativeSet::all_but_label) {
    with_plus(spec.plus, [&](auto plus) {
      with_kept_columns(P, row, [&](const auto& kept) {
        for_each_rel(group, s, logit, 0, C, [&](int64_t j, Acc rel) {
          grad[j] = Store<Grad>::from(rel * plain + kept(j) * negative_odds(rel * s.ref_prob, plus, clamp_eps));
        });
      });
    });
  } else {
    for_each_rel(group, s, logit, 0, C, [&](int64_t j, Acc rel) { grad[j] = Store<Grad>::from(rel * plain); });
  }
  const auto rewrite = [&](int64_t j, Acc count) {
    grad[j] = Store<Grad>::from(column_grad(j, group.rel_exp(s, logit, j), count));
  };
  const auto rewrite_counting = [&](int64_t j) {
    if (j >= 0 && j % Group::width == group.lane) rewrite(j, negative_count(P, row, j, y));
  };
  rewrite_counting(s.arg);
  rewrite_counting(y);
  if (spec.negatives == NegativeSet::listed) rewrite_listed(P, row, group, s, y, grad, rewrite);
}

}  // namespace noisy
