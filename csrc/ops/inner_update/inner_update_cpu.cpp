// CPU kernels of the fused inner-loop update: all tensors of a parameter list are cut
// into work items of similar size and processed in one parallel region.
#include "ops/inner_update/inner_update.h"

#include <vector>

#include "common/cpu.h"
#include "common/math.h"
#include "common/stream_store.h"

namespace medmeta {

namespace {

constexpr int64_t kItem = 16384;  // elements per work item

// A work item of tensor k. Backward (column items): either elements [begin, end) (scalar
// rate) or learning-rate columns [begin, end) of the tensor viewed as
// [numel / lr_numel, lr_numel] (vector rate), so an item owns its rate gradients. Forward
// (row items): elements [begin, end) within one row of that view, so each item streams
// contiguous memory (column items touch every row at once: one memory stream per task).
struct Item {
  int64_t k, begin, end;
};

template <typename Tensor> std::vector<Item> column_items(const Tensor* ts, int64_t count) {
  std::vector<Item> items;
  for (int64_t k = 0; k < count; ++k) {
    const Tensor& t = ts[k];
    if (t.numel == 0) continue;
    const bool vec = t.lr != nullptr && t.lr_numel > 1;
    const int64_t extent = vec ? t.lr_numel : t.numel;
    const int64_t rows = vec ? t.numel / t.lr_numel : 1;
    const int64_t step = std::max<int64_t>(vec ? 64 : 1, kItem / rows);
    for (int64_t b = 0; b < extent; b += step) items.push_back({k, b, std::min(extent, b + step)});
  }
  return items;
}

std::vector<Item> row_items(const UpdateTensor* ts, int64_t count) {
  std::vector<Item> items;
  for (int64_t k = 0; k < count; ++k) {
    const UpdateTensor& t = ts[k];
    const int64_t row = t.lr != nullptr && t.lr_numel > 1 ? t.lr_numel : t.numel;
    for (int64_t r = 0; r < t.numel; r += row)
      for (int64_t b = r; b < r + row; b += kItem) items.push_back({k, b, std::min(r + row, b + kItem)});
  }
  return items;
}

template <typename T> T scalar_rate(const void* lr, double lr_scalar) {
  return lr != nullptr ? *static_cast<const T*>(lr) : static_cast<T>(lr_scalar);
}

// o[j] = p[j] - rate(j) * g[j] for j in [begin, end); rate(j) = a[j - row0] for a vector rate
// (row0: the start of j's row), else the scalar a0.
template <typename T>
MEDMETA_INLINE void update_span(const T* p, const T* g, const T* a, T a0, int64_t row0, T* o, int64_t begin,
                                int64_t end) {
  if (a == nullptr) {
    MEDMETA_SIMD
    for (int64_t j = begin; j < end; ++j) o[j] = p[j] - a0 * g[j];
  } else {
    MEDMETA_SIMD
    for (int64_t j = begin; j < end; ++j) o[j] = p[j] - a[j - row0] * g[j];
  }
}

template <typename T>
MEDMETA_CPU_CLONES void forward_items(const UpdateTensor* ts, const Item* items, double lr_scalar, bool streaming,
                                      int64_t i0, int64_t i1) {
  constexpr int64_t kBlock = 1024;  // streaming: computed into L1, then stored around the caches
  alignas(64) T block[kBlock];
  for (int64_t i = i0; i < i1; ++i) {
    const Item& it = items[i];
    const UpdateTensor& t = ts[it.k];
    const T* p = static_cast<const T*>(t.param);
    const T* g = static_cast<const T*>(t.grad);
    T* o = static_cast<T*>(t.out);
    const bool vector_rate = t.lr != nullptr && t.lr_numel > 1;
    const T* a = vector_rate ? static_cast<const T*>(t.lr) : nullptr;
    const T a0 = vector_rate ? T(0) : scalar_rate<T>(t.lr, lr_scalar);
    const int64_t row0 = vector_rate ? it.begin / t.lr_numel * t.lr_numel : 0;  // row items: one row
    if (!streaming || o == p || o == g) {  // in place: the lines are in cache already
      update_span(p, g, a, a0, row0, o, it.begin, it.end);
      continue;
    }
    for (int64_t b = it.begin; b < it.end; b += kBlock) {
      const int64_t e = std::min(it.end, b + kBlock);
      update_span(p + b, g + b, a == nullptr ? nullptr : a + (b - row0), a0, 0, block, 0, e - b);
      stream_copy(o + b, block, e - b);
    }
  }
  if (streaming) stream_fence();
}

// Also returns, per item of a tensor with one learned rate, the partial sum of grad * grad_out.
template <typename T>
MEDMETA_CPU_CLONES void backward_items(const UpdateGradTensor* ts, const Item* items, double lr_scalar, T* partial,
                                       int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const Item& it = items[i];
    const UpdateGradTensor& t = ts[it.k];
    const T* go = static_cast<const T*>(t.grad_out);
    const T* g = static_cast<const T*>(t.grad);
    T* gg = static_cast<T*>(t.grad_grad);
    if (t.lr == nullptr || t.lr_numel == 1) {
      const T a = scalar_rate<T>(t.lr, lr_scalar);
      if (gg != nullptr) {
        MEDMETA_SIMD
        for (int64_t j = it.begin; j < it.end; ++j) gg[j] = -a * go[j];
      }
      if (t.grad_lr != nullptr) partial[i] = -dot_row(g + it.begin, go + it.begin, it.end - it.begin);
    } else {
      const T* a = static_cast<const T*>(t.lr);
      T* ga = static_cast<T*>(t.grad_lr);
      const int64_t L = t.lr_numel, rows = t.numel / L;
      for (int64_t r = 0; r < rows; ++r) {
        if (gg != nullptr) {
          MEDMETA_SIMD
          for (int64_t j = it.begin; j < it.end; ++j) gg[r * L + j] = -a[j] * go[r * L + j];
        }
        if (ga != nullptr) {
          MEDMETA_SIMD
          for (int64_t j = it.begin; j < it.end; ++j) ga[j] -= g[r * L + j] * go[r * L + j];
        }
      }
    }
  }
}

template <typename T> void forward(const UpdateTensor* ts, int64_t count, double lr_scalar) {
  const std::vector<Item> items = row_items(ts, count);
  int64_t bytes = 0;
  for (int64_t k = 0; k < count; ++k) bytes += ts[k].numel * static_cast<int64_t>(sizeof(T));
  const bool streaming = bytes >= kStreamingStoreBytes;
  parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t i0, int64_t i1) {
    forward_items<T>(ts, items.data(), lr_scalar, streaming, i0, i1);
  });
}

