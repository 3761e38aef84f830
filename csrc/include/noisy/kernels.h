// Raw-pointer problems and the kernel entry points, shared by csrc/cpu and csrc/cuda.
// Torch-free: csrc/cuda/*.cu include it and compile with nvcc alone.
#pragma once

#include "noisy/loss_row.h"
#include "noisy/normalize.h"
#include "noisy/sampling.h"

namespace noisy {

struct SamplingProblem {
  int64_t rows;
  int64_t classes;
  const int64_t* labels;
  int64_t label_stride;
  Matrix<const bool> exclude;  // data may be null
  int64_t k;
  bool replacement;
  uint64_t seed;
  uint64_t offset;
  uint64_t first_row;          // Philox row of row 0: a shard's position in the global batch
  int64_t* out;                // [rows, k] contiguous
};

// The complementary labels of one row, by one thread.
NOISY_HD void sample_row(const SamplingProblem& p, int64_t row) {
  const AllowedClasses classes{p.classes, p.labels[row * p.label_stride],
                               p.exclude.data ? &p.exclude.at(row, 0) : nullptr, p.exclude.col_stride};
  PhiloxStream rng(p.seed, p.offset, p.first_row + static_cast<uint64_t>(row));
  sample_complementary_row(classes, p.k, p.replacement, rng, p.out + row * p.k, 1);
}

template <class Scalar, class Acc>
struct SelectProblem {
  int64_t rows;
  int64_t classes;
  Matrix<const Scalar> logits;
  uint64_t seed;
  uint64_t offset;
  uint64_t first_row;          // as in SamplingProblem
  bool* keep;                  // [rows]
  int64_t* argmax;             // [rows]
};

// torch.argmax of a row, by a Group of threads computing in T: the first NaN, else the first
// +inf, else the first maximum (a row of -inf: column 0). The softmax's arg-max passes NaN by,
// which is not torch's answer for a row that has no softmax. T holds the logits exactly.
template <class T, class Scalar, class Group>
NOISY_HD int64_t torch_argmax(const Matrix<const Scalar>& logits, int64_t row, int64_t classes, const Group& group) {
  const auto key = [&](int64_t j) {
    const T z = load_as<T>(logits.at(row, j));
    if (z != z) return static_cast<T>(INFINITY);
    return is_finite(z) ? z : (z > 0 ? max_finite<T>() : -max_finite<T>());
  };
  const TopTwo<T> top = group.top_two_of(key, classes, false);
  if (top.max1 != max_finite<T>() && top.max1 != -max_finite<T>()) return top.arg;
  // The key gave +inf the largest finite value's place, -inf the lowest's: where the maximum is
  // there, the first +inf (else the first largest finite) or the first lowest finite value (else
  // the first -inf) is torch's. The branch is uniform: the maximum is the same in every lane.
  const T wanted = top.max1 > T(0) ? static_cast<T>(INFINITY) : -max_finite<T>();
  const auto is_wanted = [&](int64_t j) { return load_as<T>(logits.at(row, j)) == wanted ? T(1) : T(0); };
  const TopTwo<T> found = group.top_two_of(is_wanted, classes, false);
  return found.max1 > T(0) ? found.arg : top.arg;
}

// PL+ selection of one row by a Group of threads (see softmax_row).
template <class Scalar, class Acc, class Group>
NOISY_HD void select_row(const SelectProblem<Scalar, Acc>& p, int64_t row, const Group& group) {
  const auto logit = [&](int64_t j) { return load_as<Acc>(p.logits.at(row, j)); };
  const SoftmaxRow<Acc> s = softmax_row<Acc>(logit, p.classes, group);
  // p_arg is NaN only where a NaN or +inf logit leaves the row without a softmax (the same in
  // every lane: the branch is uniform). Such a row is never kept.
  const int64_t arg = s.p_arg == s.p_arg ? s.arg : torch_argmax<Acc>(p.logits, row, p.classes, group);
  if (group.lane != 0) return;
  PhiloxStream rng(p.seed, p.offset, p.first_row + static_cast<uint64_t>(row));
  p.keep[row] = jnpl_keep(s, p.classes, rng);
  p.argmax[row] = arg;
}

template <class Scalar, class Acc>
struct NormalizeProblem {
  int64_t size;
  const Scalar* x;
  int64_t stride;
  NormMode mode;
  Acc temperature;
  Scalar* out;                 // [size] contiguous
};

// Statistics of the elements first, first + step, ... of x.
template <class Scalar, class Acc>
NOISY_HD NormStats<Acc> norm_stats_of(const NormalizeProblem<Scalar, Acc>& p, int64_t first, int64_t step) {
  NormStats<Acc> stats;
  for (int64_t i = first; i < p.size; i += step) stats.add(load_as<Acc>(p.x[i * p.stride]), p.mode, p.temperature);
  return stats;
}

// out for the elements first, first + step, ... below end.
template <class Scalar, class Acc>
NOISY_HD void normalize_elements(const NormalizeProblem<Scalar, Acc>& p, const NormStats<Acc>& stats, int64_t first,
                                 int64_t end, int64_t step) {
  for (int64_t i = first; i < end; i += step) {
    p.out[i] = Store<Scalar>::from(stats.apply(load_as<Acc>(p.x[i * p.stride]), p.mode, p.temperature));
  }
}

// The whole vector by one block of `threads` threads (a power of two): each gathers the
// statistics of its strided share into partial[thread], the shares are merged as a tree
// (sync() is the block's barrier), then each writes its share of the output.
template <class Scalar, class Acc, class Sync>
NOISY_HD void normalize_block(const NormalizeProblem<Scalar, Acc>& p, int thread, int threads, NormStats<Acc>* partial,
                              const Sync& sync) {
  partial[thread] = norm_stats_of(p, thread, threads);
  sync();
  for (int half = threads / 2; half > 0; half /= 2) {
    if (thread < half) partial[thread].merge(partial[thread + half]);
    sync();
  }
  normalize_elements(p, partial[0], thread, p.size, threads);
}

template <class Scalar>
struct HistoryProblem {
  int64_t rows;
  int64_t classes;
  Matrix<const Scalar> logits;
  const int64_t* indices;
  int64_t index_stride;
  Matrix<bool> history;
};

// Marks the arg-max of one row (torch.argmax's) in its history row, by a Group of threads.
template <class Scalar, class Group>
NOISY_HD void history_row(const HistoryProblem<Scalar>& p, int64_t row, const Group& group) {
  const int64_t arg = torch_argmax<double>(p.logits, row, p.classes, group);
  if (group.lane == 0) p.history.at(p.indices[row * p.index_stride], arg) = true;
}

// CPU kernels: csrc/cpu/kernels.cpp. CUDA kernels: csrc/cuda/kernels.cu; `stream` is a
// cudaStream_t and the result the cudaError_t of the launch (0: success).
namespace cpu {
template <class Scalar, class Acc> void row_loss(const RowLossProblem<Scalar, Acc>& p);
void sample_complementary(const SamplingProblem& p);
template <class Scalar, class Acc> void jnpl_select(const SelectProblem<Scalar, Acc>& p);
template <class Scalar, class Acc> void normalize_weights(const NormalizeProblem<Scalar, Acc>& p);
template <class Scalar> void update_history(const HistoryProblem<Scalar>& p);
}  // namespace cpu

namespace cuda {
template <class Scalar, class Acc> int row_loss(const RowLossProblem<Scalar, Acc>& p, void* stream);
int sample_complementary(const SamplingProblem& p, void* stream);
template <class Scalar, class Acc> int jnpl_select(const SelectProblem<Scalar, Acc>& p, void* stream);
template <class Scalar, class Acc> int normalize_weights(const NormalizeProblem<Scalar, Acc>& p, void* stream);
template <class Scalar> int update_history(const HistoryProblem<Scalar>& p, void* stream);
}  // namespace cuda

// Calls F with every (storage, accumulation) type pair the ops support.
#define NOISY_FOR_EACH_FLOAT_TYPE(F) \
  F(float, float)                    \
  F(double, double)                  \
  F(::noisy::bf16_t, float)          \
  F(::noisy::f16_t, float)

}  // namespace noisy
