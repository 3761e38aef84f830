// CUDA kernels. Torch-free on purpose: `nvcc -c` compiles this file on a machine
// without a CUDA build of torch (CI does). The math is csrc/include, shared with the CPU.
#include <cuda_runtime.h>

#include "noisy/kernels.h"
#include "noisy/lane_group.h"

namespace noisy {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kBlock = 256;
constexpr int kNormalizeBlock = 512;

// The lanes of a warp exchange values by shuffles, a 32-bit word at a time (any trivially
// copyable T: float, double, TopTwo). Device-only: nvcc's host pass compiles the
// __host__ __device__ callers but never runs them.
struct WarpShuffle {
  template <class T>
  NOISY_HD T swap_xor(T x, int offset) const {
#ifdef __CUDA_ARCH__
    static_assert(sizeof(T) % sizeof(uint32_t) == 0, "shuffled types are whole 32-bit words");
    uint32_t words[sizeof(T) / sizeof(uint32_t)];
    memcpy(words, &x, sizeof(T));
    for (uint32_t& word : words) word = __shfl_xor_sync(0xffffffffu, word, offset);
    memcpy(&x, words, sizeof(T));
#else
    (void)offset;
#endif
    return x;
  }
};

// A warp shares one row (csrc/include/noisy/lane_group.h).
using WarpGroup = LaneGroup<kWarp, WarpShuffle>;

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
  if (row < p.rows) sample_row(p, row);
}

template <class S, class A>
__global__ void jnpl_select_kernel(const SelectProblem<S, A> p) {
  const int64_t row = warp_row();
  if (row < p.rows) select_row(p, row, WarpGroup{lane_id()});  // uniform per warp
}

// One block: the statistics need the whole vector before any output is written.
template <class S, class A>
__global__ void normalize_weights_kernel(const NormalizeProblem<S, A> p) {
  // Raw storage: a __shared__ array cannot run NormStats' constructor; each slot is assigned first.
  __shared__ alignas(NormStats<A>) unsigned char storage[kNormalizeBlock * sizeof(NormStats<A>)];
  auto* partial = reinterpret_cast<NormStats<A>*>(storage);
  normalize_block(p, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), partial, [] { __syncthreads(); });
}

// Rows sharing an index all write `true`: a benign race.
template <class S>
__global__ void update_history_kernel(const HistoryProblem<S> p) {
  const int64_t row = warp_row();
  if (row < p.rows) history_row(p, row, WarpGroup{lane_id()});  // uniform per warp
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
