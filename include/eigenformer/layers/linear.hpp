// eigenformer/layers/linear.hpp: linear_layer<Scalar>, an nn.Linear's weight [out, in] and bias
// [out] as stored in the file, applied with ops.hpp's linear() (no copy, no transpose); or, once
// converted to a reduced weight_type, with packed_weights.hpp's kernels.
#pragma once

#include <string>
#include <utility>

#include "../ops.hpp"
#include "../packed_weights.hpp"
#include "../weights.hpp"

namespace eigenformer {

template <class Scalar>
struct linear_layer {
  tensor<Scalar> weight;          // [out, in], PyTorch's layout; empty once converted to `packed`
  tensor<Scalar> bias;            // [out], or empty when the layer has none (never converted)
  packed_matrix<Scalar> packed;   // [out, in] in a reduced weight_type, or empty

  /// Takes `<scope>.weight` [out, in] and `<scope>.bias` [out] (optional when !bias_required).
  static linear_layer load(weight_map<Scalar>& w, const std::string& scope, index_t out, index_t in,
                           bool bias_required = true) {
    linear_layer l;
    l.weight = w.take(scope + ".weight", {out, in});
    l.bias = bias_required ? w.take(scope + ".bias", {out}) : w.take_optional(scope + ".bias", {out});
    return l;
  }

  index_t in_features() const noexcept { return packed.empty() ? weight.dim(1) : packed.cols(); }
  index_t out_features() const noexcept { return packed.empty() ? weight.dim(0) : packed.rows(); }
  index_t parameter_count() const noexcept {
    return (packed.empty() ? weight.size() : packed.rows() * packed.cols()) + bias.size();
  }
  /// The weight type the layer multiplies with.
  weight_type type() const noexcept { return packed.empty() ? weight_type::float32 : packed.type(); }
  /// Bytes of the weight matrix and bias as held.
  std::size_t bytes() const noexcept {
    return (packed.empty() ? sizeof(Scalar) * static_cast<std::size_t>(weight.size()) : packed.bytes()) +
           sizeof(Scalar) * static_cast<std::size_t>(bias.size());
  }

  /// Converts the weight matrix to `t` once (float32, or a layer already converted: no change);
  /// the float weight is released.
  void convert(weight_type t) {
    if (t == weight_type::float32 || !packed.empty() || weight.size() == 0) return;
    packed = packed_matrix<Scalar>(std::as_const(weight).matrix(), t);
    weight = tensor<Scalar>();
  }

  /// y [n, out] = x [n, in] W^T + b
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& y) const {
    apply_rows(0, out_features(), x, y);
  }

  /// y [n, count] = x [n, in] W[first : first + count]^T + b[first : first + count]: some output
  /// rows alone (the query, or the keys and values, of a fused in_proj).
  template <class X, class Y>
  void apply_rows(index_t first, index_t count, const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& y_) const {
    const std::span<const Scalar> b =
        bias.size() == 0 ? std::span<const Scalar>() : bias.values().subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(count));
    if (packed.empty()) {
      linear(x, make_view(weight.data() + first * weight.dim(1), count, weight.dim(1)), b, y_);
      return;
    }
    static_assert(detail::is_row_major_direct<X> && detail::is_row_major_direct<Y>,
                  "packed weights need row-major inputs and outputs");
    Y& y = detail::writable(y_);
    if (x.cols() != packed.cols() || x.innerStride() != 1 || y.innerStride() != 1) {
      throw shape_error("linear: input shape " + shape_string({x.rows(), x.cols()}) + " does not match weight " +
                        shape_string({packed.rows(), packed.cols()}) + ", expected input [n, " + std::to_string(packed.cols()) + "]");
    }
    detail::check_dims("linear", "output", y.rows(), y.cols(), x.rows(), count);
    packed.apply(first, count, x.derived().data(), x.outerStride(), x.rows(), b, y.data(), y.outerStride());
  }
};

/// nn.LayerNorm's weight and bias [d_model], with its eps; or, with `rms`, an RMSNorm (weight only).
template <class Scalar>
struct layer_norm_layer {
  tensor<Scalar> weight;  // [d_model]
  tensor<Scalar> bias;    // [d_model] (empty for RMSNorm)
  Scalar eps = Scalar(1e-5);
  bool rms = false;

  static layer_norm_layer load(weight_map<Scalar>& w, const std::string& scope, index_t d_model, double eps) {
    return {w.take(scope + ".weight", {d_model}), w.take(scope + ".bias", {d_model}), static_cast<Scalar>(eps), false};
  }
  /// RMSNorm: `<scope>.weight` only.
  static layer_norm_layer load_rms(weight_map<Scalar>& w, const std::string& scope, index_t d_model, double eps) {
    return {w.take(scope + ".weight", {d_model}), {}, static_cast<Scalar>(eps), true};
  }

  index_t parameter_count() const noexcept { return weight.size() + bias.size(); }

  /// y = LayerNorm(x), row-wise; y may be x.
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& y) const {
    if (rms) {
      rms_norm(x, weight.values(), eps, y);
    } else {
      layer_norm(x, weight.values(), bias.values(), eps, y);
    }
  }
};

}  // namespace eigenformer
