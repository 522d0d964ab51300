// Tiled pairwise building blocks of the distance family, shared by pairwise_distance
// (ops/distance) and the fused prototypical loss (ops/protoloss): one forward pass over a
// query tile, one backward kernel over a coefficient functor. CUDA counterpart of
// distance_cpu.h; raw pointers, sizes and the caller's stream, no torch headers.
#pragma once

#include "common/cuda.cuh"

namespace medmeta {
namespace cuda {

// Pairwise (distance family) building blocks. Episode b holds x [Q,D] (queries) and
// y [N,D] (prototypes / support rows); everything is contiguous.
namespace pairwise {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 128;  // D-columns of y staged in shared memory per step (4 per lane)

// Query rows per warp for NT classes per pass: R * NT accumulators per lane, kept at
// <= 64 registers (32 for double) so the forward kernels stay spill-free at 2+ blocks/SM.
template <int NT, typename A> struct ForwardShape {
  static constexpr int R = (sizeof(A) == 8 ? 1 : 2) * (NT >= 32 ? 1 : 2);
  static constexpr int kRowsPerBlock = kWarps * R;
};

// Classes per pass chosen from N: 8, 16 or 32 (larger N runs several passes).
inline int classes_per_pass(int64_t N) { return N <= 8 ? 8 : (N <= 16 ? 16 : 32); }

// One pass of the forward distance tile. The block's warp `w` owns query rows
// [q_first, q_first + R) of the episode and the block owns classes [n0, n0 + NT).
// Lanes stride D (coalesced reads); y is staged through shared memory `ys` [NT][kChunk]
// and reused by the R rows of every warp. On return, lane l holds in dot[r] the inner
// product of row q_first + r with class n0 + l % NT, in xx[r] the squared norm of that row
// and in yy the squared norm of class n0 + l % NT. Every thread of the block must call it.
template <int NT, int R, typename T>
__device__ __forceinline__ void forward_pass(const T* __restrict__ xb, const T* __restrict__ yb, int q_first, int Q,
                                             int n0, int N, int64_t D, acc_t<T>* ys, acc_t<T>* yy_s,
                                             acc_t<T> (&dot)[R], acc_t<T> (&xx)[R], acc_t<T>& yy) {
  using A = acc_t<T>;
  constexpr int KC = kChunk / 32;   // columns per lane per chunk
  constexpr int YR = NT / kWarps;   // y rows each warp stages
  static_assert(NT % kWarps == 0, "NT must be a multiple of the warp count");
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool active = q_first < Q;  // warp-uniform: a warp past the last query only helps staging
  const int n_valid = N - n0;       // classes of this pass that exist (may exceed NT)

  A acc[R][NT];
  A xsq[R];
  A ysq[YR];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    xsq[r] = A(0);
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[r][n] = A(0);
  }
#pragma unroll
  for (int i = 0; i < YR; ++i) ysq[i] = A(0);

  for (int64_t c0 = 0; c0 < D; c0 += kChunk) {
    // This warp's query values for the chunk, issued before the barrier so that their
    // latency overlaps the staging of y.
    A xv[KC][R];
#pragma unroll
    for (int k = 0; k < KC; ++k) {
      const int64_t d = c0 + lane + 32 * k;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int q = q_first + r;
        xv[k][r] = (q < Q && d < D) ? to_acc(xb[static_cast<int64_t>(q) * D + d]) : A(0);
      }
    }
#pragma unroll
    for (int i = 0; i < YR; ++i) {
      const int n = warp + kWarps * i;
      const bool ok = n < n_valid;
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        const int64_t d = c0 + lane + 32 * k;
        const A v = (ok && d < D) ? to_acc(yb[static_cast<int64_t>(n0 + n) * D + d]) : A(0);
        ys[n * kChunk + lane + 32 * k] = v;
        ysq[i] += v * v;
      }
    }
    __syncthreads();
    if (active) {
#pragma unroll
      for (int k = 0; k < KC; ++k) {
        if (c0 + 32 * k < D) {  // uniform: skips the padding of the last chunk
#pragma unroll
          for (int r = 0; r < R; ++r) xsq[r] += xv[k][r] * xv[k][r];
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            if (n < n_valid) {  // uniform: skips classes past N
              const A p = ys[n * kChunk + lane + 32 * k];
#pragma unroll
              for (int r = 0; r < R; ++r) acc[r][n] += xv[k][r] * p;
            }
          }
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    dot[r] = warp_transpose_sum<NT>(acc[r], lane);
    xx[r] = warp_sum(xsq[r]);
  }
#pragma unroll
  for (int i = 0; i < YR; ++i) {
    const A s = warp_sum(ysq[i]);
    if (lane == 0) yy_s[warp + kWarps * i] = s;
  }
  __syncthreads();
  yy = yy_s[lane % NT];
  __syncthreads();  // yy_s is rewritten by the next pass (no chunk barrier in between when D == 0)
}

// Squared norms of rows_x rows of x then rows_y rows of y (each of length D) into
// out [rows_x + rows_y]: one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sq_norms_kernel(const T* __restrict__ x, int64_t rows_x, const T* __restrict__ y, int64_t rows_y, int64_t D,
                    acc_t<T>* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows_x + rows_y) return;  // warp-uniform
  const T* src = row < rows_x ? x + row * D : y + (row - rows_x) * D;
  A s0 = A(0), s1 = A(0);
  int64_t d = lane;
  for (; d + 32 < D; d += 64) {
    const A a = to_acc(src[d]), b = to_acc(src[d + 32]);
    s0 += a * a;
    s1 += b * b;
  }
  if (d < D) {
    const A a = to_acc(src[d]);
    s0 += a * a;
  }
  const A s = warp_sum(s0 + s1);
  if (lane == 0) out[row] = s;
}

