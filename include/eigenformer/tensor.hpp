// eigenformer/tensor.hpp: tensor<Scalar>, a shape of rank 1-4 over contiguous row-major storage,
// and the zero-copy Eigen views the kernels compute on.
//
// A tensor owns its storage; views (Eigen::Map) never do. The last dimension is contiguous, so a
// tensor of shape [d0, ..., dn] is viewed as a row-major matrix [d0 * ... * d(n-1), dn]: that is
// the form every GEMM in the library takes. Storage is 64-byte aligned (2 MiB and huge-page advised
// for large buffers, see detail/memory.hpp). Scalar may be any trivially copyable type (room for
// 16-bit storage types); the Eigen views are meant for float and double.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "detail/memory.hpp"
#include "error.hpp"

namespace eigenformer {

/// Row-major dynamic matrix, the layout of PyTorch tensors.
template <class Scalar>
using row_matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Mutable view of a row-major matrix whose rows may be `stride` apart (a column block of a wider
/// matrix: one attention head inside the fused Q/K/V rows, for example).
template <class Scalar>
using matrix_view = Eigen::Map<row_matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class Scalar>
using const_matrix_view = Eigen::Map<const row_matrix<Scalar>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class Scalar>
using vector_view = Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;
template <class Scalar>
using const_vector_view = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>>;

/// View of `rows` x `cols` elements at `data`, consecutive rows `stride` elements apart.
template <class Scalar>
matrix_view<Scalar> make_view(Scalar* data, index_t rows, index_t cols, index_t stride) {
  return matrix_view<Scalar>(data, rows, cols, Eigen::OuterStride<>(stride));
}
template <class Scalar>
matrix_view<Scalar> make_view(Scalar* data, index_t rows, index_t cols) {
  return make_view(data, rows, cols, cols);
}
template <class Scalar>
const_matrix_view<Scalar> make_view(const Scalar* data, index_t rows, index_t cols, index_t stride) {
  return const_matrix_view<Scalar>(data, rows, cols, Eigen::OuterStride<>(stride));
}
template <class Scalar>
const_matrix_view<Scalar> make_view(const Scalar* data, index_t rows, index_t cols) {
  return make_view(data, rows, cols, cols);
}

/// The extents of a tensor: rank 1 to 4, each extent >= 0.
class tensor_shape {
 public:
  static constexpr int max_rank = 4;

  /// Rank 1, zero elements.
  tensor_shape() = default;

  tensor_shape(std::initializer_list<index_t> dims) : tensor_shape(std::span<const index_t>(dims.begin(), dims.size())) {}

  /// Throws shape_error on a rank outside 1..4, a negative extent or an element count that overflows.
  explicit tensor_shape(std::span<const index_t> dims) : rank_(static_cast<int>(dims.size())) {
    if (dims.empty() || dims.size() > max_rank) {
      throw shape_error("tensor shape " + shape_string(dims) + ": rank " + std::to_string(dims.size()) +
                        ", expected 1 to 4");
    }
    std::size_t count = 1;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] < 0) throw shape_error("tensor shape " + shape_string(dims) + ": negative extent");
      if (__builtin_mul_overflow(count, static_cast<std::size_t>(dims[i]), &count) ||
          count > static_cast<std::size_t>(PTRDIFF_MAX) / 8) {
        throw shape_error("tensor shape " + shape_string(dims) + ": element count overflows");
      }
      dims_[i] = dims[i];
    }
  }

  int rank() const noexcept { return rank_; }
  index_t operator[](int i) const noexcept { return dims_[static_cast<std::size_t>(i)]; }
  std::span<const index_t> dims() const noexcept { return {dims_.data(), static_cast<std::size_t>(rank_)}; }
  index_t numel() const noexcept {
    index_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }
  /// Extent of the last dimension: the columns of the matrix view.
  index_t cols() const noexcept { return dims_[static_cast<std::size_t>(rank_ - 1)]; }
  /// Product of all but the last dimension: the rows of the matrix view (1 for rank 1).
  index_t rows() const noexcept {
    index_t n = 1;
    for (int i = 0; i + 1 < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }
  std::string str() const { return shape_string(dims()); }

  friend bool operator==(const tensor_shape& a, const tensor_shape& b) noexcept {
    return a.rank_ == b.rank_ && std::equal(a.dims().begin(), a.dims().end(), b.dims().begin());
  }

 private:
  std::array<index_t, max_rank> dims_{0, 0, 0, 0};
  int rank_ = 1;
};

/// Throws shape_error "<what>: shape <got>, expected <expected>" unless the shapes are equal.
inline void check_shape(std::string_view what, const tensor_shape& got, const tensor_shape& expected) {
  check_shape(what, got.dims(), expected.dims());
}

/// An owning, contiguous, row-major, aligned n-d array (rank 1-4).
template <class Scalar>
class tensor {
  static_assert(std::is_trivially_copyable_v<Scalar>, "tensor<Scalar> needs a trivially copyable Scalar");

 public:
  using value_type = Scalar;

  tensor() = default;

  /// Zero-filled tensor of the given shape.
  explicit tensor(const tensor_shape& shape) { resize(shape); fill(Scalar(0)); }
  tensor(std::initializer_list<index_t> dims) : tensor(tensor_shape(dims)) {}
  tensor(const tensor_shape& shape, Scalar value) { resize(shape); fill(value); }

