// CPU kernels of the fused prototypical loss: distances for a block of queries go
// straight into the soft-max statistics; backward turns them into the distance
// gradient in one pass and reuses the distance family's row kernels.
#include "ops/protoloss/protoloss.h"

#include <limits>

#include "ops/distance/distance_cpu.h"

namespace medmeta {

namespace {

// Per episode: loss = mean_q(lse + d[target] / T), accuracy = mean_q(argmin == target).
template <typename T>
void reduce_episodes(const T* dist, const T* lse, const int64_t* targets, T* loss, T* acc, int64_t B, int64_t Q,
                     int64_t N, T inv_t) {
  parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(Q * N, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T nll = 0, correct = 0;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t r = b * Q + q, t = targets[r];
        if (t < 0 || t >= N) {
          nll = std::numeric_limits<T>::quiet_NaN();
          continue;
        }
        const T* d = dist + r * N;
        nll += lse[r] + d[t] * inv_t;
        correct += row_stats(d, N, inv_t).argmin == t ? T(1) : T(0);
      }
      loss[b] = Q > 0 ? nll / T(Q) : T(0);
      acc[b] = Q > 0 ? correct / T(Q) : T(0);
    }
  });
}

template <typename T>
void forward(const void* queries, const void* protos, const int64_t* targets, void* loss, void* acc, void* dist,
             void* lse, void* ws, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m, double inv_temperature) {
  T* xx = static_cast<T*>(ws);
  T* d = static_cast<T*>(dist);
  T* l = static_cast<T*>(lse);
  const T inv_t = static_cast<T>(inv_temperature);
  cpu::distances(static_cast<const T*>(queries), static_cast<const T*>(protos), d, xx, xx + B * Q, B, Q, N, D, m);
  parallel_for(0, B * Q, std::max<int64_t>(1, 4096 / N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) l[r] = row_stats(d + r * N, N, inv_t).lse;
  });
  reduce_episodes(d, l, targets, static_cast<T*>(loss), static_cast<T*>(acc), B, Q, N, inv_t);
}

template <typename T>
void backward(const void* grad_loss, const void* queries, const void* protos, const int64_t* targets,
              const void* dist, const void* lse, void* grad_q, void* grad_p, void* ws, int64_t B, int64_t Q,
              int64_t N, int64_t D, Metric m, double inv_temperature) {
  T* xx = static_cast<T*>(ws);
  T* yy = xx + B * Q;
  T* gd = yy + B * N;
  const T* x = static_cast<const T*>(queries);
  const T* y = static_cast<const T*>(protos);
  const T* d = static_cast<const T*>(dist);
  const T* l = static_cast<const T*>(lse);
  const T* gl = static_cast<const T*>(grad_loss);
  const T inv_t = static_cast<T>(inv_temperature);
  cpu::norms_or_zero(x, B * Q, D, m, xx);
  cpu::norms_or_zero(y, B * N, D, m, yy);
  // d loss_b / d dist[b,q,n] = -(softmax - onehot(target)) / T * grad_loss[b] / Q
  parallel_for(0, B * Q, std::max<int64_t>(1, 4096 / N), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = targets[r];
      const T scale = -inv_t * gl[r / Q] / T(Q);
      for (int64_t n = 0; n < N; ++n) {
        const T p = m_exp(-d[r * N + n] * inv_t - l[r]);
        gd[r * N + n] = scale * (p - (n == t ? T(1) : T(0)));
      }
    }
  });
  cpu::distance_backward_core(gd, x, y, d, xx, yy, static_cast<T*>(grad_q), static_cast<T*>(grad_p), B, Q, N, D,
                              m);
}

}  // namespace

void protoloss_forward_cpu(DType dt, const void* queries, const void* protos, const int64_t* targets, void* loss,
                           void* accuracy, void* dist, void* lse, void* workspace, int64_t B, int64_t Q, int64_t N,
                           int64_t D, Metric metric, double inv_temperature) {
  if (B == 0) return;
  MEDMETA_CHECK(N > 0, "prototypical_loss needs at least one class");
  switch (dt) {
    case DType::Float32:
      return forward<float>(queries, protos, targets, loss, accuracy, dist, lse, workspace, B, Q, N, D, metric,
                            inv_temperature);
    case DType::Float64:
      return forward<double>(queries, protos, targets, loss, accuracy, dist, lse, workspace, B, Q, N, D, metric,
                             inv_temperature);
    default: fail(std::string("prototypical_loss on CPU supports float32 and float64, got ") + dtype_name(dt));
  }
}

void protoloss_backward_cpu(DType dt, const void* grad_loss, const void* queries, const void* protos,
                            const int64_t* targets, const void* dist, const void* lse, void* grad_queries,
                            void* grad_protos, void* workspace, int64_t B, int64_t Q, int64_t N, int64_t D,
                            Metric metric, double inv_temperature) {
  if (B * D == 0) return;
  switch (dt) {
    case DType::Float32:
      return backward<float>(grad_loss, queries, protos, targets, dist, lse, grad_queries, grad_protos, workspace,
                             B, Q, N, D, metric, inv_temperature);
    case DType::Float64:
      return backward<double>(grad_loss, queries, protos, targets, dist, lse, grad_queries, grad_protos,
                              workspace, B, Q, N, D, metric, inv_temperature);
    default: fail(std::string("prototypical_loss on CPU supports float32 and float64, got ") + dtype_name(dt));
  }
}

}  // namespace medmeta
