// CPU kernels of pairwise_distance, OpenMP over (episode, block of queries).
//
// Few prototypes (N < kPanelMinN): the kernels shared with the fused loss (distance_cpu.h):
// four queries share each load of a prototype row, one dot product per (query, prototype).
//
// Many prototypes (N >= kPanelMinN, e.g. the segmentation score head: every query feature
// position against tens of local prototypes), matrix-product kernels:
//   forward   y packed transposed per episode, yt[d, n] (zero-padded to whole vectors); a
//             register tile of RQ queries × NV vectors of prototypes takes, per channel d,
//             NV vector loads of yt and RQ broadcasts of x for RQ·NV FMAs (no horizontal sums),
//             over channel blocks whose slice of yt stays in L1; the metric is applied per
//             tile from per-query and per-prototype factors (squared norms, or the cosine's
//             inverse norms, computed once per row instead of once per pair).
//   backward  the weights w[q,n] (d loss / d <x_q, y_n>) and the row / column terms of the
//             metric, computed once, vectorised along n; then
//               grad_x = a ⊙ x + W y    tiles of 4 queries × 3 vectors of channels, over n
//               grad_y = b ⊙ y + Wᵀ x   tiles of 4 prototypes × 3 vectors of channels, over
//                                       blocks of queries (split over the threads when the
//                                       episodes are fewer than the threads; partial sums added)
#include "ops/distance/distance.h"

#include <vector>

#include "common/simd.h"
#include "ops/distance/distance_cpu.h"