template <typename T>
void launch_sq_norms(const T* x, int64_t rows_x, const T* y, int64_t rows_y, int64_t D, acc_t<T>* out,
                     cudaStream_t stream) {
  const int64_t rows = rows_x + rows_y;
  if (rows == 0) return;
  sq_norms_kernel<T><<<grid_1d(ceil_div(rows, kWarps), "sq_norms_kernel"), kThreads, 0, stream>>>(x, rows_x, y, rows_y,
                                                                                                   D, out);
  check_launch("sq_norms_kernel");
}

// ---- Backward: grad_x = diag(ax) x + W y and grad_y = diag(by) y + W^T x, where
// coef.episode(b) binds the per-episode state once per block and its call operator (q, n)
// returns DistanceGrad {w, ax, by} for one (query, class) pair (math.h).
// A block owns one output tile: kBwdRows rows of grad_x (or grad_y) of episode b and
// kBwdCols columns. It streams the reduction index j (classes for grad_x, queries for
// grad_y) in chunks of kBwdJ: coefficients are computed into shared memory (their
// diagonal sums on the way), the matching rows of the other operand are staged, and
// each warp accumulates a 4 x 4 register tile (4 rows x 4 columns per lane).
constexpr int kBwdRowsPerWarp = 4;
constexpr int kBwdRows = kWarps * kBwdRowsPerWarp;  // 32
constexpr int kBwdColsPerLane = 4;
constexpr int kBwdCols = 32 * kBwdColsPerLane;  // 128
constexpr int kBwdJ = 32;
static_assert(kBwdRows == 32, "coefficient staging maps lanes to the rows of a tile");
static_assert(kBwdJ % kWarps == 0, "coefficient staging maps warps to the reduction chunk");

__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}

