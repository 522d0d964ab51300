// CPU kernels of the fused prototypical loss. Forward: each task computes the distances
// of a block of queries and, while they are in cache, their soft-max statistics and NLL;
// the episode means follow in a cheap pass over [B,Q] scalars. Backward: d loss / d dist
// is formed on the fly inside the gradient row kernels, so no [B,Q,N] gradient is stored.
#include "ops/protoloss/protoloss.h"

#include <limits>

#include "ops/distance/distance_cpu.h"

namespace medmeta {

namespace {

template <typename T>
void forward(const void* queries, const void* protos, const int64_t* targets, void* loss, void* acc, void* dist,
             void* lse, void* ws, int64_t B, int64_t Q, int64_t N, int64_t D, Metric m, double inv_temperature) {
  T* d = static_cast<T*>(dist);
  T* l = static_cast<T*>(lse);
  T* nll = static_cast<T*>(ws);  // [B*Q] per-query NLL, then [B*Q] correctness
  T* correct = nll + B * Q;
  const T inv_t = static_cast<T>(inv_temperature);
  cpu::distances(static_cast<const T*>(queries), static_cast<const T*>(protos), d, B, Q, N, D, m,
                 [=](int64_t b, int64_t q0, int64_t q1) {
                   for (int64_t r = b * Q + q0; r < b * Q + q1; ++r) {
                     const RowStats<T> s = row_stats(d + r * N, N, inv_t);
                     const int64_t t = targets[r];
                     const bool valid = t >= 0 && t < N;  // the Python layer reports bad targets
                     l[r] = s.lse;
                     nll[r] = valid ? s.lse + d[r * N + t] * inv_t : std::numeric_limits<T>::quiet_NaN();
                     correct[r] = valid && s.argmin == t ? T(1) : T(0);
                   }
                 });
  T* lo = static_cast<T*>(loss);
  T* ac = static_cast<T*>(acc);
  parallel_for(0, B, std::max<int64_t>(1, 65536 / std::max<int64_t>(Q, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T s = 0, c = 0;
      for (int64_t q = 0; q < Q; ++q) {
        s += nll[b * Q + q];
        c += correct[b * Q + q];
      }
      lo[b] = Q > 0 ? s / T(Q) : T(0);
      ac[b] = Q > 0 ? c / T(Q) : T(0);
    }
  });
}

template <typename T>
void backward(const void* grad_loss, const void* queries, const void* protos, const int64_t* targets,
              const void* dist, const void* lse, void* grad_q, void* grad_p, int64_t B, int64_t Q, int64_t N,
              int64_t D, Metric m, double inv_temperature) {
  const T* d = static_cast<const T*>(dist);
  const T* l = static_cast<const T*>(lse);
  const T* gl = static_cast<const T*>(grad_loss);
  const T inv_t = static_cast<T>(inv_temperature);
  const T per_query = inv_t / T(Q);
  // d loss_b / d dist[b,q,n] = -(softmax[q,n] - [n == target_q]) / T * grad_loss[b] / Q
  const auto grad_d = [=](int64_t r, int64_t n) {
    const T p = m_exp(-d[r * N + n] * inv_t - l[r]);
    return -per_query * gl[r / Q] * (p - (n == targets[r] ? T(1) : T(0)));
  };
  cpu::distance_backward(grad_d, static_cast<const T*>(queries), static_cast<const T*>(protos), d,
                         static_cast<T*>(grad_q), static_cast<T*>(grad_p), B, Q, N, D, m);
}

[[noreturn]] void bad_dtype(DType dt) {
  fail(std::string("prototypical_loss on CPU supports float32 and float64, got ") + dtype_name(dt));
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
    default: bad_dtype(dt);
  }
}

void protoloss_backward_cpu(DType dt, const void* grad_loss, const void* queries, const void* protos,
                            const int64_t* targets, const void* dist, const void* lse, void* grad_queries,
                            void* grad_protos, void* /*workspace*/, int64_t B, int64_t Q, int64_t N, int64_t D,
                            Metric metric, double inv_temperature) {
  if (B * D == 0) return;
  switch (dt) {
    case DType::Float32:
      return backward<float>(grad_loss, queries, protos, targets, dist, lse, grad_queries, grad_protos, B, Q, N, D,
                             metric, inv_temperature);
    case DType::Float64:
      return backward<double>(grad_loss, queries, protos, targets, dist, lse, grad_queries, grad_protos, B, Q, N,
                              D, metric, inv_temperature);
    default: bad_dtype(dt);
  }
}

}  // namespace medmeta