namespace medmeta {

namespace {

constexpr int64_t kPanelMinN = 8;   // prototypes from which the matrix-product kernels run
constexpr int kPanelVecs = 3;       // prototype vectors per forward panel (24 float / 12 double)
constexpr int64_t kQueryBlock = 24; // queries per forward task: a multiple of every RQ below
constexpr int64_t kDepthBlock = 64; // channels per forward block (its slice of yt stays in L1)
constexpr int64_t kGradRows = 32;   // queries per grad_x task
constexpr int64_t kGradYBlock = 128; // queries per grad_y block (its rows stay in L2)

// Queries per forward register tile for NV prototype vectors: RQ·NV ≤ 12 accumulators, and
// NV + 1 more registers for the loaded prototype vectors and the broadcast query entry.
template <int NV> constexpr int kTileRows = NV == 1 ? 8 : NV == 2 ? 6 : 4;

// ---------------------------------------------------------------- forward

// The per-prototype factor of the metric from a squared norm (the cosine's inverse norm,
// else the squared norm itself); per-query factors are the same function of the query's.
template <typename T> MEDMETA_INLINE T norm_factor(Metric m, T sq) {
  return m == Metric::Cosine ? T(1) / clamp_norm(sq) : sq;
}

// out[k] = distance from dots[k] for k < cnt, rf: the query's factor, cf: the prototypes'.
template <typename T>
MEDMETA_INLINE void finish_row(Metric m, const T* __restrict dots, T rf, const T* __restrict cf, int64_t cnt,
                               T* __restrict out) {
  switch (m) {
    case Metric::SqEuclidean:
      MEDMETA_SIMD
      for (int64_t k = 0; k < cnt; ++k) {
        const T d = rf + cf[k] - T(2) * dots[k];
        out[k] = d > T(0) ? d : T(0);
      }
      break;
    case Metric::Euclidean:
      for (int64_t k = 0; k < cnt; ++k) {
        const T d = rf + cf[k] - T(2) * dots[k];
        out[k] = d > T(0) ? m_sqrt(d) : T(0);
      }
      break;
    case Metric::Cosine:
      MEDMETA_SIMD
      for (int64_t k = 0; k < cnt; ++k) out[k] = T(1) - dots[k] * rf * cf[k];
      break;
    case Metric::Dot:
      MEDMETA_SIMD
      for (int64_t k = 0; k < cnt; ++k) out[k] = -dots[k];
      break;
  }
}

// dots[i][k] += <x_i[0:depth], yt[0:depth, k]> for i < RQ, k < NV·W: x rows of stride D, yt
// rows of stride Np; dots rows of NV·W.
template <int RQ, int NV, typename T>
MEDMETA_INLINE void panel_tile(const T* __restrict x, int64_t D, const T* __restrict yt, int64_t Np,
                               int64_t depth, T* __restrict dots) {
  constexpr int W = kLanes<T>;
  Vec<T> acc[RQ][NV];
  MEDMETA_UNROLL
  for (int i = 0; i < RQ; ++i) {
    MEDMETA_UNROLL
    for (int j = 0; j < NV; ++j) acc[i][j] = MEDMETA_VLOAD(T, dots + (i * NV + j) * W);
  }
  for (int64_t d = 0; d < depth; ++d) {
    Vec<T> yv[NV];
    MEDMETA_UNROLL
    for (int j = 0; j < NV; ++j) yv[j] = MEDMETA_VLOAD(T, yt + d * Np + j * W);
    MEDMETA_UNROLL
    for (int i = 0; i < RQ; ++i) {
      const T xi = x[i * D + d];
      MEDMETA_UNROLL
      for (int j = 0; j < NV; ++j) acc[i][j] += yv[j] * xi;
    }
  }
  MEDMETA_UNROLL
  for (int i = 0; i < RQ; ++i) {
    MEDMETA_UNROLL
    for (int j = 0; j < NV; ++j) MEDMETA_VSTORE(T, dots + (i * NV + j) * W, acc[i][j]);
  }
}

// Distances of `rows` queries x [rows, D] to the prototypes [n0, n0 + NV·W) ∩ [0, N) of the
// panel: out rows of stride N. dots: scratch of rows × NV·W.
template <int NV, typename T>
MEDMETA_INLINE void panel_rows(const T* x, int64_t rows, int64_t D, const T* yt, int64_t Np, const T* rf,
                               const T* cf, int64_t n0, int64_t N, Metric m, T* dots, T* out) {
  constexpr int RQ = kTileRows<NV>;
  constexpr int64_t width = NV * kLanes<T>;
  std::fill(dots, dots + rows * width, T(0));
  for (int64_t d0 = 0; d0 < D; d0 += kDepthBlock) {
    const int64_t depth = std::min(kDepthBlock, D - d0);
    const T* ytd = yt + d0 * Np + n0;
    int64_t i = 0;
    for (; i + RQ <= rows; i += RQ) panel_tile<RQ, NV>(x + i * D + d0, D, ytd, Np, depth, dots + i * width);
    for (; i < rows; ++i) panel_tile<1, NV>(x + i * D + d0, D, ytd, Np, depth, dots + i * width);
  }
  const int64_t cnt = std::min(width, N - n0);
  for (int64_t i = 0; i < rows; ++i) finish_row(m, dots + i * width, rf[i], cf + n0, cnt, out + i * N + n0);
}

// One episode's prototypes y [N, D] -> yt [D, Np] (zero-padded) and their factors cf [Np].
template <typename T>
MEDMETA_INLINE void pack_prototypes(const T* y, int64_t N, int64_t D, int64_t Np, Metric m, T* yt, T* cf) {
  std::fill(yt, yt + D * Np, T(0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) yt[d * Np + n] = y[n * D + d];
  for (int64_t n = 0; n < Np; ++n) cf[n] = n < N ? norm_factor(m, dot_row(y + n * D, y + n * D, D)) : T(0);
}

// Tasks t = (episode, block of kQueryBlock queries); the packed prototypes of an episode are
// reused by the thread's following blocks of the same episode.
template <typename T>
MEDMETA_CPU_CLONES void panel_forward_tasks(const T* x, const T* y, T* out, int64_t Q, int64_t N, int64_t D,
                                            Metric m, int64_t t0, int64_t t1) {
  constexpr int W = kLanes<T>;
  const int64_t Np = (N + W - 1) / W * W;
  const int64_t blocks = (Q + kQueryBlock - 1) / kQueryBlock;
  std::vector<T> yt(D * Np), cf(Np), rf(kQueryBlock), dots(kQueryBlock * kPanelVecs * W);
  int64_t episode = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / blocks, q0 = (t % blocks) * kQueryBlock, rows = std::min(kQueryBlock, Q - q0);
    if (b != episode) pack_prototypes(y + b * N * D, N, D, Np, m, yt.data(), cf.data());
    episode = b;
    const T* xb = x + (b * Q + q0) * D;
    for (int64_t i = 0; i < rows; ++i) rf[i] = norm_factor(m, dot_row(xb + i * D, xb + i * D, D));
    T* ob = out + (b * Q + q0) * N;
    for (int64_t n0 = 0; n0 < Np; n0 += kPanelVecs * W) {
      const T *ytp = yt.data(), *rfp = rf.data(), *cfp = cf.data();
      T* dp = dots.data();
      switch (std::min<int64_t>(kPanelVecs, (Np - n0) / W)) {
        case 3: panel_rows<3>(xb, rows, D, ytp, Np, rfp, cfp, n0, N, m, dp, ob); break;
        case 2: panel_rows<2>(xb, rows, D, ytp, Np, rfp, cfp, n0, N, m, dp, ob); break;
        default: panel_rows<1>(xb, rows, D, ytp, Np, rfp, cfp, n0, N, m, dp, ob); break;
      }
    }
  }
}

template <typename T>
void panel_forward(const T* x, const T* y, T* out, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m) {
  const int64_t tasks = B * ((Q + kQueryBlock - 1) / kQueryBlock);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(kQueryBlock * N * D, 1));
  parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) { panel_forward_tasks(x, y, out, Q, N, D, m, t0, t1); });
}

