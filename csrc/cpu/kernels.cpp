// CPU kernels: at::parallel_for over rows, the per-row math from csrc/include.
#include <ATen/Parallel.h>
#include <math.h>

// glibc's vector math library (libmvec) has SIMD versions of exp on x86-64: declaring them
// lets the `omp simd` loop below call several lanes at a time (the builds link -lmvec).
#if defined(__x86_64__) && defined(__GLIBC__)
#pragma omp declare simd notinbranch
extern "C" float expf(float) noexcept;
#pragma omp declare simd notinbranch
extern "C" double exp(double) noexcept;
#define NOISY_CPU_CLONES __attribute__((target_clones("avx2", "default"), flatten))
#else
#define NOISY_CPU_CLONES
#endif

#include <vector>

#include "noisy/kernels.h"
#include "noisy/sampling.h"

namespace noisy {
namespace cpu {
namespace {

// One thread owns a whole row: the reductions are the identity, and the terms
// exp(z_j - ref) are computed once, vectorized, into a per-thread row buffer.
template <class Acc>
struct SerialGroup {
  static constexpr int width = 1;
  static constexpr bool caches_row = true;
  int lane = 0;
  Acc* row_cache;  // [classes]: exp(z_j - ref), 0 for the arg class

  template <class T> T sum(T x) const { return x; }
  // Loads the row into the cache; max, first arg-max and second largest (the same result as
  // TopTwo::add over the row, ties and NaN included). Only float compares run vectorized:
  // the arg-max is the first block of 8 holding the max, then a scan within it; the second
  // largest a max with the arg column masked out.
  template <class Logit>
  TopTwo<Acc> top_two_of(const Logit& logit, int64_t classes) const {
    Acc* z = row_cache;
    for (int64_t j = 0; j < classes; ++j) z[j] = logit(j);
    TopTwo<Acc> top;
    Acc max1 = top.max1;
#pragma omp simd reduction(max : max1)
    for (int64_t j = 0; j < classes; ++j) max1 = z[j] > max1 ? z[j] : max1;
    if (!(max1 > top.max1)) return top;  // no value above -inf: arg stays -1
    int64_t arg = 0;
    for (; arg + 8 <= classes; arg += 8) {  // the first block of 8 holding the max, one compare each
      int hit = 0;
#pragma omp simd reduction(| : hit)
      for (int64_t j = arg; j < arg + 8; ++j) hit |= z[j] == max1;
      if (hit) break;
    }
    while (z[arg] != max1) ++arg;
    const Acc at_arg = z[arg];
    z[arg] = top.max2;
    Acc max2 = top.max2;
#pragma omp simd reduction(max : max2)
    for (int64_t j = 0; j < classes; ++j) max2 = z[j] > max2 ? z[j] : max2;
    z[arg] = at_arg;
    top.max1 = max1;
    top.max2 = max2;
    top.arg = arg;
    return top;
  }

  // Turns the cached row into exp(z_j - ref) in place. The arg column is evaluated at
  // z = ref (exp = 1, taken back out of the sum, which is >= 2 then): its exp(max - ref)
  // could overflow and send the SIMD exp to its slow path.
  template <class Logit>
  Acc rest_exp_sum(const Logit&, int64_t classes, int64_t arg, Acc ref) const {
    Acc* rel = row_cache;
    if (arg >= 0) rel[arg] = ref;
    Acc sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < classes; ++j) {
      rel[j] = math_exp(rel[j] - ref);
      sum += rel[j];
    }
    if (arg < 0) return sum;
    rel[arg] = 0;
    return sum - Acc(1);
  }

  template <class Logit>
  Acc rel_exp(const SoftmaxRow<Acc>&, const Logit&, int64_t j) const { return row_cache[j]; }
};

// Rows per task: enough work per task to amortize the scheduling.
int64_t grain_for(int64_t work_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row)); }

}  // namespace

// Built for AVX2 and for the baseline, picked at load time (GCC function multiversioning).
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
    for (int64_t row = begin; row < end; ++row) {
      const AllowedClasses classes{p.classes, p.labels[row * p.label_stride],
                                   p.exclude.data ? &p.exclude.at(row, 0) : nullptr, p.exclude.col_stride};
      PhiloxStream rng(p.seed, p.offset, static_cast<uint64_t>(row));
      sample_complementary_row(classes, p.k, p.replacement, rng, p.out + row * p.k, 1);
    }
  });
}

template <class Scalar, class Acc>
void jnpl_select(const SelectProblem<Scalar, Acc>& p) {
  at::parallel_for(0, p.rows, grain_for(p.classes), [&](int64_t begin, int64_t end) {
    std::vector<Acc> row_cache(p.classes);
    for (int64_t row = begin; row < end; ++row) {
      const auto logit = [&](int64_t j) { return load_as<Acc>(p.logits.at(row, j)); };
      const SoftmaxRow<Acc> s = softmax_row<Acc>(logit, p.classes, SerialGroup<Acc>{0, row_cache.data()});
      PhiloxStream rng(p.seed, p.offset, static_cast<uint64_t>(row));
      p.keep[row] = jnpl_keep(s, p.classes, rng);
      p.argmax[row] = s.arg;
    }
  });
}

template <class Scalar, class Acc>
void normalize_weights(const NormalizeProblem<Scalar, Acc>& p) {
  NormStats<Acc> stats;
  for (int64_t i = 0; i < p.size; ++i) stats.add(load_as<Acc>(p.x[i * p.stride]), p.mode, p.temperature);
  at::parallel_for(0, p.size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      p.out[i] = Store<Scalar>::from(stats.apply(load_as<Acc>(p.x[i * p.stride]), p.mode, p.temperature));
    }
  });
}

template <class Scalar>
void update_history(const HistoryProblem<Scalar>& p) {
  // Sequential: rows may share an index, and the work is one arg-max per row.
  for (int64_t row = 0; row < p.rows; ++row) {
    TopTwo<double> top;  // double holds every supported dtype exactly
    for (int64_t j = 0; j < p.classes; ++j) top.add(load_as<double>(p.logits.at(row, j)), j);
    if (top.arg >= 0) p.history.at(p.indices[row * p.index_stride], top.arg) = true;
  }
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
