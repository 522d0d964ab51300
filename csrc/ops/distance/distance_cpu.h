// CPU building blocks of the distance family, shared by the distance op and the
// fused prototypical loss (which computes distances and back-propagates through them).
// CPU kernels run in float32 and float64, so the element and accumulation types agree.
#pragma once

#include <vector>

#include "common/cpu.h"
#include "common/math.h"

namespace medmeta {
namespace cpu {

// Squared L2 norm of rows [begin, end) of a [rows, D] matrix.
template <typename T>
MEDMETA_CPU_CLONES void sq_norms_chunk(const T* x, int64_t D, T* out, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) out[r] = dot_row(x + r * D, x + r * D, D);
}

template <typename T> void sq_norms(const T* x, int64_t rows, int64_t D, T* out) {
  parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(D, 1)),
               [&](int64_t b, int64_t e) { sq_norms_chunk(x, D, out, b, e); });
}

// Distances of query rows [q0, q1) of one episode against its N rows of y:
// x [Q,D], y [N,D], xx [Q], yy [N] -> out [Q,N]. Four queries share each load of y.
template <typename T>
MEDMETA_INLINE void distance_rows(const T* x, const T* y, const T* xx, const T* yy, T* out, int64_t q0,
                                  int64_t q1, int64_t N, int64_t D, Metric m) {
  int64_t q = q0;
  for (; q + 4 <= q1; q += 4) {
    const T* x0 = x + q * D;
    for (int64_t n = 0; n < N; ++n) {
      T dots[4];
      dot4_row(x0, x0 + D, x0 + 2 * D, x0 + 3 * D, y + n * D, D, dots);
      for (int i = 0; i < 4; ++i) out[(q + i) * N + n] = distance_from_dot(m, dots[i], xx[q + i], yy[n]);
    }
  }
  for (; q < q1; ++q)
    for (int64_t n = 0; n < N; ++n)
      out[q * N + n] = distance_from_dot(m, dot_row(x + q * D, y + n * D, D), xx[q], yy[n]);
}

// Task t covers episode t / blocks and its queries [4 * (t % blocks), ...): blocks = ceil(Q / 4).
template <typename T>
MEDMETA_CPU_CLONES void distance_tasks(const T* x, const T* y, const T* xx, const T* yy, T* out, int64_t Q,
                                       int64_t N, int64_t D, Metric m, int64_t t0, int64_t t1) {
  const int64_t blocks = (Q + 3) / 4;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / blocks, q0 = (t % blocks) * 4, q1 = std::min(Q, q0 + 4);
    distance_rows(x + b * Q * D, y + b * N * D, xx + b * Q, yy + b * N, out + b * Q * N, q0, q1, N, D, m);
  }
}

// out [B,Q,N] = distances of x [B,Q,D] to y [B,N,D]; xx [B*Q] and yy [B*N] are scratch.
template <typename T>
void distances(const T* x, const T* y, T* out, T* xx, T* yy, int64_t B, int64_t Q, int64_t N, int64_t D,
               Metric m) {
  if (metric_needs_norms<T>(m)) {
    sq_norms(x, B * Q, D, xx);
    sq_norms(y, B * N, D, yy);
  } else {
    std::fill(xx, xx + B * Q, T(0));
    std::fill(yy, yy + B * N, T(0));
  }
  const int64_t tasks = B * ((Q + 3) / 4);
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(4 * N * D, 1));
  parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) { distance_tasks(x, y, xx, yy, out, Q, N, D, m, t0, t1); });
}

// acc [D] = sum_k w[k] * rows[k * stride] for K rows, plus `a * self`.
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

// Rows r in [r0, r1) of grad_x: grad_x[b,q] = ax * x[b,q] + sum_n w[q,n] * y[b,n].
template <typename T>
MEDMETA_CPU_CLONES void distance_grad_x_rows(const T* g, const T* x, const T* y, const T* d, const T* xx,
                                             const T* yy, T* gx, int64_t Q, int64_t N, int64_t D, Metric m,
                                             int64_t r0, int64_t r1) {
  std::vector<T> w(N);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / Q;
    T ax = 0;
    for (int64_t n = 0; n < N; ++n) {
      const DistanceGrad<T> dg = distance_grad(m, g[r * N + n], d[r * N + n], xx[r], yy[b * N + n]);
      w[n] = dg.w;
      ax += dg.ax;
    }
    weighted_row_sum(ax, x + r * D, w.data(), y + b * N * D, D, N, gx + r * D, D);
  }
}

// Rows r = (b, n) in [r0, r1) of grad_y: grad_y[b,n] = by * y[b,n] + sum_q w[q,n] * x[b,q].
template <typename T>
MEDMETA_CPU_CLONES void distance_grad_y_rows(const T* g, const T* x, const T* y, const T* d, const T* xx,
                                             const T* yy, T* gy, int64_t Q, int64_t N, int64_t D, Metric m,
                                             int64_t r0, int64_t r1) {
  std::vector<T> w(Q);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / N, n = r % N;
    T by = 0;
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t i = (b * Q + q) * N + n;
      const DistanceGrad<T> dg = distance_grad(m, g[i], d[i], xx[b * Q + q], yy[r]);
      w[q] = dg.w;
      by += dg.by;
    }
    weighted_row_sum(by, y + r * D, w.data(), x + b * Q * D, D, Q, gy + r * D, D);
  }
}

// Back-propagates g [B,Q,N] (the gradient of the distances d [B,Q,N]) to x and y,
// given the squared norms xx [B*Q] and yy [B*N]. Null outputs are skipped.
template <typename T>
void distance_backward_core(const T* g, const T* x, const T* y, const T* d, const T* xx, const T* yy, T* gx,
                            T* gy, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N * D + Q * D, 1));
  if (gx != nullptr)
    parallel_for(0, B * Q, grain, [&](int64_t r0, int64_t r1) {
      distance_grad_x_rows(g, x, y, d, xx, yy, gx, Q, N, D, m, r0, r1);
    });
  if (gy != nullptr)
    parallel_for(0, B * N, grain, [&](int64_t r0, int64_t r1) {
      distance_grad_y_rows(g, x, y, d, xx, yy, gy, Q, N, D, m, r0, r1);
    });
}

template <typename T> void norms_or_zero(const T* x, int64_t rows, int64_t D, Metric m, T* out) {
  if (metric_needs_norms<T>(m))
    sq_norms(x, rows, D, out);
  else
    std::fill(out, out + rows, T(0));
}

}  // namespace cpu
}  // namespace medmeta
