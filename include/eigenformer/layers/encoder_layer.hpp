// eigenformer/layers/encoder_layer.hpp: nn.TransformerEncoderLayer (docs/model-format.md):
//   post-LN: x = norm1(x + SA(x));       x = norm2(x + FF(x))
//   pre-LN:  x = x + SA(norm1(x));       x = x + FF(norm2(x))
// FF is the dense feed-forward block or, for the layers config.moe lists, a mixture of experts.
#pragma once

#include <string>

#include "../attention.hpp"
#include "../config.hpp"
#include "feed_forward.hpp"
#include "moe.hpp"

namespace eigenformer {

template <class Scalar>
struct encoder_layer {
  attention_weights<Scalar> self_attn;
  feed_forward_block<Scalar> ff;  // dense, or mixture of experts
  layer_norm_layer<Scalar> norm1, norm2;
  bool norm_first = false;

  /// Takes the tensors of encoder layer `index`, named under `scope` (e.g. "transformer.encoder.layers.0").
  static encoder_layer load(weight_map<Scalar>& w, const std::string& scope, const model_config& c, index_t index) {
    encoder_layer l;
    l.self_attn = attention_weights<Scalar>::load(w, scope + ".self_attn", c.d_model, c.n_heads);
    l.ff = feed_forward_block<Scalar>::load(w, scope, c, encoder_moe_id(c, index));
    l.norm1 = layer_norm_layer<Scalar>::load(w, scope + ".norm1", c.d_model, c.layer_norm_eps);
    l.norm2 = layer_norm_layer<Scalar>::load(w, scope + ".norm2", c.d_model, c.layer_norm_eps);
    l.norm_first = c.norm_first;
    return l;
  }

  index_t parameter_count() const noexcept {
    return self_attn.parameter_count() + ff.parameter_count() + norm1.parameter_count() + norm2.parameter_count();
  }
  /// Converts the attention and feed-forward matrices to weight type `t` (norms stay Scalar).
  void convert(weight_type t) {
    self_attn.convert(t);
    ff.convert(t);
  }

  /// x [n, d_model] in place; sequence b is rows ctx.rows.offsets[b] .. offsets[b+1].
  void forward(matrix_view<Scalar> x, const forward_context& ctx, workspace<Scalar>& ws) const {
    const index_t n = x.rows(), d = x.cols();
    const std::span<const index_t> offsets = ctx.rows.offsets;
    ws.sub.resize({n, d});
    auto sub = ws.sub.matrix();
    if (norm_first) {
      ws.normed.resize({n, d});
      auto normed = ws.normed.matrix();
      norm1(x, normed);
      self_attention(self_attn, normed, offsets, false, sub, ws);
      x += sub;
      norm2(x, normed);
      ff(normed, sub, ctx, ws);
      x += sub;
    } else {
      self_attention(self_attn, x, offsets, false, sub, ws);
      x += sub;
      norm1(x, x);
      ff(x, sub, ctx, ws);
      x += sub;
      norm2(x, x);
    }
  }
};

}  // namespace eigenformer