template <typename T> void backward(const UpdateGradTensor* ts, int64_t count, double lr_scalar) {
  const std::vector<Item> items = column_items(ts, count);
  const int64_t n = static_cast<int64_t>(items.size());
  std::vector<T> partial(n, T(0));
  parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) { backward_items<T>(ts, items.data(), lr_scalar, partial.data(), i0, i1); });
  // Items do not depend on the thread count, so summing their partials in order is deterministic.
  for (int64_t i = 0; i < n; ++i) {
    const UpdateGradTensor& t = ts[items[i].k];
    if (t.grad_lr != nullptr && t.lr != nullptr && t.lr_numel == 1) *static_cast<T*>(t.grad_lr) += partial[i];
  }
}

}  // namespace

void inner_update_forward_cpu(DType dt, const UpdateTensor* tensors, int64_t count, double lr_scalar) {
  switch (dt) {
    case DType::Float32: return forward<float>(tensors, count, lr_scalar);
    case DType::Float64: return forward<double>(tensors, count, lr_scalar);
    default: fail(std::string("inner_update on CPU supports float32 and float64, got ") + dtype_name(dt));
  }
}

void inner_update_backward_cpu(DType dt, const UpdateGradTensor* tensors, int64_t count, double lr_scalar) {
  switch (dt) {
    case DType::Float32: return backward<float>(tensors, count, lr_scalar);
    case DType::Float64: return backward<double>(tensors, count, lr_scalar);
    default: fail(std::string("inner_update on CPU supports float32 and float64, got ") + dtype_name(dt));
  }
}

}  // namespace medmeta