// ---------------------------------------------------------------- backward

// The metric's gradient as weights: d loss / d x_q = a[q] x_q + sum_n w[q,n] y_n and
// d loss / d y_n = b[n] y_n + sum_q w[q,n] x_q (distance_grad of common/math.h), with
//   cosine       w = -g / (|x| |y|)   a = ia(x) sum_n g (1 - d)   b = ia(y) sum_q g (1 - d)
//                (ia(v) = 1 / |v|² above the norm floor, else 0: a floored norm is a constant)
//   (sq)euclid.  w = -s               a = sum_n s                 b = sum_q s
//                (s = 2 g for sqeuclidean, g / d for euclidean; 0 where d = 0, the clamp)
//   dot          w = -g               a = b = 0
// Per-prototype factors of one episode: rn[n] = 1 / clamp_norm(|y_n|²), ia[n] = ia(y_n).
template <typename T> struct ProtoFactors {
  std::vector<T> rn, ia;
  int64_t episode = -1;
  explicit ProtoFactors(int64_t N) : rn(N), ia(N) {}
  MEDMETA_INLINE void of(const T* y, int64_t b, int64_t N, int64_t D, Metric m) {
    if (m != Metric::Cosine || b == episode) return;
    for (int64_t n = 0; n < N; ++n) {
      const T* yn = y + (b * N + n) * D;
      const T sq = dot_row(yn, yn, D);
      rn[n] = T(1) / clamp_norm(sq);
      ia[n] = m_sqrt(sq) > T(kCosineEps) ? T(1) / sq : T(0);
    }
    episode = b;
  }
};

// One query row: w [N] and the terms s[n] whose sum over n (times the query's ia for the
// cosine) is a, and whose sum over q (times the prototype's ia) is b. Returns a.
template <typename T>
MEDMETA_INLINE T weights_row(Metric m, const T* __restrict g, const T* __restrict d, const T* __restrict x, int64_t D,
                             const ProtoFactors<T>& pf, int64_t N, T* __restrict w, T* __restrict s) {
  T sum = 0;
  switch (m) {
    case Metric::Cosine: {
      const T sq = dot_row(x, x, D);
      const T rn = T(1) / clamp_norm(sq), ia = m_sqrt(sq) > T(kCosineEps) ? T(1) / sq : T(0);
      const T* prn = pf.rn.data();
      MEDMETA_SIMD_REDUCE(sum)
      for (int64_t n = 0; n < N; ++n) {
        const T t = g[n] * (T(1) - d[n]);
        w[n] = -g[n] * rn * prn[n];
        s[n] = t;
        sum += t;
      }
      return sum * ia;
    }
    case Metric::SqEuclidean:
      MEDMETA_SIMD_REDUCE(sum)
      for (int64_t n = 0; n < N; ++n) {
        const T t = d[n] > T(0) ? T(2) * g[n] : T(0);
        w[n] = -t;
        s[n] = t;
        sum += t;
      }
      return sum;
    case Metric::Euclidean:
      for (int64_t n = 0; n < N; ++n) {
        const T t = d[n] > T(0) ? g[n] / d[n] : T(0);
        w[n] = -t;
        s[n] = t;
        sum += t;
      }
      return sum;
    case Metric::Dot:
      for (int64_t n = 0; n < N; ++n) w[n] = -g[n], s[n] = T(0);
      return T(0);
  }
  return T(0);
}

