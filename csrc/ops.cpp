// Op schemas (TORCH_LIBRARY), input validation, and dispatch to the CPU / CUDA kernels.
// The same entry points serve both devices; only the kernel call differs.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <functional>
#include <string>
#include <tuple>

#include "problems.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace noisy {
namespace {

using at::Tensor;

// ---------------------------------------------------------------- validation
// Messages name the public Python function and the argument, e.g. "nl_loss(): comp_labels ...".

void check_logits(const char* api, const Tensor& logits, const char* name = "logits") {
  TORCH_CHECK_VALUE(logits.dim() == 2, api, "(): ", name, " must be 2-D [batch, classes], got shape ", logits.sizes());
  const auto t = logits.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, api, "(): ", name,
                   " must be float32, float64, bfloat16 or float16, got ", t);
  TORCH_CHECK_VALUE(logits.size(1) >= 2, api, "(): ", name, " needs at least 2 classes, got ", logits.size(1));
}

void check_same_device(const char* api, const Tensor& ref, const char* ref_name, const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), api, "(): ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// Class indices: int64, on `ref`'s device, of the given leading size, every value in [0, classes).
void check_class_indices(const char* api, const Tensor& t, const char* name, int64_t dim, int64_t rows,
                         int64_t classes, const Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, api, "(): ", name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, api, "(): ", name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == rows, api, "(): ", name, " has ", t.size(0), " rows but ", ref_name, " has ", rows);
  check_same_device(api, ref, ref_name, t, name);
  if (t.numel() == 0) return;
  // Both bounds in one copy to the host: on CUDA each copy waits for the device.
  const auto [lo, hi] = at::aminmax(t);
  const Tensor bounds = at::stack({lo, hi}).cpu();
  const int64_t min = bounds.const_data_ptr<int64_t>()[0], max = bounds.const_data_ptr<int64_t>()[1];
  TORCH_CHECK_VALUE(min >= 0 && max < classes, api, "(): ", name, " must lie in [0, ", classes, "), got values in [",
                    min, ", ", max, "]");
}

void check_exclude(const char* api, const Tensor& exclude, int64_t rows, int64_t classes, const Tensor& ref,
                   const char* ref_name) {
  TORCH_CHECK_TYPE(exclude.scalar_type() == at::kBool, api, "(): exclude must be bool, got ", exclude.scalar_type());
  TORCH_CHECK_VALUE(exclude.dim() == 2 && exclude.size(0) == rows && exclude.size(1) == classes, api,
                    "(): exclude must have shape [", rows, ", ", classes, "], got ", exclude.sizes());
  check_same_device(api, ref, ref_name, exclude, "exclude");
}

// The Philox rows first_row .. first_row + rows - 1 of a call must fit 32 bits.
void check_first_row(const char* api, int64_t first_row, int64_t rows) {
  TORCH_CHECK_VALUE(first_row >= 0, api, "(): first_row must be >= 0, got ", first_row);
  TORCH_CHECK_VALUE(first_row <= (int64_t{1} << 32) - rows, api, "(): first_row + rows must be <= 2^32 (Philox rows ",
                    "are 32-bit), got first_row = ", first_row, " and ", rows, " rows");
}

// ---------------------------------------------------------------- dispatch helpers

#ifdef WITH_CUDA
void check_launch(int error) {
  TORCH_CHECK(error == 0, "CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(error)));
}
#endif

// Runs `cpu_call()` or `cuda_call(stream)` for the device of `t`.
template <class CpuCall, class CudaCall>
void on_device(const Tensor& t, CpuCall&& cpu_call, CudaCall&& cuda_call) {
  if (t.is_cpu()) return cpu_call();
#ifdef WITH_CUDA
  if (t.is_cuda()) {
    const c10::cuda::CUDAGuard guard(t.device());
    return check_launch(cuda_call(static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream())));
  }
#endif
  (void)cuda_call;
  TORCH_CHECK(false, "noisy ops support CPU and CUDA tensors, got ", t.device());
}

// ---------------------------------------------------------------- losses

std::tuple<Tensor, Tensor> row_loss(const Tensor& logits, const Tensor* labels, const Tensor* negatives,
                                    const Tensor* exclude, const LossSpec& spec, bool compute_grad) {
  return run_row_loss(logits, labels, negatives, exclude, spec, compute_grad, [&](const auto& p) {
    on_device(logits, [&] { cpu::row_loss(p); }, [&](void* stream) { return cuda::row_loss(p, stream); });
  });
}

