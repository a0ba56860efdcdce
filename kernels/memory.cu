// Memory-layer kernels (f32): product-key top-k selection, the embedding bag (weighted gather of
// value rows) forward and backward, and the in-place sparse updates of the value table (SGD on
// chosen rows, lazy AdamW with per-row state). Launched from src/ops/cuda/ and
// src/train/device_rows.rs; the CPU ops they mirror (src/ops/product_keys.rs,
// src/ops/embedding_bag.rs, src/train/sparse_values.rs) are their correctness reference, and
// tests/cuda.rs compares the two on random inputs.
//
// Every reduction runs in a fixed order (no atomics): results do not depend on scheduling.

#include <stdint.h>

#define FULL_MASK 0xffffffffu
#define NO_INDEX 0xffffffffu

// The selection order of the CPU op: a before b if a scores higher, or equal and a's index is lower.
__device__ __forceinline__ bool better(float as, unsigned ai, float bs, unsigned bi) {
    return as > bs || (as == bs && ai < bi);
}

// The best (score, index) of the block, by `better`; every thread gets it. red_s / red_i: 32 slots
// of shared memory. Reduction tree: a fixed shuffle pattern within warps, then warp 0 over warps.
__device__ void block_best(float& s, unsigned& i, float* red_s, unsigned* red_i) {
    for (int off = 16; off > 0; off >>= 1) {
        float os = __shfl_down_sync(FULL_MASK, s, off);
        unsigned oi = __shfl_down_sync(FULL_MASK, i, off);
        if (better(os, oi, s, i)) { s = os; i = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    __syncthreads();  // red_* may still be read from the previous call
    if (lane == 0) { red_s[warp] = s; red_i[warp] = i; }
    __syncthreads();
    if (warp == 0) {
        s = lane < warps ? red_s[lane] : -INFINITY;
        i = lane < warps ? red_i[lane] : NO_INDEX;
        for (int off = 16; off > 0; off >>= 1) {
            float os = __shfl_down_sync(FULL_MASK, s, off);
            unsigned oi = __shfl_down_sync(FULL_MASK, i, off);
            if (better(os, oi, s, i)) { s = os; i = oi; }
        }
        if (lane == 0) { red_s[0] = s; red_i[0] = i; }
    }
    __syncthreads();
    s = red_s[0];
    i = red_i[0];
}

// The k best of `count` candidates (get(c) -> (score, index)), best first, into out_s / out_i
// (shared memory). Round r takes the best candidate strictly after round r-1's pick in the order,
// so ties are resolved by index exactly as the CPU sort does, and nothing needs marking.
// NaN scores are never picked (the CPU op's NaN handling differs; NaN queries are a bug upstream).
template <typename Get>
__device__ void block_top_k(int count, int k, Get get, float* out_s, unsigned* out_i, float* red_s, unsigned* red_i) {
    float ps = INFINITY;
    unsigned pi = 0;
    for (int r = 0; r < k; ++r) {
        float bs = -INFINITY;
        unsigned bi = NO_INDEX;
        for (int c = threadIdx.x; c < count; c += blockDim.x) {
            float s;
            unsigned idx;
            get(c, s, idx);
            bool after = r == 0 || better(ps, pi, s, idx);
            if (after && better(s, idx, bs, bi)) { bs = s; bi = idx; }
        }
        block_best(bs, bi, red_s, red_i);
        if (threadIdx.x == 0) { out_s[r] = bs; out_i[r] = bi; }
        ps = bs;
        pi = bi;
    }
    __syncthreads();
}

// Product-key top-k selection. s1, s2: half-scores (H, N, n) (S_p[h, t, i] = q_p[t, h] · K_p[h, i],
// computed by a cuBLAS matmul); one block per (token t, head h). Stage 1: the knn best of each
// half; stage 2: the knn best of the knn² sums s1[i] + s2[j], index i·n + j.
// Out: scores, slots (N, H, knn), best first. Dynamic shared memory: 4·knn words.
extern "C" __global__ void pk_select(const float* s1, const float* s2, float* scores, unsigned* slots,
                                     int n_tok, int heads, int n, int knn) {
    extern __shared__ float sh[];
    __shared__ float red_s[32];
    __shared__ unsigned red_i[32];
    float* t1s = sh;
    unsigned* t1i = (unsigned*)(sh + knn);
    float* t2s = sh + 2 * knn;
    unsigned* t2i = (unsigned*)(sh + 3 * knn);
    int t = blockIdx.x / heads, h = blockIdx.x % heads;
    const float* r1 = s1 + ((size_t)h * n_tok + t) * n;
    const float* r2 = s2 + ((size_t)h * n_tok + t) * n;
    block_top_k(n, knn, [&](int c, float& s, unsigned& i) { s = r1[c]; i = c; }, t1s, t1i, red_s, red_i);
    block_top_k(n, knn, [&](int c, float& s, unsigned& i) { s = r2[c]; i = c; }, t2s, t2i, red_s, red_i);
    size_t at = ((size_t)t * heads + h) * knn;
    block_top_k(
        knn * knn, knn,
        [&](int c, float& s, unsigned& i) {
            int a = c / knn, b = c - a * knn;
            s = t1s[a] + t2s[b];
            i = t1i[a] * (unsigned)n + t2i[b];
        },
        scores + at, slots + at, red_s, red_i);
}

// Embedding bag forward: y[t, c] = Σ_m w[t, m] · G[inv[t·M + m], c], m in order.
// Grid (N, ceil(D / blockDim)).
extern "C" __global__ void ebag_fwd(const float* w, const float* g, const unsigned* inv, float* y,
                                    int n_tok, int m, int d) {
    int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float acc = 0.f;
    for (int k = 0; k < m; ++k) {
        size_t e = (size_t)t * m + k;
        acc = fmaf(w[e], g[(size_t)inv[e] * d + c], acc);
    }
    y[(size_t)t * d + c] = acc;
}

// dw[e] = dy[e / M] · G[inv[e]]: one warp per entry, lanes over the row, a fixed shuffle tree.
extern "C" __global__ void ebag_bwd_dw(const float* dy, const float* g, const unsigned* inv, float* dw,
                                       int n_entries, int m, int d) {
    size_t e = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (e >= (size_t)n_entries) return;  // whole warps leave together (blockDim is a multiple of 32)
    const float* a = dy + (e / m) * d;
    const float* b = g + (size_t)inv[e] * d;
    float acc = 0.f;
    for (int c = lane; c < d; c += 32) acc = fmaf(a[c], b[c], acc);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(FULL_MASK, acc, off);
    if (lane == 0) dw[e] = acc;
}

// dG[u, c] = Σ_{e in order[start[u] .. start[u+1]]} w[e] · dy[e / M, c]: the reverse index (row →
// entries in (t, m) order, a counting sort on the host) makes each row one thread's sequential sum
// per column. Grid (U, ceil(D / blockDim)).
extern "C" __global__ void ebag_bwd_dg(const float* w, const float* dy, const unsigned* start, const unsigned* order,
                                       float* dg, int m, int d) {
    int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float acc = 0.f;
    for (unsigned k = start[u]; k < start[u + 1]; ++k) {
        unsigned e = order[k];
        acc = fmaf(w[e], dy[(size_t)(e / m) * d + c], acc);
    }
    dg[(size_t)u * d + c] = acc;
}

// x[i] *= s, in place.
extern "C" __global__ void scale_inplace(float* x, size_t n, float s) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// Sparse SGD, in place on the table: table[pairs[k].row] -= lr · grads[pairs[k].grad_row].
// pairs: (K, 2) u32 (table row, gradient row), rows distinct. Grid (K, ceil(D / blockDim)).
extern "C" __global__ void sgd_rows(float* table, const float* grads, const unsigned* pairs, int d, float lr) {
    int k = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    size_t r = pairs[2 * k], gr = pairs[2 * k + 1];
    float* p = table + r * d + c;
    *p = fmaf(-lr, grads[gr * d + c], *p);
}

// Lazy AdamW, part 1: the moments of the touched rows, in place on the state. state: (cap, 2D)
// (m then v per element) or, rowwise, (cap, D + 1) (m per element, one v: the row mean of g²).
// meta: (K, 2) u32 (table row, state slot); grads (K, D). One block per touched row.
extern "C" __global__ void adam_moments(float* state, const float* grads, const unsigned* meta, int d, int rowwise,
                                        float b1, float b2, float one_m_b1, float one_m_b2) {
    __shared__ float red[32];
    int k = blockIdx.x;
    size_t slot = meta[2 * k + 1];
    const float* g = grads + (size_t)k * d;
    float* m = state + slot * (rowwise ? d + 1 : 2 * d);
    float* v = m + d;
    float sq = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float gi = g[c];
        m[c] = b1 * m[c] + one_m_b1 * gi;
        if (rowwise) sq = fmaf(gi, gi, sq);
        else v[c] = b2 * v[c] + one_m_b2 * gi * gi;
    }
    if (!rowwise) return;
    for (int off = 16; off > 0; off >>= 1) sq += __shfl_down_sync(FULL_MASK, sq, off);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    if (lane == 0) red[warp] = sq;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.f;
        for (int w = 0; w < warps; ++w) s += red[w];
        v[0] = b2 * v[0] + one_m_b2 * (s / (float)d);
    }
}

