// Math shared by the CPU and CUDA kernels (host and device): metric transforms,
// their derivatives and the soft-max statistics of the fused loss. Keeping it in
// one header means the CPU tests exercise the same formulas the GPU runs.
#pragma once

#include <math.h>

#include <cmath>

#include "common/types.h"

#if defined(__CUDACC__)
#define MEDMETA_HD __host__ __device__ __forceinline__
#else
#define MEDMETA_HD inline
#endif

namespace medmeta {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

// Precision-preserving math on host and device (unqualified exp/log on the host
// would promote float to double).
MEDMETA_HD float m_sqrt(float x) { return sqrtf(x); }
MEDMETA_HD double m_sqrt(double x) { return sqrt(x); }
MEDMETA_HD float m_exp(float x) { return expf(x); }
MEDMETA_HD double m_exp(double x) { return exp(x); }
MEDMETA_HD float m_log(float x) { return logf(x); }
MEDMETA_HD double m_log(double x) { return log(x); }

// Norm floor of the cosine metric, as in torch.nn.functional.cosine_similarity.
constexpr double kCosineEps = 1e-8;

template <typename A> MEDMETA_HD A clamp_norm(A sq_norm) {
  const A n = m_sqrt(sq_norm);
  return n > A(kCosineEps) ? n : A(kCosineEps);
}

// Distance (smaller is closer) from an inner product and the two squared norms.
// dot is returned as the negative inner product so that logits = -distance for all metrics.
template <typename A> MEDMETA_HD A distance_from_dot(Metric m, A dot, A xx, A yy) {
  switch (m) {
    case Metric::SqEuclidean: {
      const A d = xx + yy - A(2) * dot;
      return d > A(0) ? d : A(0);
    }
    case Metric::Euclidean: {
      const A d = xx + yy - A(2) * dot;
      return d > A(0) ? m_sqrt(d) : A(0);
    }
    case Metric::Cosine: return A(1) - dot / (clamp_norm(xx) * clamp_norm(yy));
    case Metric::Dot: return -dot;
  }
  return A(0);
}

// d(distance)/dx = ax * x + w * y and d(distance)/dy = by * y + w * x, scaled by the
// upstream gradient g, so both input gradients reduce to sums of rows weighted by w.
template <typename A> struct DistanceGrad {
  A w, ax, by;
};

template <typename A> MEDMETA_HD bool metric_needs_norms(Metric m) {
  return m != Metric::Dot;
}

template <typename A> MEDMETA_HD DistanceGrad<A> distance_grad(Metric m, A g, A d, A xx, A yy) {
  DistanceGrad<A> r{A(0), A(0), A(0)};
  switch (m) {
    case Metric::SqEuclidean:
    case Metric::Euclidean: {
      // The clamp at zero (x == y up to rounding) has zero gradient, as clamp_min's.
      A gs = A(0);
      if (d > A(0)) gs = m == Metric::SqEuclidean ? g : g / (A(2) * d);
      r.w = A(-2) * gs;
      r.ax = A(2) * gs;
      r.by = A(2) * gs;
      break;
    }
    case Metric::Cosine: {
      const A nx = clamp_norm(xx), ny = clamp_norm(yy);
      const A cos = A(1) - d;
      r.w = -g / (nx * ny);
      // Below the norm floor the norm is a constant and contributes no gradient.
      r.ax = m_sqrt(xx) > A(kCosineEps) ? g * cos / xx : A(0);
      r.by = m_sqrt(yy) > A(kCosineEps) ? g * cos / yy : A(0);
      break;
    }
    case Metric::Dot: r.w = -g; break;
  }
  return r;
}

// Soft-max statistics of one query row with logits = -d * inv_temperature.
template <typename A> struct RowStats {
  A lse;        // log-sum-exp of the logits
  int64_t argmin;  // predicted class: the smallest distance, first on ties (torch.argmax)
};

template <typename A>
MEDMETA_HD RowStats<A> row_stats(const A* d, int64_t n, A inv_temperature) {
  A best = d[0];
  int64_t arg = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (d[i] < best) {
      best = d[i];
      arg = i;
    }
  }
  const A max_logit = -best * inv_temperature;
  A sum = A(0);
  for (int64_t i = 0; i < n; ++i) sum += m_exp(-d[i] * inv_temperature - max_logit);
  return {max_logit + m_log(sum), arg};
}

}  // namespace medmeta