const char* nl_api(bool plus) { return plus ? "nl_plus_loss" : "nl_loss"; }
const char* pm_api(bool positive) { return positive ? "pm_loss" : "ml_loss"; }
constexpr const char* kCeApi = "weighted_ce";
constexpr const char* kPlPlusApi = "pl_plus_loss";

std::tuple<Tensor, Tensor> nl_forward(const Tensor& logits, const Tensor& comp_labels, bool plus, double clamp_eps,
                                      bool compute_grad) {
  const char* api = nl_api(plus);
  check_logits(api, logits);
  check_class_indices(api, comp_labels, "comp_labels", 2, logits.size(0), logits.size(1), logits, "logits");
  TORCH_CHECK_VALUE(comp_labels.size(1) >= 1, api, "(): comp_labels needs at least one column, got shape ",
                    comp_labels.sizes());
  TORCH_CHECK_VALUE(clamp_eps >= 0.0 && clamp_eps < 1.0, api, "(): clamp_eps must be in [0, 1), got ", clamp_eps);
  const LossSpec spec{PositiveTerm::none, 0, NegativeSet::listed, plus, clamp_eps};
  return row_loss(logits, nullptr, &comp_labels, nullptr, spec, compute_grad);
}

// PM (positive = true) or its negative part alone, ML (positive = false).
std::tuple<Tensor, Tensor> pm_forward(const Tensor& logits, const Tensor& labels, const c10::optional<Tensor>& exclude,
                                      bool positive, bool compute_grad) {
  const char* api = pm_api(positive);
  check_logits(api, logits);
  check_class_indices(api, labels, "labels", 1, logits.size(0), logits.size(1), logits, "logits");
  if (exclude) check_exclude(api, *exclude, logits.size(0), logits.size(1), logits, "logits");
  const LossSpec spec{positive ? PositiveTerm::cross_entropy : PositiveTerm::none, 0, NegativeSet::all_but_label,
                      false, 0.0};
  return row_loss(logits, &labels, nullptr, exclude ? &*exclude : nullptr, spec, compute_grad);
}

std::tuple<Tensor, Tensor> ce_forward(const Tensor& logits, const Tensor& labels, bool compute_grad) {
  const char* api = kCeApi;
  check_logits(api, logits);
  check_class_indices(api, labels, "labels", 1, logits.size(0), logits.size(1), logits, "logits");
  const LossSpec spec{PositiveTerm::cross_entropy, 0, NegativeSet::none, false, 0.0};
  return row_loss(logits, &labels, nullptr, nullptr, spec, compute_grad);
}

std::tuple<Tensor, Tensor> pl_plus_forward(const Tensor& logits, const Tensor& target, int64_t n, bool compute_grad) {
  const char* api = kPlPlusApi;
  check_logits(api, logits);
  check_class_indices(api, target, "target", 1, logits.size(0), logits.size(1), logits, "logits");
  TORCH_CHECK_VALUE(n >= 0 && n <= 16, api, "(): n must be in [0, 16], got ", n);
  const LossSpec spec{PositiveTerm::pl_plus, static_cast<int32_t>(n), NegativeSet::none, false, 0.0};
  return row_loss(logits, &target, nullptr, nullptr, spec, compute_grad);
}

// ---------------------------------------------------------------- sampling

// seed, offset and first_row are SymInts in the schemas: torch.compile then traces a step's new
// offset as a symbol instead of compiling the op again for every value. The kernels get numbers.
std::tuple<Tensor, Tensor> jnpl_select(const Tensor& logits, c10::SymInt seed, c10::SymInt offset,
                                       c10::SymInt first_row) {
  check_logits("jnpl_select", logits);
  check_first_row("jnpl_select", first_row.expect_int(), logits.size(0));
  return run_select(logits, seed.expect_int(), offset.expect_int(), first_row.expect_int(), [&](const auto& p) {
    on_device(logits, [&] { cpu::jnpl_select(p); }, [&](void* stream) { return cuda::jnpl_select(p, stream); });
  });
}

