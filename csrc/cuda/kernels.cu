// CUDA kernels. Torch-free on purpose: `nvcc -c` compiles this file on a machine
// without a CUDA build of torch (CI does). The math is csrc/include, shared with the CPU.
#include <cuda_runtime.h>

#include "noisy/kernels.h"
#include "noisy/sampling.h"

namespace noisy {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kNormalizeBlock = 512;

// A warp shares one row: lane-strided loops, butterfly all-reduces.
struct WarpGroup {
  static constexpr int width = kWarp;
  static constexpr bool caches_row = false;
  int lane;

  template <class T>
  NOISY_HD T sum(T x) const {
#ifdef __CUDA_ARCH__
    for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
#endif
    return x;
  }

  // Tracks the second largest either way: it costs a warp no extra pass over the row.
  template <class Logit>
  NOISY_HD auto top_two_of(const Logit& logit, int64_t classes, bool) const {
    TopTwo<decltype(logit(0))> top;
    for (int64_t j = lane; j < classes; j += width) top.add(logit(j), j);
    return top_two(top);
  }

  template <class Logit, class T>
  NOISY_HD T rest_exp_sum(const Logit& logit, int64_t classes, int64_t arg, T ref) const {
    T sum = 0;
    for (int64_t j = lane; j < classes; j += width) {
      if (j != arg) sum += math_exp(logit(j) - ref);
    }
    return sum;
  }

  // Recomputed: a warp has no room to cache a row.
  template <class T, class Logit>
  NOISY_HD T rel_exp(const SoftmaxRow<T>& s, const Logit& logit, int64_t j) const { return s.rel_exp(logit(j), j); }

  template <class T>
  NOISY_HD TopTwo<T> top_two(TopTwo<T> t) const {
#ifdef __CUDA_ARCH__
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      TopTwo<T> other;
      other.max1 = __shfl_xor_sync(0xffffffffu, t.max1, offset);
      other.max2 = __shfl_xor_sync(0xffffffffu, t.max2, offset);
      other.arg = __shfl_xor_sync(0xffffffffu, static_cast<long long>(t.arg), offset);
      t.merge(other);
    }
#endif
    return t;
  }
};

unsigned warp_rows_grid(int64_t rows) {
  const int64_t rows_per_block = kBlock / kWarp;
  return static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);
}

unsigned thread_rows_grid(int64_t rows) { return static_cast<unsigned>((rows + kBlock - 1) / kBlock); }

__device__ int64_t warp_row() { return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; }
__device__ int lane_id() { return static_cast<int>(threadIdx.x % kWarp); }

template <class S, class A>
__global__ void row_loss_kernel(const RowLossProblem<S, A> p) {
  const int64_t row = warp_row();
  if (row < p.rows) noisy::row_loss(p, row, WarpGroup{lane_id()});  // uniform per warp
}

__global__ void sample_complementary_kernel(const SamplingProblem p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.rows) return;
  const AllowedClasses classes{p.classes, p.labels[row * p.label_stride],
                               p.exclude.data ? &p.exclude.at(row, 0) : nullptr, p.exclude.col_stride};
  PhiloxStream rng(p.seed, p.offset, static_cast<uint64_t>(row));
  sample_complementary_row(classes, p.k, p.replacement, rng, p.out + row * p.k, 1);
}

template <class S, class A>
__global__ void jnpl_select_kernel(const SelectProblem<S, A> p) {
  const int64_t row = warp_row();
  if (row >= p.rows) return;
  const auto logit = [&](int64_t j) { return load_as<A>(p.logits.at(row, j)); };
  const SoftmaxRow<A> s = softmax_row<A>(logit, p.classes, WarpGroup{lane_id()});
  if (lane_id() == 0) {
    PhiloxStream rng(p.seed, p.offset, static_cast<uint64_t>(row));
    p.keep[row] = jnpl_keep(s, p.classes, rng);
    p.argmax[row] = s.arg;
  }
}

// One block: the statistics need the whole vector before any output is written.
template <class S, class A>
__global__ void normalize_weights_kernel(const NormalizeProblem<S, A> p) {
  __shared__ NormStats<A> partial[kNormalizeBlock];
  NormStats<A> stats;
  for (int64_t i = threadIdx.x; i < p.size; i += blockDim.x) stats.add(load_as<A>(p.x[i * p.stride]), p.mode, p.temperature);
  partial[threadIdx.x] = stats;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x].merge(partial[threadIdx.x + half]);
    __syncthreads();
  }
  stats = partial[0];
  for (int64_t i = threadIdx.x; i < p.size; i += blockDim.x) {
    p.out[i] = Store<S>::from(stats.apply(load_as<A>(p.x[i * p.stride]), p.mode, p.temperature));
  }
}

template <class S>
__global__ void update_history_kernel(const HistoryProblem<S> p) {
  const int64_t row = warp_row();
  if (row >= p.rows) return;
  TopTwo<double> top;  // double holds every supported dtype exactly
  for (int64_t j = lane_id(); j < p.classes; j += kWarp) top.add(load_as<double>(p.logits.at(row, j)), j);
  top = WarpGroup{lane_id()}.top_two(top);
  // Rows sharing an index all write `true`: a benign race.
  if (lane_id() == 0 && top.arg >= 0) p.history.at(p.indices[row * p.index_stride], top.arg) = true;
}

int launched() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

template <class S, class A>
int row_loss(const RowLossProblem<S, A>& p, void* stream) {
  row_loss_kernel<<<warp_rows_grid(p.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched();
}

int sample_complementary(const SamplingProblem& p, void* stream) {
  sample_complementary_kernel<<<thread_rows_grid(p.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched();
}

template <class S, class A>
int jnpl_select(const SelectProblem<S, A>& p, void* stream) {
  jnpl_select_kernel<<<warp_rows_grid(p.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched();
}

template <class S, class A>
int normalize_weights(const NormalizeProblem<S, A>& p, void* stream) {
  normalize_weights_kernel<<<1, kNormalizeBlock, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched();
}

template <class S>
int update_history(const HistoryProblem<S>& p, void* stream) {
  update_history_kernel<<<warp_rows_grid(p.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launched();
}

#define NOISY_INSTANTIATE_CUDA(S, A)                                          \
  template int row_loss<S, A>(const RowLossProblem<S, A>&, void*);            \
  template int jnpl_select<S, A>(const SelectProblem<S, A>&, void*);          \
  template int normalize_weights<S, A>(const NormalizeProblem<S, A>&, void*); \
  template int update_history<S>(const HistoryProblem<S>&, void*);
NOISY_FOR_EACH_FLOAT_TYPE(NOISY_INSTANTIATE_CUDA)
#undef NOISY_INSTANTIATE_CUDA

}  // namespace cuda
}  // namespace noisy