  /// Copies `values` (shape.numel() of them) into a new tensor; throws shape_error on a size mismatch.
  static tensor from_values(const tensor_shape& shape, std::span<const Scalar> values) {
    if (static_cast<index_t>(values.size()) != shape.numel()) {
      throw shape_error("tensor::from_values: " + std::to_string(values.size()) + " values, expected " +
                        std::to_string(shape.numel()) + " for shape " + shape.str());
    }
    tensor t;
    t.resize(shape);
    if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(Scalar));
    return t;
  }

  tensor(const tensor& other) { *this = other; }
  tensor& operator=(const tensor& other) {
    if (this != &other) {
      resize(other.shape_);
      if (size() > 0) std::memcpy(data_, other.data_, static_cast<std::size_t>(size()) * sizeof(Scalar));
    }
    return *this;
  }
  tensor(tensor&& other) noexcept { swap(other); }
  tensor& operator=(tensor&& other) noexcept {
    tensor tmp(std::move(other));
    swap(tmp);
    return *this;
  }
  ~tensor() { detail::aligned_free(data_, capacity_bytes()); }

  void swap(tensor& other) noexcept {
    std::swap(shape_, other.shape_);
    std::swap(data_, other.data_);
    std::swap(capacity_, other.capacity_);
  }

  /// Changes the shape. Storage is reallocated only when it must grow, so a buffer reused across
  /// decode steps allocates once; the contents after a resize are unspecified.
  void resize(const tensor_shape& shape) {
    const index_t n = shape.numel();
    if (n > capacity_) {
      const std::size_t bytes = detail::checked_mul(static_cast<std::size_t>(n), sizeof(Scalar), "tensor storage");
      Scalar* fresh = static_cast<Scalar*>(detail::aligned_allocate(bytes));
      detail::aligned_free(data_, capacity_bytes());
      data_ = fresh;
      capacity_ = n;
    }
    shape_ = shape;
  }
  void resize(std::initializer_list<index_t> dims) { resize(tensor_shape(dims)); }

  void fill(Scalar value) noexcept { std::fill(data_, data_ + size(), value); }

  const tensor_shape& shape() const noexcept { return shape_; }
  int rank() const noexcept { return shape_.rank(); }
  index_t dim(int i) const noexcept { return shape_[i]; }
  index_t size() const noexcept { return shape_.numel(); }
  /// Elements the storage holds without reallocating.
  index_t capacity() const noexcept { return capacity_; }
  bool empty() const noexcept { return size() == 0; }

  Scalar* data() noexcept { return data_; }
  const Scalar* data() const noexcept { return data_; }
  std::span<Scalar> values() noexcept { return {data_, static_cast<std::size_t>(size())}; }
  std::span<const Scalar> values() const noexcept { return {data_, static_cast<std::size_t>(size())}; }

  /// Row-major element access without bounds checks (hot loops); at() checks.
  Scalar& operator()(index_t i) noexcept { return data_[i]; }
  const Scalar& operator()(index_t i) const noexcept { return data_[i]; }
  Scalar& operator()(index_t i, index_t j) noexcept { return data_[i * shape_[1] + j]; }
  const Scalar& operator()(index_t i, index_t j) const noexcept { return data_[i * shape_[1] + j]; }
  Scalar& operator()(index_t i, index_t j, index_t k) noexcept { return data_[(i * shape_[1] + j) * shape_[2] + k]; }
  const Scalar& operator()(index_t i, index_t j, index_t k) const noexcept {
    return data_[(i * shape_[1] + j) * shape_[2] + k];
  }
  Scalar& operator()(index_t i, index_t j, index_t k, index_t l) noexcept {
    return data_[((i * shape_[1] + j) * shape_[2] + k) * shape_[3] + l];
  }
  const Scalar& operator()(index_t i, index_t j, index_t k, index_t l) const noexcept {
    return data_[((i * shape_[1] + j) * shape_[2] + k) * shape_[3] + l];
  }

  /// Bounds-checked access; throws invalid_argument naming the index and the shape.
  template <class... I>
  Scalar& at(I... idx) { return data_[checked_offset({static_cast<index_t>(idx)...})]; }
  template <class... I>
  const Scalar& at(I... idx) const { return data_[checked_offset({static_cast<index_t>(idx)...})]; }

  /// Zero-copy matrix view [rows, cols]: all leading dimensions folded into rows.
  matrix_view<Scalar> matrix() noexcept { return make_view(data_, shape_.rows(), shape_.cols()); }
  const_matrix_view<Scalar> matrix() const noexcept {
    return make_view(static_cast<const Scalar*>(data_), shape_.rows(), shape_.cols());
  }
  /// Zero-copy view of all elements as one column vector.
  vector_view<Scalar> vector() noexcept { return vector_view<Scalar>(data_, size()); }
  const_vector_view<Scalar> vector() const noexcept { return const_vector_view<Scalar>(data_, size()); }

 private:
  std::size_t capacity_bytes() const noexcept { return static_cast<std::size_t>(capacity_) * sizeof(Scalar); }

  index_t checked_offset(std::initializer_list<index_t> idx) const {
    const auto dims = shape_.dims();
    bool ok = idx.size() == dims.size();
    index_t off = 0;
    std::size_t i = 0;
    for (index_t v : idx) {
      if (!ok) break;
      ok = v >= 0 && v < dims[i];
      off = off * dims[i] + v;
      ++i;
    }
    if (!ok) {
      throw invalid_argument("tensor::at: index " + shape_string(std::span<const index_t>(idx.begin(), idx.size())) +
                             " outside shape " + shape_.str());
    }
    return off;
  }

  tensor_shape shape_;
  Scalar* data_ = nullptr;
  index_t capacity_ = 0;
};

}  // namespace eigenformer