Tensor sample_complementary(const Tensor& labels, int64_t num_classes, int64_t k, const c10::optional<Tensor>& exclude,
                            bool replacement, c10::SymInt seed_arg, c10::SymInt offset_arg, c10::SymInt first_row_arg) {
  const char* api = "sample_complementary";
  const int64_t seed = seed_arg.expect_int(), offset = offset_arg.expect_int(), first_row = first_row_arg.expect_int();
  TORCH_CHECK_VALUE(num_classes >= 2, api, "(): num_classes must be >= 2, got ", num_classes);
  TORCH_CHECK_VALUE(num_classes <= (int64_t{1} << 31), api, "(): num_classes must be <= 2^31, got ", num_classes);
  TORCH_CHECK_VALUE(k >= 1, api, "(): k must be >= 1, got ", k);
  const int64_t rows = labels.dim() == 1 ? labels.size(0) : -1;
  check_class_indices(api, labels, "labels", 1, rows, num_classes, labels, "labels");
  check_first_row(api, first_row, rows);
  const int64_t needed = replacement ? 1 : k;
  TORCH_CHECK_VALUE(replacement || k <= num_classes - 1, api, "(): k = ", k, " > num_classes - 1 = ", num_classes - 1,
                    " complementary labels cannot be drawn without replacement");
  if (exclude) {
    check_exclude(api, *exclude, rows, num_classes, labels, "labels");
    if (rows > 0) {
      // Allowed classes per row: not excluded and not the label.
      const Tensor allowed = exclude->logical_not().scatter(1, labels.unsqueeze(1), false).sum(1);
      const auto fewest = allowed.min(0);
      const int64_t count = std::get<0>(fewest).item<int64_t>();
      TORCH_CHECK_VALUE(count >= needed, api, "(): row ", std::get<1>(fewest).item<int64_t>(), " has ", count,
                        " allowed classes (not its label, not excluded) but ", needed, " are needed",
                        replacement ? "" : " (k, without replacement)");
    }
  }
  Tensor out = at::empty({rows, k}, labels.options());
  if (rows == 0) return out;
  SamplingProblem p{};
  p.rows = rows;
  p.classes = num_classes;
  p.labels = labels.const_data_ptr<int64_t>();
  p.label_stride = labels.stride(0);
  if (exclude) p.exclude = matrix<bool>(*exclude);
  p.k = k;
  p.replacement = replacement;
  p.seed = static_cast<uint64_t>(seed);
  p.offset = static_cast<uint64_t>(offset);
  p.first_row = static_cast<uint64_t>(first_row);
  p.out = out.mutable_data_ptr<int64_t>();
  on_device(labels, [&] { cpu::sample_complementary(p); },
            [&](void* stream) { return cuda::sample_complementary(p, stream); });
  return out;
}

// ---------------------------------------------------------------- weights and history

NormMode parse_mode(const std::string& mode) {
  if (mode == "sub_min") return NormMode::sub_min;
  if (mode == "min_max") return NormMode::min_max;
  if (mode == "max") return NormMode::max;
  if (mode == "rectify_sum") return NormMode::rectify_sum;
  if (mode == "sigmoid") return NormMode::sigmoid;
  if (mode == "softmax") return NormMode::softmax;
  TORCH_CHECK_VALUE(false, "normalize_weights(): mode must be one of sub_min, min_max, max, rectify_sum, sigmoid, "
                    "softmax; got '", mode, "'");
}

Tensor normalize_weights(const Tensor& x, c10::string_view mode, double temperature) {
  const char* api = "normalize_weights";
  TORCH_CHECK_VALUE(x.dim() == 1, api, "(): x must be 1-D, got shape ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, api,
                   "(): x must be a floating-point tensor, got ", t);
  TORCH_CHECK_VALUE(temperature > 0.0, api, "(): temperature must be > 0, got ", temperature);
  // A NaN weight has no place in the min, max or sum that normalize the others: refused (one
  // reduction, on CUDA a device sync; once per call like the label checks).
  const Tensor nan = at::isnan(x);
  if (nan.any().item<bool>()) {
    const int64_t first = nan.to(at::kByte).argmax().item<int64_t>();
    TORCH_CHECK_VALUE(false, api, "(): x must not hold NaN, got NaN at index ", first, " of ", x.numel());
  }
  return run_normalize(x, parse_mode(std::string(mode)), temperature, [&](const auto& p) {
    on_device(x, [&] { cpu::normalize_weights(p); }, [&](void* stream) { return cuda::normalize_weights(p, stream); });
  });
}

