// Tensors -> the raw-pointer problems of csrc/include/noisy/kernels.h, outputs allocated;
// `run(problem)` computes them. csrc/ops.cpp validates the inputs, then runs the CPU or the
// CUDA kernels; tests/cuda_emulation.cpp runs the CUDA kernels' code on host threads.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "noisy/kernels.h"

namespace noisy {

template <class S, class A>
struct Types {
  using Scalar = S;
  using Acc = A;
};

// f(Types<storage, accumulation>{}) for a logits dtype (see NOISY_FOR_EACH_FLOAT_TYPE).
template <class F>
void dispatch_float(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f(Types<float, float>{});
    case at::kDouble: return f(Types<double, double>{});
    case at::kBFloat16: return f(Types<bf16_t, float>{});
    case at::kHalf: return f(Types<f16_t, float>{});
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

template <class S>
Matrix<const S> matrix(const at::Tensor& t) {
  return {reinterpret_cast<const S*>(t.const_data_ptr()), t.stride(0), t.stride(1)};
}

inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The stored gradient's dtype (noisy::GradStorage): the logits', float32 for float16 logits.
inline at::ScalarType gradient_type(at::ScalarType t) { return t == at::kHalf ? at::kFloat : t; }

// Per-row loss [B] (float32, float64 for float64 logits) and, when compute_grad, its
// gradient wrt logits [B, C] in gradient_type (else an empty tensor).
template <class Run>
std::tuple<at::Tensor, at::Tensor> run_row_loss(const at::Tensor& logits, const at::Tensor* labels,
                                                const at::Tensor* negatives, const at::Tensor* exclude,
                                                const LossSpec& spec, bool compute_grad, Run&& run) {
  const int64_t rows = logits.size(0), classes = logits.size(1);
  at::Tensor loss = at::empty({rows}, logits.options().dtype(accumulation_type(logits.scalar_type())));
  const auto grad_options = logits.options().dtype(gradient_type(logits.scalar_type()));
  at::Tensor grad = compute_grad ? at::empty({rows, classes}, grad_options) : at::empty({0}, grad_options);
  if (rows == 0) return {loss, grad};
  dispatch_float(logits.scalar_type(), [&](auto types) {
    using S = typename decltype(types)::Scalar;
    using A = typename decltype(types)::Acc;
    RowLossProblem<S, A> p{};
    p.rows = rows;
    p.classes = classes;
    p.logits = matrix<S>(logits);
    if (labels) {
      p.labels = labels->const_data_ptr<int64_t>();
      p.label_stride = labels->stride(0);
    }
    if (negatives) {
      p.negatives = matrix<int64_t>(*negatives);
      p.num_negatives = negatives->size(1);
    }
    if (exclude) p.exclude = matrix<bool>(*exclude);
    p.loss = loss.mutable_data_ptr<A>();
    p.grad = compute_grad ? reinterpret_cast<typename GradStorage<S>::type*>(grad.mutable_data_ptr()) : nullptr;
    p.spec = spec;
    run(p);
  });
  return {loss, grad};
}

// PL+ selection: (keep bool [B], arg-max int64 [B]).
template <class Run>
std::tuple<at::Tensor, at::Tensor> run_select(const at::Tensor& logits, int64_t seed, int64_t offset, int64_t first_row,
                                              Run&& run) {
  const int64_t rows = logits.size(0);
  at::Tensor keep = at::empty({rows}, logits.options().dtype(at::kBool));
  at::Tensor argmax = at::empty({rows}, logits.options().dtype(at::kLong));
  if (rows == 0) return {keep, argmax};
  dispatch_float(logits.scalar_type(), [&](auto types) {
    using S = typename decltype(types)::Scalar;
    using A = typename decltype(types)::Acc;
    run(SelectProblem<S, A>{rows, logits.size(1), matrix<S>(logits), static_cast<uint64_t>(seed),
                            static_cast<uint64_t>(offset), static_cast<uint64_t>(first_row),
                            keep.mutable_data_ptr<bool>(), argmax.mutable_data_ptr<int64_t>()});
  });
  return {keep, argmax};
}

// x normalized by `mode`: a new 1-D tensor of x's dtype.
template <class Run>
at::Tensor run_normalize(const at::Tensor& x, NormMode mode, double temperature, Run&& run) {
  at::Tensor out = at::empty({x.size(0)}, x.options());
  if (x.numel() == 0) return out;
  dispatch_float(x.scalar_type(), [&](auto types) {
    using S = typename decltype(types)::Scalar;
    using A = typename decltype(types)::Acc;
    run(NormalizeProblem<S, A>{x.size(0), reinterpret_cast<const S*>(x.const_data_ptr()), x.stride(0), mode,
                               static_cast<A>(temperature), reinterpret_cast<S*>(out.mutable_data_ptr())});
  });
  return out;
}

// history[indices[i], argmax logits[i]] = true, in place.
template <class Run>
void run_history(const at::Tensor& history, const at::Tensor& indices, const at::Tensor& logits, Run&& run) {
  if (logits.size(0) == 0) return;
  dispatch_float(logits.scalar_type(), [&](auto types) {
    using S = typename decltype(types)::Scalar;
    run(HistoryProblem<S>{logits.size(0), logits.size(1), matrix<S>(logits), indices.const_data_ptr<int64_t>(),
                          indices.stride(0),
                          Matrix<bool>{history.mutable_data_ptr<bool>(), history.stride(0), history.stride(1)}});
  });
}

}  // namespace noisy
