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
  int lane = 0;
  Acc* row_cache;  // [classes]

  template <class T> T sum(T x) const { return x; }
  template <class T> TopTwo<T> top_two(const TopTwo<T>& t) const { return t; }

  template <class Logit>
  Acc rest_exp_sum(const Logit& logit, int64_t classes, int64_t arg, Acc ref) const {
    Acc* rel = row_cache;
    for (int64_t j = 0; j < classes; ++j) rel[j] = logit(j) - ref;
    if (arg >= 0) rel[arg] = neg_infinity<Acc>();  // exp -> 0: the arg class is not in the sum
    Acc sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < classes; ++j) {
      rel[j] = math_exp(rel[j]);
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

template <class Scalar, class Acc>
void row_loss(const RowLossProblem<Scalar, Acc>& p) {
  at::parallel_for(0, p.rows, grain_for(p.classes), [&](int64_t begin, int64_t end) {
    std::vector<Acc> row_cache(p.classes);
    for (int64_t row = begin; row < end; ++row) noisy::row_loss(p, row, SerialGroup<Acc>{0, row_cache.data()});
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