// out[i*D + p] = a[i] x[i*D + p] + sum_{n<N} w[i*N + n] y[n*D + p] for i < RT, p < D:
// RT × 3 vectors of accumulators, each loaded vector of y used RT times.
template <int RT, typename T>
MEDMETA_INLINE void grad_x_tile(const T* __restrict a, const T* __restrict x, const T* __restrict w, int64_t N,
                                const T* __restrict y, int64_t D, T* __restrict out) {
  constexpr int W = kLanes<T>;
  int64_t p = 0;
  for (; p + 3 * W <= D; p += 3 * W) {
    Vec<T> acc0[RT], acc1[RT], acc2[RT];
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) {
      const T* xi = x + i * D + p;
      acc0[i] = MEDMETA_VLOAD(T, xi) * a[i];
      acc1[i] = MEDMETA_VLOAD(T, xi + W) * a[i];
      acc2[i] = MEDMETA_VLOAD(T, xi + 2 * W) * a[i];
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* yn = y + n * D + p;
      const Vec<T> y0 = MEDMETA_VLOAD(T, yn), y1 = MEDMETA_VLOAD(T, yn + W), y2 = MEDMETA_VLOAD(T, yn + 2 * W);
      MEDMETA_UNROLL
      for (int i = 0; i < RT; ++i) {
        const T wi = w[i * N + n];
        acc0[i] += y0 * wi;
        acc1[i] += y1 * wi;
        acc2[i] += y2 * wi;
      }
    }
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) {
      T* o = out + i * D + p;
      MEDMETA_VSTORE(T, o, acc0[i]);
      MEDMETA_VSTORE(T, o + W, acc1[i]);
      MEDMETA_VSTORE(T, o + 2 * W, acc2[i]);
    }
  }
  for (; p + W <= D; p += W) {
    Vec<T> acc[RT];
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) acc[i] = MEDMETA_VLOAD(T, x + i * D + p) * a[i];
    for (int64_t n = 0; n < N; ++n) {
      const Vec<T> y0 = MEDMETA_VLOAD(T, y + n * D + p);
      MEDMETA_UNROLL
      for (int i = 0; i < RT; ++i) acc[i] += y0 * w[i * N + n];
    }
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) MEDMETA_VSTORE(T, out + i * D + p, acc[i]);
  }
  for (; p < D; ++p) {
    MEDMETA_UNROLL
    for (int i = 0; i < RT; ++i) {
      T v = a[i] * x[i * D + p];
      for (int64_t n = 0; n < N; ++n) v += w[i * N + n] * y[n * D + p];
      out[i * D + p] = v;
    }
  }
}

// out[i*D + p] += sum_{q<rows} w[q*N + i] x[q*D + p] for i < CT, p < D: CT × 3 vectors of
// accumulators, each loaded vector of x used CT times.
template <int CT, typename T>
MEDMETA_INLINE void grad_y_tile(const T* __restrict w, int64_t N, const T* __restrict x, int64_t D, int64_t rows,
                                T* __restrict out) {
  constexpr int W = kLanes<T>;
  int64_t p = 0;
  for (; p + 3 * W <= D; p += 3 * W) {
    Vec<T> acc0[CT], acc1[CT], acc2[CT];
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) {
      const T* o = out + i * D + p;
      acc0[i] = MEDMETA_VLOAD(T, o);
      acc1[i] = MEDMETA_VLOAD(T, o + W);
      acc2[i] = MEDMETA_VLOAD(T, o + 2 * W);
    }
    for (int64_t q = 0; q < rows; ++q) {
      const T* xq = x + q * D + p;
      const Vec<T> x0 = MEDMETA_VLOAD(T, xq), x1 = MEDMETA_VLOAD(T, xq + W), x2 = MEDMETA_VLOAD(T, xq + 2 * W);
      MEDMETA_UNROLL
      for (int i = 0; i < CT; ++i) {
        const T wi = w[q * N + i];
        acc0[i] += x0 * wi;
        acc1[i] += x1 * wi;
        acc2[i] += x2 * wi;
      }
    }
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) {
      T* o = out + i * D + p;
      MEDMETA_VSTORE(T, o, acc0[i]);
      MEDMETA_VSTORE(T, o + W, acc1[i]);
      MEDMETA_VSTORE(T, o + 2 * W, acc2[i]);
    }
  }
  for (; p + W <= D; p += W) {
    Vec<T> acc[CT];
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) acc[i] = MEDMETA_VLOAD(T, out + i * D + p);
    for (int64_t q = 0; q < rows; ++q) {
      const Vec<T> x0 = MEDMETA_VLOAD(T, x + q * D + p);
      MEDMETA_UNROLL
      for (int i = 0; i < CT; ++i) acc[i] += x0 * w[q * N + i];
    }
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) MEDMETA_VSTORE(T, out + i * D + p, acc[i]);
  }
  for (; p < D; ++p) {
    MEDMETA_UNROLL
    for (int i = 0; i < CT; ++i) {
      T v = out[i * D + p];
      for (int64_t q = 0; q < rows; ++q) v += w[q * N + i] * x[q * D + p];
      out[i * D + p] = v;
    }
  }
}

