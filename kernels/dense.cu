// Dense row / element-wise kernels (f32) for the ops the model runs on every layer: RMSNorm,
// softmax over the last dim, SwiGLU, forward and backward. Launched from src/ops/cuda/dense.rs;
// the CPU ops (src/ops/rmsnorm.rs, softmax.rs, swiglu.rs) are the correctness reference, compared
// by tests/cuda.rs, and scripts/check-kernels-on-cpu.sh checks these against plain loops.
//
// Row kernels: one block per row of D, threads strided over the row, block sums by a fixed
// shuffle tree (the same bits every run). No atomics: dw of RMSNorm is a second kernel with one
// thread per column summing over the rows in order.

#include <stdint.h>

#define FULL_MASK 0xffffffffu

// Σ v over the block; every thread gets it. red: 32 floats of shared memory.
__device__ float block_sum(float v, float* red) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // red may still be read from the previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? red[lane] : 0.f;
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(FULL_MASK, v, off);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

// max v over the block; every thread gets it.
__device__ float block_max(float v, float* red) {
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(FULL_MASK, v, off));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? red[lane] : -INFINITY;
        for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(FULL_MASK, v, off));
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

// RMSNorm: y = x · rstd · w, rstd = 1 / √(mean(x²) + eps), per row of D.
extern "C" __global__ void rmsnorm_fwd(const float* x, const float* w, float* y, int d, float eps) {
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * d;
    float* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) ss = fmaf(xr[c], xr[c], ss);
    float rstd = 1.f / sqrtf(block_sum(ss, red) / (float)d + eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = xr[c] * rstd * w[c];
}

// RMSNorm backward, per row: dx = rstd·(g⊙w) − x·rstd³/D·Σ(g⊙w⊙x); rstd (recomputed) saved per row
// for the dw kernel.
extern "C" __global__ void rmsnorm_bwd_dx(const float* x, const float* w, const float* g, float* dx, float* rstd_out,
                                          int d, float eps) {
    __shared__ float red[32];
    size_t at = (size_t)blockIdx.x * d;
    float ss = 0.f, s = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float xc = x[at + c];
        ss = fmaf(xc, xc, ss);
        s = fmaf(g[at + c] * w[c], xc, s);
    }
    float rstd = 1.f / sqrtf(block_sum(ss, red) / (float)d + eps);
    float k = block_sum(s, red) * rstd * rstd * rstd / (float)d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) dx[at + c] = rstd * g[at + c] * w[c] - x[at + c] * k;
    if (threadIdx.x == 0) rstd_out[blockIdx.x] = rstd;
}

// RMSNorm backward: dw[c] = Σ_rows g ⊙ x · rstd, one thread per column, rows in order.
extern "C" __global__ void rmsnorm_bwd_dw(const float* x, const float* g, const float* rstd, float* dw, int rows, int d) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float acc = 0.f;
    for (int r = 0; r < rows; ++r) {
        size_t at = (size_t)r * d + c;
        acc = fmaf(g[at] * x[at], rstd[r], acc);
    }
    dw[c] = acc;
}

// Softmax over each row of D: y = e^(x − max) / Σ e^(x − max).
extern "C" __global__ void softmax_fwd(const float* x, float* y, int d) {
    __shared__ float red[32];
    size_t at = (size_t)blockIdx.x * d;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < d; c += blockDim.x) m = fmaxf(m, x[at + c]);
    m = block_max(m, red);
    float s = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) s += expf(x[at + c] - m);
    float inv = 1.f / block_sum(s, red);
    for (int c = threadIdx.x; c < d; c += blockDim.x) y[at + c] = expf(x[at + c] - m) * inv;
}

// Softmax backward from the output: dx = y ⊙ (dy − Σ y⊙dy), per row.
extern "C" __global__ void softmax_bwd(const float* y, const float* dy, float* dx, int d) {
    __shared__ float red[32];
    size_t at = (size_t)blockIdx.x * d;
    float s = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) s = fmaf(y[at + c], dy[at + c], s);
    s = block_sum(s, red);
    for (int c = threadIdx.x; c < d; c += blockDim.x) dx[at + c] = y[at + c] * (dy[at + c] - s);
}

