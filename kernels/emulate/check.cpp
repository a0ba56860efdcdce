// Checks the kernels of kernels/memory.cu against plain loops, run on the CPU under the thread
// emulation of shim.h (scripts/check-kernels-on-cpu.sh builds and runs it; no GPU or CUDA needed).
#include "memory_emu.cpp"
#include "dense_emu.cpp"
#include <algorithm>
#include <cstdio>
#include <random>
#include <cassert>
static std::mt19937 rng(1);
static std::vector<float> randv(size_t n, bool integer) {
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = integer ? std::round(nd(rng) * 1.5f) : nd(rng);
  return v;
}
static int fails = 0;
#define CHECK(c, ...) do { if (!(c)) { ++fails; printf("FAIL: " __VA_ARGS__); printf("\n"); } } while (0)

void test_pk(int N, int H, int n, int knn, bool integer) {
  // s1, s2 (H, N, n) directly (the matmul is cuBLAS's job).
  auto s1 = randv((size_t)H * N * n, integer), s2 = randv((size_t)H * N * n, integer);
  std::vector<float> scores((size_t)N * H * knn);
  std::vector<unsigned> slots((size_t)N * H * knn);
  launch({(unsigned)(N * H), 1, 0}, 128, [&] { pk_select(s1.data(), s2.data(), scores.data(), slots.data(), N, H, n, knn); });
  for (int t = 0; t < N; ++t) for (int h = 0; h < H; ++h) {
    std::vector<std::pair<float, unsigned>> all;
    const float* a = &s1[((size_t)h * N + t) * n]; const float* b = &s2[((size_t)h * N + t) * n];
    for (int i = 0; i < n; ++i) for (int j = 0; j < n; ++j) all.push_back({a[i] + b[j], (unsigned)(i * n + j)});
    std::sort(all.begin(), all.end(), [](auto x, auto y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
    for (int r = 0; r < knn; ++r) {
      size_t e = ((size_t)t * H + h) * knn + r;
      CHECK(slots[e] == all[r].second && scores[e] == all[r].first, "pk N%d H%d n%d knn%d int%d t%d h%d r%d: got (%g,%u) want (%g,%u)", N, H, n, knn, integer, t, h, r, scores[e], slots[e], all[r].first, all[r].second);
    }
  }
}

void test_ebag(int N, int M, int U, int D) {
  auto w = randv((size_t)N * M, false), g = randv((size_t)U * D, false), dy = randv((size_t)N * D, false);
  std::vector<unsigned> inv(N * M);
  for (int e = 0; e < N * M; ++e) inv[e] = e < U ? e : (unsigned)((e * 7919ull + 31) % U);
  std::vector<float> y((size_t)N * D), dw(N * M), dg((size_t)U * D);
  launch({(unsigned)N, (unsigned)((D + 255) / 256), 0}, 256, [&] { ebag_fwd(w.data(), g.data(), inv.data(), y.data(), N, M, D); });
  launch({(unsigned)((N * M + 7) / 8), 1, 0}, 256, [&] { ebag_bwd_dw(dy.data(), g.data(), inv.data(), dw.data(), N * M, M, D); });
  // reverse index
  std::vector<unsigned> start(U + 1, 0), order(N * M);
  for (auto u : inv) start[u + 1]++;
  for (int u = 0; u < U; ++u) start[u + 1] += start[u];
  auto fill = start;
  for (int e = 0; e < N * M; ++e) order[fill[inv[e]]++] = e;
  launch({(unsigned)U, (unsigned)((D + 255) / 256), 0}, 256, [&] { ebag_bwd_dg(w.data(), dy.data(), start.data(), order.data(), dg.data(), M, D); });
  double ey = 0, ew = 0, eg = 0;
  std::vector<double> rdg((size_t)U * D, 0);
  for (int t = 0; t < N; ++t) for (int c = 0; c < D; ++c) {
    double acc = 0; for (int m = 0; m < M; ++m) acc += (double)w[t * M + m] * g[(size_t)inv[t * M + m] * D + c];
    ey = std::max(ey, std::abs(acc - y[(size_t)t * D + c]));
  }
  for (int e = 0; e < N * M; ++e) {
    double acc = 0; int t = e / M; for (int c = 0; c < D; ++c) { acc += (double)dy[(size_t)t * D + c] * g[(size_t)inv[e] * D + c]; rdg[(size_t)inv[e] * D + c] += (double)w[e] * dy[(size_t)t * D + c]; }
    ew = std::max(ew, std::abs(acc - dw[e]));
  }
  for (size_t i = 0; i < rdg.size(); ++i) eg = std::max(eg, std::abs(rdg[i] - dg[i]));
  CHECK(ey < 1e-4 && ew < 1e-4 && eg < 1e-4, "ebag N%d M%d U%d D%d: errors y %g dw %g dg %g", N, M, U, D, ey, ew, eg);
}

void test_adam(bool rowwise, int D) {
  int K = 5, cap = 8, R = 20; int width = rowwise ? D + 1 : 2 * D;
  auto table = randv((size_t)R * D, false); auto ref = table;
  std::vector<float> state((size_t)cap * width, 0.f); std::vector<double> rm((size_t)cap * D, 0), rv((size_t)cap * width, 0);
  unsigned rows[5] = {0, 3, 7, 11, 19}, slotsv[5] = {4, 0, 2, 7, 1};
  float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, decay = 0.999f;
  for (int step = 1; step <= 3; ++step) {
    auto grads = randv((size_t)K * D, false);
    std::vector<unsigned> meta; std::vector<float> coef;
    for (int k = 0; k < K; ++k) { meta.push_back(rows[k]); meta.push_back(slotsv[k]); coef.push_back(0.01f / (1 - std::pow(0.9, step))); coef.push_back(1 / std::sqrt(1 - std::pow(0.95, step))); }
    launch({(unsigned)K, 1, 0}, 256, [&] { adam_moments(state.data(), grads.data(), meta.data(), D, rowwise, b1, b2, 1 - b1, 1 - b2); });
    launch({(unsigned)K, (unsigned)((D + 255) / 256), 0}, 256, [&] { adam_apply(table.data(), state.data(), meta.data(), coef.data(), D, rowwise, decay, eps); });
    for (int k = 0; k < K; ++k) {
      size_t s = slotsv[k]; double g2 = 0; for (int c = 0; c < D; ++c) g2 += (double)grads[k * D + c] * grads[k * D + c]; g2 /= D;
      if (rowwise) rv[s * width] = 0.95 * rv[s * width] + 0.05 * g2;
      for (int c = 0; c < D; ++c) {
        double g = grads[k * D + c]; rm[s * D + c] = 0.9 * rm[s * D + c] + 0.1 * g;
        double v; if (rowwise) v = rv[s * width]; else { rv[s * width + c] = 0.95 * rv[s * width + c] + 0.05 * g * g; v = rv[s * width + c]; }
        float& p = ref[(size_t)rows[k] * D + c];
        p = (float)(p * (double)decay - coef[2 * k] * rm[s * D + c] / (std::sqrt(v) * coef[2 * k + 1] + eps));
      }
    }
  }
  double err = 0; for (size_t i = 0; i < table.size(); ++i) err = std::max(err, (double)std::abs(table[i] - ref[i]));
  CHECK(err < 1e-5, "adam rowwise%d D%d: error %g", rowwise, D, err);
}

void test_small() {
  int R = 10, D = 300; auto table = randv((size_t)R * D, false); auto ref = table; auto grads = randv((size_t)3 * D, false);
  std::vector<unsigned> pairs = {7, 0, 2, 2, 9, 1};
  launch({3, (unsigned)((D + 255) / 256), 0}, 256, [&] { sgd_rows(table.data(), grads.data(), pairs.data(), D, 0.5f); });
  for (int k = 0; k < 3; ++k) for (int c = 0; c < D; ++c) ref[(size_t)pairs[2 * k] * D + c] -= 0.5f * grads[(size_t)pairs[2 * k + 1] * D + c];
  double e = 0; for (size_t i = 0; i < table.size(); ++i) e = std::max(e, (double)std::abs(table[i] - ref[i]));
  CHECK(e < 1e-6, "sgd_rows error %g", e);
  size_t n = 1000; auto x = randv(n, false), g = randv(n, false), p = randv(n, false); auto x0 = x, p0 = p;
  launch({4, 1, 0}, 256, [&] { scale_inplace(x.data(), n, 0.25f); });
  e = 0; for (size_t i = 0; i < n; ++i) e = std::max(e, (double)std::abs(x[i] - 0.25f * x0[i])); CHECK(e == 0, "scale error %g", e);
  std::vector<float> m(n, 0.1f), v(n, 0.2f);
  launch({4, 1, 0}, 256, [&] { ema_inplace(m.data(), g.data(), n, 0.9f, 0.1f, 0); });
  launch({4, 1, 0}, 256, [&] { ema_inplace(v.data(), g.data(), n, 0.95f, 0.05f, 1); });
  launch({4, 1, 0}, 256, [&] { adam_dense_apply(p.data(), m.data(), v.data(), n, 0.99f, 0.01f, 2.0f, 1e-8f); });
  e = 0;
  for (size_t i = 0; i < n; ++i) {
    double mi = 0.9 * 0.1f + 0.1 * g[i], vi = 0.95 * 0.2f + 0.05 * (double)g[i] * g[i];
    double want = p0[i] * 0.99 - 0.01 * mi / (std::sqrt(vi) * 2.0 + 1e-8);
    e = std::max(e, std::abs(want - p[i]));
  }
  CHECK(e < 1e-6, "dense adam error %g", e);
}

void test_dense(int rows, int d) {
  auto x = randv((size_t)rows * d, false), w = randv(d, false), g = randv((size_t)rows * d, false), u = randv((size_t)rows * d, false);
  float eps = 1e-5f; size_t n = (size_t)rows * d;
  std::vector<float> y(n), dx(n), dw(d), rstd(rows), sm(n), sdx(n), sw(n), dg(n), du(n);
  launch({(unsigned)rows, 1, 0}, 256, [&] { rmsnorm_fwd(x.data(), w.data(), y.data(), d, eps); });
  launch({(unsigned)rows, 1, 0}, 256, [&] { rmsnorm_bwd_dx(x.data(), w.data(), g.data(), dx.data(), rstd.data(), d, eps); });
  launch({(unsigned)((d + 255) / 256), 1, 0}, 256, [&] { rmsnorm_bwd_dw(x.data(), g.data(), rstd.data(), dw.data(), rows, d); });
  launch({(unsigned)rows, 1, 0}, 256, [&] { softmax_fwd(x.data(), sm.data(), d); });
  launch({(unsigned)rows, 1, 0}, 256, [&] { softmax_bwd(sm.data(), g.data(), sdx.data(), d); });
  launch({(unsigned)((n + 255) / 256), 1, 0}, 256, [&] { swiglu_fwd(x.data(), u.data(), sw.data(), n); });
  launch({(unsigned)((n + 255) / 256), 1, 0}, 256, [&] { swiglu_bwd(x.data(), u.data(), g.data(), dg.data(), du.data(), n); });
  double e[7] = {0, 0, 0, 0, 0, 0, 0};
  std::vector<double> rdw(d, 0);
  for (int r = 0; r < rows; ++r) {
    const float* xr = &x[(size_t)r * d]; const float* gr = &g[(size_t)r * d];
    double ss = 0, s = 0, m = -1e30, se = 0, sdot = 0;
    for (int c = 0; c < d; ++c) { ss += (double)xr[c] * xr[c]; s += (double)gr[c] * w[c] * xr[c]; m = std::max(m, (double)xr[c]); }
    double rs = 1 / std::sqrt(ss / d + eps);
    for (int c = 0; c < d; ++c) se += std::exp(xr[c] - m);
    for (int c = 0; c < d; ++c) sdot += std::exp(xr[c] - m) / se * gr[c];
    for (int c = 0; c < d; ++c) {
      size_t i = (size_t)r * d + c;
      e[0] = std::max(e[0], std::abs(xr[c] * rs * w[c] - y[i]));
      e[1] = std::max(e[1], std::abs(rs * gr[c] * w[c] - xr[c] * s * rs * rs * rs / d - dx[i]));
      rdw[c] += gr[c] * (double)xr[c] * rs;
      double p = std::exp(xr[c] - m) / se;
      e[2] = std::max(e[2], std::abs(p - sm[i]));
      e[3] = std::max(e[3], std::abs(p * (gr[c] - sdot) - sdx[i]));
      double sg = 1 / (1 + std::exp(-(double)xr[c]));
      e[4] = std::max(e[4], std::abs(xr[c] * sg * u[i] - sw[i]));
      e[5] = std::max(e[5], std::abs(gr[c] * u[i] * sg * (1 + xr[c] * (1 - sg)) - dg[i]) + std::abs(gr[c] * xr[c] * sg - du[i]));
    }
  }
  for (int c = 0; c < d; ++c) e[6] = std::max(e[6], std::abs(rdw[c] - dw[c]) / std::max(1.0, std::abs(rdw[c])));
  CHECK(e[0] < 1e-5 && e[1] < 1e-4 && e[2] < 1e-6 && e[3] < 1e-5 && e[4] < 1e-5 && e[5] < 1e-5 && e[6] < 1e-5,
        "dense rows%d d%d: rms y %g dx %g dw %g softmax y %g dx %g swiglu y %g d %g", rows, d, e[0], e[1], e[6], e[2], e[3], e[4], e[5]);
}

void test_rope(int B, int T, int H, int dh) {
  int half = dh / 2; size_t n = (size_t)B * T * H * dh, rows = (size_t)B * T * H;
  auto x = randv(n, false), cs = randv((size_t)T * half, false), sn = randv((size_t)T * half, false);
  std::vector<float> y(n), back(n);
  launch({(unsigned)((rows * half + 255) / 256), 1, 0}, 256, [&] { rope_rotate(x.data(), y.data(), cs.data(), sn.data(), rows, T, H, half, 1.f); });
  launch({(unsigned)((rows * half + 255) / 256), 1, 0}, 256, [&] { rope_rotate(y.data(), back.data(), cs.data(), sn.data(), rows, T, H, half, -1.f); });
  double e = 0, eb = 0;
  for (int b = 0; b < B; ++b) for (int t = 0; t < T; ++t) for (int h = 0; h < H; ++h) for (int j = 0; j < half; ++j) {
    size_t a = (((size_t)b * T + t) * H + h) * dh + j; float c = cs[t * half + j], s = sn[t * half + j];
    e = std::max(e, (double)std::abs(x[a] * c - x[a + half] * s - y[a]) + std::abs(x[a + half] * c + x[a] * s - y[a + half]));
    // back = R(-s) R(s) x = (c² + s²) x
    double k = (double)c * c + (double)s * s;
    eb = std::max(eb, std::abs(k * x[a] - back[a]) + std::abs(k * x[a + half] - back[a + half]));
  }
  CHECK(e < 1e-5 && eb < 1e-4, "rope B%d T%d H%d dh%d: fwd %g back %g", B, T, H, dh, e, eb);
}

void test_ce(int n, int v) {
  auto x = randv((size_t)n * v, false);
  std::vector<unsigned> t(n);
  for (int r = 0; r < n; ++r) t[r] = r % 3 == 1 ? IGNORE_INDEX : (unsigned)((r * 7919) % v);
  std::vector<float> rows(n), lp(n), mean(1), dx((size_t)n * v);
  int count = 0; for (auto tr : t) count += tr != IGNORE_INDEX;
  launch({(unsigned)n, 1, 0}, 256, [&] { ce_rows(x.data(), t.data(), rows.data(), v, 1.f); });
  launch({(unsigned)n, 1, 0}, 256, [&] { ce_rows(x.data(), t.data(), lp.data(), v, -1.f); });
  launch({1, 1, 0}, 256, [&] { ce_mean(rows.data(), n, count, mean.data()); });
  float scale = 0.7f / count;
  launch({(unsigned)n, 1, 0}, 256, [&] { ce_bwd(x.data(), t.data(), dx.data(), v, scale); });
  double total = 0, e = 0, ed = 0;
  for (int r = 0; r < n; ++r) {
    const float* xr = &x[(size_t)r * v]; double m = -1e30, s = 0;
    for (int c = 0; c < v; ++c) m = std::max(m, (double)xr[c]);
    for (int c = 0; c < v; ++c) s += std::exp(xr[c] - m);
    double lse = m + std::log(s);
    double nll = t[r] == IGNORE_INDEX ? 0 : lse - xr[t[r]];
    total += nll;
    e = std::max(e, std::abs(nll - rows[r]) + std::abs(-nll - lp[r]));
    for (int c = 0; c < v; ++c) {
      double want = t[r] == IGNORE_INDEX ? 0 : std::exp(xr[c] - lse) * scale - (c == (int)t[r] ? scale : 0);
      ed = std::max(ed, std::abs(want - dx[(size_t)r * v + c]));
    }
  }
  double em = std::abs(total / count - mean[0]);
  CHECK(e < 1e-4 && em < 1e-5 && ed < 1e-6, "ce n%d v%d: rows %g mean %g dx %g", n, v, e, em, ed);
}

int main() {
  test_small();
  test_ce(9, 50); test_ce(300, 1000);
  test_rope(2, 7, 3, 16); test_rope(1, 5, 4, 2);
  test_dense(7, 300); test_dense(3, 33); test_dense(20, 1);
  test_pk(5, 3, 9, 9, false); test_pk(7, 2, 16, 4, true); test_pk(6, 1, 40, 7, true); test_pk(4, 2, 64, 32, false); test_pk(3, 2, 64, 32, true);
  { // all ties: zeros
    int N = 2, H = 1, n = 5, knn = 3; std::vector<float> z((size_t)H * N * n, 0.f); std::vector<float> sc(N * H * knn); std::vector<unsigned> sl(N * H * knn);
    launch({(unsigned)(N * H), 1, 0}, 128, [&] { pk_select(z.data(), z.data(), sc.data(), sl.data(), N, H, n, knn); });
    CHECK(sl[0] == 0 && sl[1] == 1 && sl[2] == 2 && sl[3] == 0 && sl[4] == 1 && sl[5] == 2, "ties: %u %u %u", sl[0], sl[1], sl[2]);
  }
  test_ebag(9, 8, 20, 37); test_ebag(4, 3, 5, 300);
  test_adam(false, 24); test_adam(true, 24); test_adam(true, 300);
  printf("%s (%d failures)\n", fails ? "FAILED" : "all kernel emulation checks passed", fails);
  return fails != 0;
}