template <typename T, typename Coef>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(Coef coef, const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ gx,
                    T* __restrict__ gy, int Q, int N, int64_t D, int tiles_x, int tiles_y, int dtiles) {
  using A = acc_t<T>;
  __shared__ __align__(16) A cs[kBwdJ][kBwdRows];  // coefficients w of the chunk, [j][row]
  __shared__ __align__(16) A os[kBwdJ][kBwdCols];  // rows j of the other operand, this column tile
  __shared__ A diag_s[kWarps][32];                  // per-warp partial diagonal sums, [warp][row]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t id = blockIdx.x;
  const int dt = static_cast<int>(id % dtiles);
  id /= dtiles;
  const int per_b = tiles_x + tiles_y;
  const int t = static_cast<int>(id % per_b);
  const int64_t b = id / per_b;
  const bool role_y = t >= tiles_x;  // block-uniform: computing grad_y (rows = classes)
  const int row0 = (role_y ? t - tiles_x : t) * kBwdRows;
  const int rows = role_y ? N : Q;
  const int J = role_y ? Q : N;
  const int64_t col0 = static_cast<int64_t>(dt) * kBwdCols;
  const T* self = role_y ? y + b * N * D : x + b * Q * D;
  const T* other = role_y ? x + b * Q * D : y + b * N * D;
  T* out = role_y ? gy + b * N * D : gx + b * Q * D;

  const auto ecoef = coef.episode(b);
  const int my_row0 = row0 + warp * kBwdRowsPerWarp;
  const bool active = my_row0 < rows;  // warp-uniform

  A acc[kBwdRowsPerWarp][kBwdColsPerLane];
#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kBwdColsPerLane; ++c) acc[r][c] = A(0);
  A diag_part = A(0);  // for row row0 + lane, over j = warp (mod kWarps)

  for (int j0 = 0; j0 < J; j0 += kBwdJ) {
    // Coefficients: lane -> row, warp -> j (mod kWarps); out-of-range pairs contribute 0.
    {
      const int i = row0 + lane;
#pragma unroll
      for (int k = 0; k < kBwdJ / kWarps; ++k) {
        const int jj = warp + kWarps * k, j = j0 + jj;
        A w = A(0);
        if (i < rows && j < J) {
          const DistanceGrad<A> g = role_y ? ecoef(j, i) : ecoef(i, j);
          w = g.w;
          diag_part += role_y ? g.by : g.ax;
        }
        cs[jj][lane] = w;
      }
    }
    // Other operand: warp -> j (mod kWarps), lanes along the columns (coalesced).
#pragma unroll
    for (int k = 0; k < kBwdJ / kWarps; ++k) {
      const int jj = warp + kWarps * k, j = j0 + jj;
#pragma unroll
      for (int c = 0; c < kBwdColsPerLane; ++c) {
        const int64_t d = col0 + lane + 32 * c;
        os[jj][lane + 32 * c] = (j < J && d < D) ? to_acc(other[static_cast<int64_t>(j) * D + d]) : A(0);
      }
    }
    __syncthreads();
    if (active) {
      const int jn = min(kBwdJ, J - j0);
#pragma unroll 4
      for (int jj = 0; jj < jn; ++jj) {
        A o[kBwdColsPerLane], w[kBwdRowsPerWarp];
#pragma unroll
        for (int c = 0; c < kBwdColsPerLane; ++c) o[c] = os[jj][lane + 32 * c];
        load4(&cs[jj][warp * kBwdRowsPerWarp], w);  // same address for the warp: a broadcast
#pragma unroll
        for (int r = 0; r < kBwdRowsPerWarp; ++r)
#pragma unroll
          for (int c = 0; c < kBwdColsPerLane; ++c) acc[r][c] += w[r] * o[c];
      }
    }
    __syncthreads();
  }

  diag_s[warp][lane] = diag_part;
  __syncthreads();
  if (!active) return;  // no barrier follows
#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r) {
    const int i = my_row0 + r;
    if (i >= rows) continue;
    A a = A(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) a += diag_s[w][warp * kBwdRowsPerWarp + r];
#pragma unroll
    for (int c = 0; c < kBwdColsPerLane; ++c) {
      const int64_t d = col0 + lane + 32 * c;
      if (d < D) {
        const int64_t e = static_cast<int64_t>(i) * D + d;
        out[e] = from_acc<T>(acc[r][c] + a * to_acc(self[e]));
      }
    }
  }
}

// Launches backward_kernel over every episode; gx / gy may be null (not computed).
template <typename T, typename Coef>
void launch_backward(const Coef& coef, const T* x, const T* y, T* gx, T* gy, int64_t B, int Q, int N, int64_t D,
                     cudaStream_t stream, const char* name) {
  const int tiles_x = gx != nullptr ? static_cast<int>(ceil_div(Q, kBwdRows)) : 0;
  const int tiles_y = gy != nullptr ? static_cast<int>(ceil_div(N, kBwdRows)) : 0;
  if (B == 0 || D == 0 || tiles_x + tiles_y == 0) return;
  const int64_t dtiles = ceil_div(D, kBwdCols);
  MEDMETA_CHECK(dtiles <= INT_MAX, std::string("feature size too large for ") + name);
  const unsigned grid = grid_1d(B * (tiles_x + tiles_y) * dtiles, name);
  backward_kernel<T, Coef><<<grid, kThreads, 0, stream>>>(coef, x, y, gx, gy, Q, N, D, tiles_x, tiles_y,
                                                          static_cast<int>(dtiles));
  check_launch(name);
}

}  // namespace pairwise

}  // namespace cuda
}  // namespace medmeta