// Lazy AdamW, part 2: the parameter update of the touched rows, in place on the table, from the
// moments part 1 wrote. coef: (K, 2) f32 per row (step_size = lr / (1 − β1^t_r),
// inv_sqrt_bc2 = 1 / √(1 − β2^t_r)), computed on the host in f64 as the CPU update does.
// p ← p·decay − step_size · m / (√v · inv_sqrt_bc2 + eps). Grid (K, ceil(D / blockDim)).
extern "C" __global__ void adam_apply(float* table, const float* state, const unsigned* meta, const float* coef, int d,
                                      int rowwise, float decay, float eps) {
    int k = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    size_t row = meta[2 * k], slot = meta[2 * k + 1];
    const float* m = state + slot * (rowwise ? d + 1 : 2 * d);
    float v = rowwise ? m[d] : m[d + c];
    float step_size = coef[2 * k], inv_sqrt_bc2 = coef[2 * k + 1];
    float* p = table + row * d + c;
    *p = *p * decay - step_size * m[c] / (sqrtf(v) * inv_sqrt_bc2 + eps);
}

// Dense AdamW, part 1 (twice: m, then v): x ← a·x + b·g (or b·g² with `square`), in place on x.
extern "C" __global__ void ema_inplace(float* x, const float* g, size_t n, float a, float b, int square) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    x[i] = a * x[i] + (square ? b * gi * gi : b * gi);
}

// Dense AdamW, part 2: p ← p·decay − step_size · m / (√v · inv_sqrt_bc2 + eps), in place on p.
extern "C" __global__ void adam_dense_apply(float* p, const float* m, const float* v, size_t n, float decay,
                                            float step_size, float inv_sqrt_bc2, float eps) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    p[i] = p[i] * decay - step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
}
