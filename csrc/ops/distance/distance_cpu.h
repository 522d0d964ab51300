// CPU building blocks of the distance family, shared by the distance op and the fused
// prototypical loss. Each op opens one parallel region per pass: squared norms are
// computed inside the tasks (per episode, cached across a thread's contiguous chunk)
// instead of in separate passes, because every extra fork/join costs microseconds on
// small episodes and much more when the cores are shared.
// CPU kernels run in float32 and float64, so element and accumulation types agree.
#pragma once

#include <vector>

#include "common/cpu.h"
#include "common/math.h"

namespace medmeta {
namespace cpu {

// Squared norms of `rows` consecutive rows of length D.
template <typename T> MEDMETA_INLINE void sq_norms(const T* x, int64_t rows, int64_t D, T* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = dot_row(x + r * D, x + r * D, D);
}

// The squared norms of one episode's rows, recomputed only when the episode changes.
template <typename T> struct EpisodeNorms {
  const T* rows;
  int64_t count, D;
  bool needed;
  std::vector<T> values;
  int64_t episode = -1;

  EpisodeNorms(const T* rows_, int64_t count_, int64_t D_, Metric m)
      : rows(rows_), count(count_), D(D_), needed(metric_needs_norms<T>(m)), values(count_, T(0)) {}

  MEDMETA_INLINE const T* of(int64_t b) {
    if (needed && b != episode) sq_norms(rows + b * count * D, count, D, values.data());
    episode = b;
    return values.data();
  }
};

// Distances of query rows [q0, q1) of one episode against its N rows of y:
// x [Q,D], y [N,D], xx [q1-q0] (norms of rows q0..), yy [N] -> out [Q,N].
// Four queries share each load of y.
template <typename T>
MEDMETA_INLINE void distance_rows(const T* x, const T* y, const T* xx, const T* yy, T* out, int64_t q0,
                                  int64_t q1, int64_t N, int64_t D, Metric m) {
  int64_t q = q0;
  for (; q + 4 <= q1; q += 4) {
    const T* x0 = x + q * D;
    for (int64_t n = 0; n < N; ++n) {
      T dots[4];
      dot4_row(x0, x0 + D, x0 + 2 * D, x0 + 3 * D, y + n * D, D, dots);
      for (int i = 0; i < 4; ++i) out[(q + i) * N + n] = distance_from_dot(m, dots[i], xx[q - q0 + i], yy[n]);
    }
  }
  for (; q < q1; ++q)
    for (int64_t n = 0; n < N; ++n)
      out[q * N + n] = distance_from_dot(m, dot_row(x + q * D, y + n * D, D), xx[q - q0], yy[n]);
}

// Task t covers episode t / blocks and its queries [4 * (t % blocks), +4): blocks = ceil(Q / 4).
// After each block, `rows_done(b, q0, q1)` may post-process the finished distance rows.
template <typename T, typename RowsDone>
MEDMETA_CPU_CLONES void distance_tasks(const T* x, const T* y, T* out, int64_t Q, int64_t N, int64_t D, Metric m,
                                       int64_t t0, int64_t t1, const RowsDone& rows_done) {
  const int64_t blocks = (Q + 3) / 4;
  EpisodeNorms<T> yy(y, N, D, m);
  T xx[4] = {0, 0, 0, 0};
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / blocks, q0 = (t % blocks) * 4, q1 = std::min(Q, q0 + 4);
    const T* xb = x + b * Q * D;
    if (yy.needed) sq_norms(xb + q0 * D, q1 - q0, D, xx);
    distance_rows(xb, y + b * N * D, xx, yy.of(b), out + b * Q * N, q0, q1, N, D, m);
    rows_done(b, q0, q1);
  }
}

// out [B,Q,N] = distances of x [B,Q,D] to y [B,N,D], in one parallel region.
template <typename T, typename RowsDone>
void distances(const T* x, const T* y, T* out, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m,
               const RowsDone& rows_done) {
  const int64_t tasks = B * ((Q + 3) / 4);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(4 * N * D, 1));
  parallel_for(0, tasks, grain,
               [&](int64_t t0, int64_t t1) { distance_tasks(x, y, out, Q, N, D, m, t0, t1, rows_done); });
}

