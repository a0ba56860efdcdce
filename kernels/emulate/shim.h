// Host emulation for scripts/check-kernels-on-cpu.sh (not part of any build).
#pragma once
// Host emulation of the CUDA features kernels/memory.cu uses: one std::thread per CUDA thread,
// a block barrier for __syncthreads, per-warp barriers for the shuffles.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <thread>
#include <vector>
#include <functional>
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local Dim3 threadIdx, blockIdx;
Dim3 blockDim, gridDim;
std::barrier<>* g_block_barrier;
std::vector<std::barrier<>*> g_warp_barriers;
float g_warp_f[64][32];
unsigned g_warp_u[64][32];
float g_dyn_shared[1 << 16];
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
inline float __shfl_down_sync(unsigned, float v, int off) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  g_warp_f[w][lane] = v; g_warp_barriers[w]->arrive_and_wait();
  float r = lane + off < 32 ? g_warp_f[w][lane + off] : v; g_warp_barriers[w]->arrive_and_wait();
  return r;
}
inline unsigned __shfl_down_sync(unsigned, unsigned v, int off) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  g_warp_u[w][lane] = v; g_warp_barriers[w]->arrive_and_wait();
  unsigned r = lane + off < 32 ? g_warp_u[w][lane + off] : v; g_warp_barriers[w]->arrive_and_wait();
  return r;
}
double g_warp_d[64][32];
inline double __shfl_down_sync(unsigned, double v, int off) {
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  g_warp_d[w][lane] = v; g_warp_barriers[w]->arrive_and_wait();
  double r = lane + off < 32 ? g_warp_d[w][lane + off] : v; g_warp_barriers[w]->arrive_and_wait();
  return r;
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
template <typename F> void launch(Dim3 grid, unsigned threads, F f) {
  blockDim = {threads, 1, 1}; gridDim = grid;
  for (unsigned by = 0; by < std::max(1u, grid.y); ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> bb(threads); g_block_barrier = &bb;
      std::vector<std::barrier<>*> wb; for (unsigned w = 0; w < threads / 32; ++w) wb.push_back(new std::barrier<>(32));
      g_warp_barriers = wb;
      std::vector<std::thread> ts;
      for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&, t] { threadIdx = {t, 0, 0}; blockIdx = {bx, by, 0}; f(); });
      for (auto& t : ts) t.join();
      for (auto* b : wb) delete b;
    }
}