void update_history(const Tensor& history, const Tensor& indices, const Tensor& logits) {
  const char* api = "update_history";
  check_logits(api, logits);
  TORCH_CHECK_TYPE(history.scalar_type() == at::kBool, api, "(): history must be bool, got ", history.scalar_type());
  TORCH_CHECK_VALUE(history.dim() == 2 && history.size(1) == logits.size(1), api,
                    "(): history must have shape [num_samples, ", logits.size(1), "], got ", history.sizes());
  check_same_device(api, logits, "logits", history, "history");
  check_class_indices(api, indices, "indices", 1, logits.size(0), history.size(0), logits, "logits");
  // As torch's in-place ops: rows that share memory (an expanded tensor) are refused, an inference
  // tensor outside inference mode is refused, and autograd sees the change (a graph that saved
  // history refuses to backpropagate through the old values).
  TORCH_CHECK_VALUE(at::has_internal_overlap(history) != at::MemOverlap::Yes, api,
                    "(): history has rows that share memory (e.g. an expanded tensor); give one with its own rows");
  history.unsafeGetTensorImpl()->bump_version();
  run_history(history, indices, logits, [&](const auto& p) {
    on_device(logits, [&] { cpu::update_history(p); }, [&](void* stream) { return cuda::update_history(p, stream); });
  });
}

// ---------------------------------------------------------------- autograd of the losses
// In C++: torch.library's Python autograd wrapper cost about 110 us per call on the host
// (bench/NOTES.md), more than a whole eager cross-entropy step at a small batch.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using LossCall = std::function<std::tuple<Tensor, Tensor>()>;

// A loss op returns (per-row loss, gradient wrt the logits); backward only scales that stored
// gradient by the incoming per-row gradient. So the losses have no second derivative.
struct StoredGradientLoss : torch::autograd::Function<StoredGradientLoss> {
  // `call` runs the op below autograd; `api` and `op` name it in errors.
  static variable_list forward(AutogradContext* ctx, const Tensor& logits, const std::string& api,
                               const std::string& op, const LossCall& call) {
    // An input of the call (autograd records the graph edge from it); its gradient has its dtype.
    ctx->saved_data["dtype"] = logits.scalar_type();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad] = call();
    ctx->save_for_backward({grad});
    ctx->mark_non_differentiable({grad});
    // The stored gradient never receives one: without this, autograd would fill a zero
    // tensor of its size for backward's second argument on every call.
    ctx->set_materialize_grads(false);
    ctx->saved_data["api"] = api;
    ctx->saved_data["op"] = op;
    return {loss, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const std::string api = ctx->saved_data["api"].toStringRef();
    const std::string op = ctx->saved_data["op"].toStringRef();
    // create_graph=True: the gradient is to be differentiated again. The op stores the
    // gradient only, a constant to autograd: the second derivative would silently be zero.
    TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), api, "(): double backward (create_graph=True: ",
                                "gradgradcheck, gradient penalties, meta-gradients) is not supported by the fused ",
                                "noisy::", op, "; use engine.reference.", api);
    variable_list grads(4);  // one per input of forward: logits, api, op, call
    const Tensor& grad_loss = grad_outputs[0];
    if (!grad_loss.defined()) return grads;  // only the (non-differentiable) gradient output was used
    const Tensor grad = ctx->get_saved_variables()[0];
    TORCH_CHECK(grad.dim() == 2, "noisy::", op, " was called with compute_grad=False, so it cannot backpropagate");
    const auto dtype = ctx->saved_data["dtype"].toScalarType();
    // A batch of incoming gradients (autograd.grad's is_grads_batched, jacobian(vectorize=True)) is
    // a batched tensor (vmap's), which an out= product cannot take: a product, then the dtype.
    static const c10::DispatchKeySet batched({c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchBatched});
    if (grad_loss.key_set().has_any(batched)) {
      grads[0] = at::mul(grad, grad_loss.unsqueeze(1)).to(dtype);
      return grads;
    }
    // Computed in the promoted dtype and rounded once on the store into the logits' dtype: for
    // bf16 no float32 [B, C] copy; fp16's stored gradient is float32 (noisy::GradStorage).
    // sym_sizes: under torch.compile the batch may be a symbol (rows picked by a mask, dynamic shapes).
    Tensor scaled = at::empty_symint(grad.sym_sizes(), grad.options().dtype(dtype));
    at::mul_out(scaled, grad, grad_loss.unsqueeze(1));
    grads[0] = scaled;
    return grads;
  }
};

std::tuple<Tensor, Tensor> stored_gradient_loss(const char* api, const char* op, const Tensor& logits,
                                                const LossCall& call) {
  const variable_list out = StoredGradientLoss::apply(logits, std::string(api), std::string(op), call);
  return {out[0], out[1]};
}

