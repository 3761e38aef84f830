// Complementary-label sampling and JNPL's PL+ selection, per row, from a PhiloxStream.
#pragma once

#include "noisy/loss_row.h"
#include "noisy/philox.h"

namespace noisy {

// Allowed classes of a row: every class but the label y and the excluded ones.
// `excluded` is a row of a bool matrix, or null for "nothing excluded".
struct AllowedClasses {
  int64_t classes;
  int64_t label;
  const bool* excluded;
  int64_t stride;

  NOISY_HD bool allowed(int64_t c) const { return c != label && !(excluded && excluded[c * stride]); }

  NOISY_HD int64_t count() const {
    if (!excluded) return classes - 1;
    int64_t n = 0;
    for (int64_t c = 0; c < classes; ++c) n += allowed(c) ? 1 : 0;
    return n;
  }

  // The r-th allowed class in increasing order, 0 <= r < count().
  NOISY_HD int64_t nth(int64_t r) const {
    if (!excluded) return r < label ? r : r + 1;
    for (int64_t c = 0; c < classes; ++c) {
      if (allowed(c) && r-- == 0) return c;
    }
    return -1;  // unreachable for a valid r
  }
};

// Writes k labels drawn uniformly from the allowed classes into out[0], out[stride], ...
// With replacement: k independent draws. Without: a uniform random k-subset in random
// order (selection sampling, then a Fisher-Yates shuffle); needs k <= count().
NOISY_HD void sample_complementary_row(const AllowedClasses& classes, int64_t k, bool replacement,
                                       PhiloxStream& rng, int64_t* out, int64_t stride) {
  const int64_t n = classes.count();
  if (replacement) {
    for (int64_t t = 0; t < k; ++t) out[t * stride] = classes.nth(rng.below(static_cast<uint32_t>(n)));
    return;
  }
  int64_t chosen = 0;
  int64_t seen = 0;
  for (int64_t c = 0; c < classes.classes && chosen < k; ++c) {
    if (!classes.allowed(c)) continue;
    if (rng.below(static_cast<uint32_t>(n - seen)) < static_cast<uint32_t>(k - chosen)) out[(chosen++) * stride] = c;
    ++seen;
  }
  for (int64_t t = k - 1; t > 0; --t) {
    const int64_t u = rng.below(static_cast<uint32_t>(t + 1));
    const int64_t tmp = out[t * stride];
    out[t * stride] = out[u * stride];
    out[u * stride] = tmp;
  }
}

// PL+ selection (JNPL, arXiv:2104.06574, Alg. 1): a row is a candidate when every class but the
// arg-max has p < 1/C; a candidate is kept with probability p_argmax.
template <class T>
NOISY_HD bool jnpl_keep(const SoftmaxRow<T>& s, int64_t classes, PhiloxStream& rng) {
  // A tie for the maximum gives p_second = p_arg >= 1/C: never a candidate (decided exactly).
  const bool candidate = s.max2 < s.max1 && math_exp((s.max2 - s.max1) - s.log1p_rest) < T(1) / static_cast<T>(classes);
  const float u = rng.uniform();  // drawn for every row so streams do not depend on the data
  return candidate && static_cast<T>(u) < s.p_arg;
}

}  // namespace noisy