// Tasks t = (episode, block of kGradRows queries): the weights W [rows, N] of the block,
// each block's column sums of s into colsum [t, N], and grad_x of its rows (when wanted).
template <typename T>
MEDMETA_CPU_CLONES void weights_tasks(const T* g, const T* x, const T* y, const T* dist, T* W, T* colsum, T* gx,
                                      int64_t Q, int64_t N, int64_t D, Metric m, int64_t t0, int64_t t1) {
  const int64_t blocks = (Q + kGradRows - 1) / kGradRows;
  ProtoFactors<T> pf(N);
  std::vector<T> s(N), a(kGradRows);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / blocks, q0 = (t % blocks) * kGradRows, rows = std::min(kGradRows, Q - q0);
    pf.of(y, b, N, D, m);
    const int64_t r0 = b * Q + q0;
    T* cs = colsum + t * N;
    std::fill(cs, cs + N, T(0));
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = r0 + i;
      a[i] = weights_row(m, g + r * N, dist + r * N, x + r * D, D, pf, N, W + r * N, s.data());
      MEDMETA_SIMD
      for (int64_t n = 0; n < N; ++n) cs[n] += s[n];
    }
    if (gx == nullptr) continue;
    const T* yb = y + b * N * D;
    int64_t i = 0;
    for (; i + 4 <= rows; i += 4)
      grad_x_tile<4>(a.data() + i, x + (r0 + i) * D, W + (r0 + i) * N, N, yb, D, gx + (r0 + i) * D);
    for (; i < rows; ++i)
      grad_x_tile<1>(a.data() + i, x + (r0 + i) * D, W + (r0 + i) * N, N, yb, D, gx + (r0 + i) * D);
  }
}

// Tasks t = (episode, part of its queries): out [N, D] = (part 0 only: b ⊙ y) + sum over the
// part's queries of w[q,n] x_q; out is grad_y for part 0, a partial sum for the others.
template <typename T>
MEDMETA_CPU_CLONES void grad_y_tasks(const T* x, const T* y, const T* W, const T* colsum, T* gy, T* partial,
                                     int64_t Q, int64_t N, int64_t D, Metric m, int64_t parts, int64_t t0, int64_t t1) {
  const int64_t blocks = (Q + kGradRows - 1) / kGradRows;
  ProtoFactors<T> pf(N);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / parts, part = t % parts;
    const int64_t q0 = Q * part / parts, q1 = Q * (part + 1) / parts;
    T* out = part == 0 ? gy + b * N * D : partial + ((b * (parts - 1)) + part - 1) * N * D;
    if (part == 0) {
      pf.of(y, b, N, D, m);
      for (int64_t n = 0; n < N; ++n) {
        T sum = 0;
        for (int64_t k = 0; k < blocks; ++k) sum += colsum[(b * blocks + k) * N + n];
        const T bn = m == Metric::Cosine ? sum * pf.ia[n] : m == Metric::Dot ? T(0) : sum;
        scale_row(bn, y + (b * N + n) * D, out + n * D, D);
      }
    } else {
      std::fill(out, out + N * D, T(0));
    }
    for (int64_t qb = q0; qb < q1; qb += kGradYBlock) {
      const int64_t rows = std::min(kGradYBlock, q1 - qb);
      const T* wb = W + (b * Q + qb) * N;
      const T* xb = x + (b * Q + qb) * D;
      for (int64_t n0 = 0; n0 < N; n0 += 4) {
        switch (std::min<int64_t>(4, N - n0)) {
          case 4: grad_y_tile<4>(wb + n0, N, xb, D, rows, out + n0 * D); break;
          case 3: grad_y_tile<3>(wb + n0, N, xb, D, rows, out + n0 * D); break;
          case 2: grad_y_tile<2>(wb + n0, N, xb, D, rows, out + n0 * D); break;
          default: grad_y_tile<1>(wb + n0, N, xb, D, rows, out + n0 * D); break;
        }
      }
    }
  }
}