// SwiGLU: y = silu(g) ⊙ u, silu(g) = g·σ(g).
extern "C" __global__ void swiglu_fwd(const float* g, const float* u, float* y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float sg = 1.f / (1.f + expf(-g[i]));
    y[i] = g[i] * sg * u[i];
}

// SwiGLU backward: du = dy ⊙ silu(g), dg = dy ⊙ u ⊙ σ(g)·(1 + g·(1 − σ(g))).
extern "C" __global__ void swiglu_bwd(const float* g, const float* u, const float* dy, float* dg, float* du, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i], sg = 1.f / (1.f + expf(-gi));
    du[i] = dy[i] * gi * sg;
    dg[i] = dy[i] * u[i] * sg * (1.f + gi * (1.f - sg));
}

// RoPE, rotate-half: per (b, t, h) head of Dh = 2·half at table row t (cos, sin: (T, half)),
// y1 = x1·c − x2·s·sign, y2 = x2·c + x1·s·sign (sign −1: the inverse rotation, the backward).
// One thread per (row, j < half); rows = B·T·H.
extern "C" __global__ void rope_rotate(const float* x, float* y, const float* cos, const float* sin, size_t rows,
                                       int t, int h, int half, float sign) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * half) return;
    size_t row = i / half;
    int j = (int)(i - row * half);
    int tt = (int)((row / h) % t);
    float c = cos[(size_t)tt * half + j], s = sin[(size_t)tt * half + j] * sign;
    size_t a = row * 2 * half + j;
    float x1 = x[a], x2 = x[a + half];
    y[a] = x1 * c - x2 * s;
    y[a + half] = x2 * c + x1 * s;
}

#define IGNORE_INDEX 0xffffffffu

// Log-sum-exp of a row of V, every thread gets it (two passes: max, then Σ e^(x − max)).
__device__ float row_lse(const float* x, int v, float* red) {
    float m = -INFINITY;
    for (int c = threadIdx.x; c < v; c += blockDim.x) m = fmaxf(m, x[c]);
    m = block_max(m, red);
    float s = 0.f;
    for (int c = threadIdx.x; c < v; c += blockDim.x) s += expf(x[c] - m);
    return m + logf(block_sum(s, red));
}

// Cross-entropy per row: out[r] = sign · (lse − x[t]) (sign 1: the NLL, −1: log p(t)); 0 where the
// target is IGNORE_INDEX. One block per row.
extern "C" __global__ void ce_rows(const float* x, const unsigned* targets, float* out, int v, float sign) {
    __shared__ float red[32];
    const float* xr = x + (size_t)blockIdx.x * v;
    float lse = row_lse(xr, v, red);
    if (threadIdx.x == 0) {
        unsigned t = targets[blockIdx.x];
        out[blockIdx.x] = t == IGNORE_INDEX ? 0.f : sign * (lse - xr[t]);
    }
}

// mean: out[0] = Σ rows[r] / count, summed in f64 by one block (a fixed order); 0 when count = 0.
extern "C" __global__ void ce_mean(const float* rows, int n, int count, float* out) {
    __shared__ double red[32];
    double s = 0.0;
    for (int r = threadIdx.x; r < n; r += blockDim.x) s += (double)rows[r];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(FULL_MASK, s, off);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0) red[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < warps; ++w) total += red[w];
        out[0] = count > 0 ? (float)(total / count) : 0.f;
    }
}

// Cross-entropy backward: dx[r] = (softmax(x[r]) − onehot(t[r])) · scale (scale = g / count), 0 for
// ignored rows. One block per row; the lse is recomputed.
extern "C" __global__ void ce_bwd(const float* x, const unsigned* targets, float* dx, int v, float scale) {
    __shared__ float red[32];
    size_t at = (size_t)blockIdx.x * v;
    unsigned t = targets[blockIdx.x];
    if (t == IGNORE_INDEX) {
        for (int c = threadIdx.x; c < v; c += blockDim.x) dx[at + c] = 0.f;
        return;
    }
    float lse = row_lse(x + at, v, red);
    for (int c = threadIdx.x; c < v; c += blockDim.x) dx[at + c] = expf(x[at + c] - lse) * scale - (c == (int)t ? scale : 0.f);
}
