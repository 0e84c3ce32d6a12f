// eigenformer/layers/linear.hpp: linear_layer<Scalar>, an nn.Linear's weight [out, in] and bias
// [out] as stored in the file, applied with ops.hpp's linear() (no copy, no transpose).
#pragma once

#include <string>

#include "../ops.hpp"
#include "../weights.hpp"

namespace eigenformer {

template <class Scalar>
struct linear_layer {
  tensor<Scalar> weight;  // [out, in], PyTorch's layout
  tensor<Scalar> bias;    // [out], or empty when the layer has none

  /// Takes `<scope>.weight` [out, in] and `<scope>.bias` [out] (optional when !bias_required).
  static linear_layer load(weight_map<Scalar>& w, const std::string& scope, index_t out, index_t in,
                           bool bias_required = true) {
    linear_layer l;
    l.weight = w.take(scope + ".weight", {out, in});
    l.bias = bias_required ? w.take(scope + ".bias", {out}) : w.take_optional(scope + ".bias", {out});
    return l;
  }

  index_t in_features() const noexcept { return weight.dim(1); }
  index_t out_features() const noexcept { return weight.dim(0); }
  index_t parameter_count() const noexcept { return weight.size() + bias.size(); }

  /// y [n, out] = x [n, in] W^T + b
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& y) const {
    linear(x, weight.matrix(), bias.values(), y);
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