template <typename T>
void panel_backward(const T* g, const T* x, const T* y, const T* dist, T* gx, T* gy, int64_t B, int64_t Q,
                    int64_t N, int64_t D, Metric m) {
  const int64_t blocks = (Q + kGradRows - 1) / kGradRows;
  std::vector<T> W(B * Q * N), colsum(B * blocks * N);
  parallel_for(0, B * blocks, std::max<int64_t>(1, 32768 / std::max<int64_t>(kGradRows * N * D, 1)),
               [&](int64_t t0, int64_t t1) {
                 weights_tasks(g, x, y, dist, W.data(), colsum.data(), gx, Q, N, D, m, t0, t1);
               });
  if (gy == nullptr) return;
  // Fewer episodes than threads: each episode's queries split in parts summed at the end.
  const int64_t threads = parallel_threads();
  const int64_t parts =
      B < threads && Q * N * D >= 65536 ? std::min<int64_t>((threads + B - 1) / B, (Q + 63) / 64) : 1;
  std::vector<T> partial(B * (parts - 1) * N * D);
  parallel_for(0, B * parts, 1, [&](int64_t t0, int64_t t1) {
    grad_y_tasks(x, y, W.data(), colsum.data(), gy, partial.data(), Q, N, D, m, parts, t0, t1);
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 1; k < parts; ++k) {
      const T* src = partial.data() + (b * (parts - 1) + k - 1) * N * D;
      axpy_row(T(1), src, gy + b * N * D, N * D);
    }
}

// ---------------------------------------------------------------- dispatch

template <typename T>
void forward(const void* x, const void* y, void* out, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m) {
  const T* xs = static_cast<const T*>(x);
  const T* ys = static_cast<const T*>(y);
  if (N >= kPanelMinN && D > 0) return panel_forward(xs, ys, static_cast<T*>(out), B, Q, N, D, m);
  cpu::distances(xs, ys, static_cast<T*>(out), B, Q, N, D, m, [](int64_t, int64_t, int64_t) {});
}

template <typename T>
void backward(const void* g, const void* x, const void* y, const void* out, void* gx, void* gy, int64_t B,
              int64_t Q, int64_t N, int64_t D, Metric m) {
  const T* gt = static_cast<const T*>(g);
  if (N >= kPanelMinN)
    return panel_backward(gt, static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(out),
                          static_cast<T*>(gx), static_cast<T*>(gy), B, Q, N, D, m);
  cpu::distance_backward([gt, N](int64_t r, int64_t n) { return gt[r * N + n]; }, static_cast<const T*>(x),
                         static_cast<const T*>(y), static_cast<const T*>(out), static_cast<T*>(gx),
                         static_cast<T*>(gy), B, Q, N, D, m);
}

[[noreturn]] void bad_dtype(DType dt) {
  fail(std::string("pairwise_distance on CPU supports float32 and float64, got ") + dtype_name(dt));
}

}  // namespace

void distance_forward_cpu(DType dt, const void* x, const void* y, void* out, void* /*workspace*/, int64_t B,
                          int64_t Q, int64_t N, int64_t D, Metric metric) {
  if (B * Q * N == 0) return;
  switch (dt) {
    case DType::Float32: return forward<float>(x, y, out, B, Q, N, D, metric);
    case DType::Float64: return forward<double>(x, y, out, B, Q, N, D, metric);
    default: bad_dtype(dt);
  }
}

void distance_backward_cpu(DType dt, const void* grad_out, const void* x, const void* y, const void* out,
                           void* grad_x, void* grad_y, void* /*workspace*/, int64_t B, int64_t Q, int64_t N,
                           int64_t D, Metric metric) {
  if (B * D == 0) return;
  switch (dt) {
    case DType::Float32: return backward<float>(grad_out, x, y, out, grad_x, grad_y, B, Q, N, D, metric);
    case DType::Float64: return backward<double>(grad_out, x, y, out, grad_x, grad_y, B, Q, N, D, metric);
    default: bad_dtype(dt);
  }
}

}  // namespace medmeta