// The op `name` through the dispatcher, below autograd: its CPU / CUDA kernel, or its fake
// kernel while torch.compile traces.
template <class Signature>
c10::TypedOperatorHandle<Signature> loss_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::tuple<Tensor, Tensor> nl_forward_autograd(const Tensor& logits, const Tensor& comp_labels, bool plus,
                                               double clamp_eps, bool compute_grad) {
  static const auto op = loss_op<decltype(nl_forward)>("noisy::nl_forward");
  return stored_gradient_loss(nl_api(plus), "nl_forward", logits,
                              [&] { return op.call(logits, comp_labels, plus, clamp_eps, compute_grad); });
}

std::tuple<Tensor, Tensor> pm_forward_autograd(const Tensor& logits, const Tensor& labels,
                                               const c10::optional<Tensor>& exclude, bool positive, bool compute_grad) {
  static const auto op = loss_op<decltype(pm_forward)>("noisy::pm_forward");
  return stored_gradient_loss(pm_api(positive), "pm_forward", logits,
                              [&] { return op.call(logits, labels, exclude, positive, compute_grad); });
}

std::tuple<Tensor, Tensor> ce_forward_autograd(const Tensor& logits, const Tensor& labels, bool compute_grad) {
  static const auto op = loss_op<decltype(ce_forward)>("noisy::ce_forward");
  return stored_gradient_loss(kCeApi, "ce_forward", logits,
                              [&] { return op.call(logits, labels, compute_grad); });
}

std::tuple<Tensor, Tensor> pl_plus_forward_autograd(const Tensor& logits, const Tensor& target, int64_t n,
                                                    bool compute_grad) {
  static const auto op = loss_op<decltype(pl_plus_forward)>("noisy::pl_plus_forward");
  return stored_gradient_loss(kPlPlusApi, "pl_plus_forward", logits,
                              [&] { return op.call(logits, target, n, compute_grad); });
}

}  // namespace
}  // namespace noisy

TORCH_LIBRARY(noisy, m) {
  m.def("nl_forward(Tensor logits, Tensor comp_labels, bool plus, float clamp_eps, bool compute_grad) -> (Tensor, Tensor)");
  m.def("pm_forward(Tensor logits, Tensor labels, Tensor? exclude, bool positive, bool compute_grad) -> (Tensor, Tensor)");
  m.def("ce_forward(Tensor logits, Tensor labels, bool compute_grad) -> (Tensor, Tensor)");
  m.def("pl_plus_forward(Tensor logits, Tensor target, int n, bool compute_grad) -> (Tensor, Tensor)");
  m.def("jnpl_select(Tensor logits, SymInt seed, SymInt offset, SymInt first_row=0) -> (Tensor, Tensor)");
  m.def("sample_complementary(Tensor labels, int num_classes, int k, Tensor? exclude, bool replacement, SymInt seed, "
        "SymInt offset, SymInt first_row=0) -> Tensor");
  m.def("normalize_weights(Tensor x, str mode, float temperature) -> Tensor");
  m.def("update_history(Tensor(a!) history, Tensor indices, Tensor logits) -> ()");
}

#define NOISY_REGISTER_IMPLS(m)                                      \
  m.impl("nl_forward", &noisy::nl_forward);                         \
  m.impl("pm_forward", &noisy::pm_forward);                         \
  m.impl("ce_forward", &noisy::ce_forward);                         \
  m.impl("pl_plus_forward", &noisy::pl_plus_forward);               \
  m.impl("jnpl_select", &noisy::jnpl_select);                       \
  m.impl("sample_complementary", &noisy::sample_complementary);     \
  m.impl("normalize_weights", &noisy::normalize_weights);           \
  m.impl("update_history", &noisy::update_history);

TORCH_LIBRARY_IMPL(noisy, CPU, m) { NOISY_REGISTER_IMPLS(m) }

TORCH_LIBRARY_IMPL(noisy, Autograd, m) {
  m.impl("nl_forward", &noisy::nl_forward_autograd);
  m.impl("pm_forward", &noisy::pm_forward_autograd);
  m.impl("ce_forward", &noisy::ce_forward_autograd);
  m.impl("pl_plus_forward", &noisy::pl_plus_forward_autograd);
}
#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(noisy, CUDA, m) { NOISY_REGISTER_IMPLS(m) }
#endif
