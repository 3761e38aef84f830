// CPU kernels: at::parallel_for over rows, the per-row math from csrc/include.
#include <ATen/Parallel.h>

#include "noisy/kernels.h"
#include "noisy/sampling.h"

namespace noisy {
namespace cpu {
namespace {

// One thread owns a whole row: the reductions are the identity.
struct SerialGroup {
  static constexpr int width = 1;
  int lane = 0;
  template <class T> T sum(T x) const { return x; }
  template <class T> TopTwo<T> top_two(const TopTwo<T>& t) const { return t; }
};

// Rows per task: enough work per task to amortize the scheduling.
int64_t grain_for(int64_t work_per_row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row)); }

}  // namespace

template <class Scalar, class Acc>
void row_loss(const RowLossProblem<Scalar, Acc>& p) {
  at::parallel_for(0, p.rows, grain_for(p.classes), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) noisy::row_loss(p, row, SerialGroup{});
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
    for (int64_t row = begin; row < end; ++row) {
      const auto logit = [&](int64_t j) { return load_as<Acc>(p.logits.at(row, j)); };
      const SoftmaxRow<Acc> s = softmax_row<Acc>(logit, p.classes, SerialGroup{});
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