// acc [D] = a * self + sum_k w[k] * rows[k * row_stride] over K rows.
template <typename T>
MEDMETA_INLINE void weighted_row_sum(T a, const T* self, const T* w, const T* rows, int64_t row_stride, int64_t K,
                                     T* __restrict acc, int64_t D) {
  scale_row(a, self, acc, D);
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const T w0 = w[k], w1 = w[k + 1], w2 = w[k + 2], w3 = w[k + 3];
    const T* r0 = rows + k * row_stride;
    const T* r1 = r0 + row_stride;
    const T* r2 = r1 + row_stride;
    const T* r3 = r2 + row_stride;
    MEDMETA_SIMD
    for (int64_t i = 0; i < D; ++i) acc[i] += w0 * r0[i] + w1 * r1[i] + w2 * r2[i] + w3 * r3[i];
  }
  for (; k < K; ++k) axpy_row(w[k], rows + k * row_stride, acc, D);
}

// Rows r = (b, q) in [r0, r1) of grad_x: grad_x[b,q] = ax * x[b,q] + sum_n w[q,n] * y[b,n],
// where grad_d(r, n) is the gradient of the loss with respect to d[b,q,n].
template <typename T, typename GradD>
MEDMETA_CPU_CLONES void grad_x_rows(const GradD& grad_d, const T* x, const T* y, const T* d, T* gx, int64_t Q,
                                    int64_t N, int64_t D, Metric m, int64_t r0, int64_t r1) {
  std::vector<T> w(N);
  EpisodeNorms<T> yy(y, N, D, m);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / Q;
    const T* yyb = yy.of(b);
    const T xx = yy.needed ? dot_row(x + r * D, x + r * D, D) : T(0);
    T ax = 0;
    for (int64_t n = 0; n < N; ++n) {
      const DistanceGrad<T> dg = distance_grad(m, grad_d(r, n), d[r * N + n], xx, yyb[n]);
      w[n] = dg.w;
      ax += dg.ax;
    }
    weighted_row_sum(ax, x + r * D, w.data(), y + b * N * D, D, N, gx + r * D, D);
  }
}

// Rows r = (b, n) in [r0, r1) of grad_y: grad_y[b,n] = by * y[b,n] + sum_q w[q,n] * x[b,q].
template <typename T, typename GradD>
MEDMETA_CPU_CLONES void grad_y_rows(const GradD& grad_d, const T* x, const T* y, const T* d, T* gy, int64_t Q,
                                    int64_t N, int64_t D, Metric m, int64_t r0, int64_t r1) {
  std::vector<T> w(Q);
  EpisodeNorms<T> xx(x, Q, D, m);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / N, n = r % N;
    const T* xxb = xx.of(b);
    const T yy = xx.needed ? dot_row(y + r * D, y + r * D, D) : T(0);
    T by = 0;
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t row = b * Q + q;
      const DistanceGrad<T> dg = distance_grad(m, grad_d(row, n), d[row * N + n], xxb[q], yy);
      w[q] = dg.w;
      by += dg.by;
    }
    weighted_row_sum(by, y + r * D, w.data(), x + b * Q * D, D, Q, gy + r * D, D);
  }
}

// Back-propagates grad_d (r, n) -> d loss / d distance[r, n], r = b * Q + q, through the
// distances d [B,Q,N] to x [B,Q,D] and y [B,N,D]. Null outputs are skipped.
template <typename T, typename GradD>
void distance_backward(const GradD& grad_d, const T* x, const T* y, const T* d, T* gx, T* gy, int64_t B, int64_t Q,
                       int64_t N, int64_t D, Metric m) {
  if (gx != nullptr)
    parallel_for(0, B * Q, std::max<int64_t>(1, 32768 / std::max<int64_t>(N * D, 1)),
                 [&](int64_t r0, int64_t r1) { grad_x_rows(grad_d, x, y, d, gx, Q, N, D, m, r0, r1); });
  if (gy != nullptr)
    parallel_for(0, B * N, std::max<int64_t>(1, 32768 / std::max<int64_t>(Q * D, 1)),
                 [&](int64_t r0, int64_t r1) { grad_y_rows(grad_d, x, y, d, gy, Q, N, D, m, r0, r1); });
}

}  // namespace cpu
}  // namespace medmeta
