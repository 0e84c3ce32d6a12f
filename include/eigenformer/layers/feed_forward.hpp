// eigenformer/layers/feed_forward.hpp: the position-wise feed-forward block,
// FF(x) = linear2(act(linear1(x))), act = relu, exact gelu, gelu's tanh approximation or silu.
#pragma once

#include <string>

#include "../config.hpp"
#include "linear.hpp"
#include "../workspace.hpp"

namespace eigenformer {

template <class Scalar>
void apply_activation(activation a, matrix_view<Scalar> x) {
  switch (a) {
    case activation::relu: return relu(x);
    case activation::gelu: return gelu(x);
    case activation::gelu_tanh: return gelu_tanh(x);
    case activation::silu: return silu(x);
  }
}

template <class Scalar>
struct feed_forward {
  linear_layer<Scalar> linear1;  // [d_ff, d_model]
  linear_layer<Scalar> linear2;  // [d_model, d_ff]
  activation act = activation::relu;

  static feed_forward load(weight_map<Scalar>& w, const std::string& scope, index_t d_model, index_t d_ff, activation act) {
    return {linear_layer<Scalar>::load(w, scope + ".linear1", d_ff, d_model),
            linear_layer<Scalar>::load(w, scope + ".linear2", d_model, d_ff), act};
  }

  index_t parameter_count() const noexcept { return linear1.parameter_count() + linear2.parameter_count(); }
  std::size_t bytes() const noexcept { return linear1.bytes() + linear2.bytes(); }
  void convert(weight_type t) {
    linear1.convert(t);
    linear2.convert(t);
  }

  /// out [n, d_model] = FF(x [n, d_model]); uses ws.hidden [n, d_ff].
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& out, workspace<Scalar>& ws) const {
    ws.hidden.resize({x.rows(), linear1.out_features()});
    linear1(x, ws.hidden.matrix());
    apply_activation(act, ws.hidden.matrix());
    linear2(ws.hidden.matrix(), out);
  }
};

}  // namespace eigenformer
