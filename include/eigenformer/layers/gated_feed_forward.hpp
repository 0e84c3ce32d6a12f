// eigenformer/layers/gated_feed_forward.hpp: the SwiGLU feed-forward block of Llama-family
// decoders (transformers' LlamaMLP, Shazeer 2020 "GLU Variants Improve Transformer"):
//   FF(x) = down( silu(gate(x)) * up(x) ),  no biases.
#pragma once

#include <string>

#include "linear.hpp"
#include "../workspace.hpp"

namespace eigenformer {

template <class Scalar>
struct gated_feed_forward {
  linear_layer<Scalar> gate;  // [d_ff, d_model], no bias
  linear_layer<Scalar> up;    // [d_ff, d_model], no bias
  linear_layer<Scalar> down;  // [d_model, d_ff], no bias

  /// Takes `<scope>.gate_proj.weight`, `<scope>.up_proj.weight` and `<scope>.down_proj.weight` (a
  /// LlamaMLP's names). Biases are not taken: a file that has them (mlp_bias) leaves them over, and
  /// the model's weight_map::expect_empty() names them, rather than running without them.
  static gated_feed_forward load(weight_map<Scalar>& w, const std::string& scope, index_t d_model, index_t d_ff) {
    return {{w.take(scope + ".gate_proj.weight", {d_ff, d_model}), {}, {}},
            {w.take(scope + ".up_proj.weight", {d_ff, d_model}), {}, {}},
            {w.take(scope + ".down_proj.weight", {d_model, d_ff}), {}, {}}};
  }

  index_t d_ff() const noexcept { return gate.out_features(); }
  index_t parameter_count() const noexcept {
    return gate.parameter_count() + up.parameter_count() + down.parameter_count();
  }
  std::size_t bytes() const noexcept { return gate.bytes() + up.bytes() + down.bytes(); }
  void convert(weight_type t) {
    gate.convert(t);
    up.convert(t);
    down.convert(t);
  }

  /// out [n, d_model] = FF(x [n, d_model]); out must not overlap x. Uses ws.hidden [n, 2 d_ff]: the
  /// gate projection in its left half, the up projection in its right half (so the workspace needs
  /// no buffer of its own for this layer); allocates only when ws.hidden must grow.
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& out, workspace<Scalar>& ws) const {
    const index_t n = x.rows(), f = d_ff();
    ws.hidden.resize({n, 2 * f});
    auto g = make_view(ws.hidden.data(), n, f, 2 * f);      // [n, d_ff], stride 2 d_ff
    auto u = make_view(ws.hidden.data() + f, n, f, 2 * f);  // [n, d_ff], stride 2 d_ff
    gate(x, g);
    up(x, u);
    silu_mul(g, u);
    down(g, out);
  }
};

}  // namespace eigenformer
