// The CUDA kernels' code run on host threads, so that the tests check it on machines without
// a GPU: the row bodies of noisy/kernels.h on a warp of 32 lanes (noisy/lane_group.h), a lane
// exchange being a write to a shared slot and a barrier, as a shuffle is a lockstep exchange;
// and normalize_block on a block of threads with a barrier for __syncthreads. Not covered: the
// shuffle instructions themselves and the launches. Built and used by tests/test_cuda_emulation.py.
#include <torch/extension.h>

#include <array>
#include <barrier>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "noisy/lane_group.h"
#include "problems.h"

namespace {

constexpr int kLanes = 32;        // a CUDA warp
constexpr int kBlockThreads = 64;  // a (small) CUDA block for normalize_block

struct ThreadExchange {
  struct Shared {
    std::barrier<> sync{kLanes};
    std::array<std::array<unsigned char, 32>, kLanes> slots;
  };
  Shared* shared;
  int lane;

  // Every lane writes its value, waits for all, reads its partner's, and waits again
  // before the slots are reused.
  template <class T>
  T swap_xor(T x, int offset) const {
    static_assert(sizeof(T) <= 32, "slot too small");
    std::memcpy(shared->slots[lane].data(), &x, sizeof(T));
    shared->sync.arrive_and_wait();
    std::memcpy(&x, shared->slots[lane ^ offset].data(), sizeof(T));
    shared->sync.arrive_and_wait();
    return x;
  }
};

using EmulatedWarp = noisy::LaneGroup<kLanes, ThreadExchange>;

// body(thread) on `threads` host threads at once, joined before returning.
template <class Body>
void on_threads(int threads, const Body& body) {
  std::vector<std::thread> pool;
  for (int thread = 0; thread < threads; ++thread) pool.emplace_back([&body, thread] { body(thread); });
  for (std::thread& thread : pool) thread.join();
}

// row_body(row, group) for every row, each row by all kLanes threads together.
template <class RowBody>
void on_lanes(int64_t rows, const RowBody& row_body) {
  ThreadExchange::Shared shared;
  on_threads(kLanes, [&](int lane) {
    const EmulatedWarp group{lane, ThreadExchange{&shared, lane}};
    for (int64_t row = 0; row < rows; ++row) row_body(row, group);
  });
}

const at::Tensor* optional_ptr(const c10::optional<at::Tensor>& t) { return t ? &*t : nullptr; }

// The loss family's (loss [B], gradient [B, C]) for a LossSpec given by its fields
// (noisy/loss_row.h: positive 0 none / 1 CE / 2 PL+; negatives 0 none / 1 listed / 2 all
// but the label). Inputs must be valid: nothing is checked here.
std::tuple<at::Tensor, at::Tensor> row_loss(const at::Tensor& logits, const c10::optional<at::Tensor>& labels,
                                            const c10::optional<at::Tensor>& negatives,
                                            const c10::optional<at::Tensor>& exclude, int64_t positive,
                                            int64_t pl_plus_n, int64_t negative_set, bool plus, double clamp_eps) {
  const noisy::LossSpec spec{static_cast<noisy::PositiveTerm>(positive), static_cast<int32_t>(pl_plus_n),
                             static_cast<noisy::NegativeSet>(negative_set), plus, clamp_eps};
  return noisy::run_row_loss(logits, optional_ptr(labels), optional_ptr(negatives), optional_ptr(exclude), spec, true,
                             [](const auto& p) {
                               on_lanes(p.rows, [&](int64_t row, const EmulatedWarp& g) { noisy::row_loss(p, row, g); });
                             });
}

std::tuple<at::Tensor, at::Tensor> jnpl_select(const at::Tensor& logits, int64_t seed, int64_t offset,
                                               int64_t first_row) {
  return noisy::run_select(logits, seed, offset, first_row, [](const auto& p) {
    on_lanes(p.rows, [&](int64_t row, const EmulatedWarp& g) { noisy::select_row(p, row, g); });
  });
}

void update_history(const at::Tensor& history, const at::Tensor& indices, const at::Tensor& logits) {
  noisy::run_history(history, indices, logits, [](const auto& p) {
    on_lanes(p.rows, [&](int64_t row, const EmulatedWarp& g) { noisy::history_row(p, row, g); });
  });
}

// mode: the value of noisy::NormMode (noisy/normalize.h).
at::Tensor normalize_weights(const at::Tensor& x, int64_t mode, double temperature) {
  return noisy::run_normalize(x, static_cast<noisy::NormMode>(mode), temperature, [](const auto& p) {
    using Stats = std::decay_t<decltype(noisy::norm_stats_of(p, 0, 1))>;
    std::vector<Stats> partial(kBlockThreads);
    std::barrier<> sync(kBlockThreads);
    on_threads(kBlockThreads, [&](int thread) {
      noisy::normalize_block(p, thread, kBlockThreads, partial.data(), [&] { sync.arrive_and_wait(); });
    });
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("row_loss", &row_loss);
  m.def("jnpl_select", &jnpl_select);
  m.def("update_history", &update_history);
  m.def("normalize_weights", &normalize_weights);
}
