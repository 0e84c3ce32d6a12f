// eigenformer/layers/decoder_layer.hpp: nn.TransformerDecoderLayer (docs/model-format.md):
//   post-LN: x = norm1(x + SA(x)); x = norm2(x + CA(x, memory)); x = norm3(x + FF(x))
//   pre-LN:  x = x + SA(norm1(x)); x = x + CA(norm2(x), memory); x = x + FF(norm3(x))
// SA is causal; FF is the dense feed-forward block or, for the layers config.moe lists, a mixture
// of experts. The same forward serves teacher forcing (SA over the packed target rows) and
// incremental decoding (SA over the KV cache): only the self-attention keys differ.
#pragma once

#include <span>
#include <string>

#include "../attention.hpp"
#include "../config.hpp"
#include "feed_forward.hpp"
#include "moe.hpp"

namespace eigenformer {

template <class Scalar>
struct decoder_layer {
  attention_weights<Scalar> self_attn;
  attention_weights<Scalar> cross_attn;  // "multihead_attn" in PyTorch
  feed_forward_block<Scalar> ff;         // dense, or mixture of experts
  layer_norm_layer<Scalar> norm1, norm2, norm3;
  bool norm_first = false;
  /// false in a decoder-only model: no cross-attention (and no norm2); the pre-norm layer is
  /// x = x + SA(norm1(x)); x = x + FF(norm3(x)).
  bool has_cross = true;

  /// Takes the tensors of decoder layer `index`, named under `scope` (e.g. "transformer.decoder.layers.0").
  static decoder_layer load(weight_map<Scalar>& w, const std::string& scope, const model_config& c, index_t index) {
    decoder_layer l;
    if (c.decoder_only()) {  // tensors: self_attn.*, norm1, norm3 (before the feed-forward), the feed-forward's
      l.self_attn = attention_weights<Scalar>::load_grouped(w, scope + ".self_attn", c.d_model, c.n_heads, c.kv_heads(), c.attn_bias);
      l.ff = feed_forward_block<Scalar>::load(w, scope, c, decoder_moe_id(c, index));
      const bool rms = c.norm == normalization::rms_norm;
      l.norm1 = rms ? layer_norm_layer<Scalar>::load_rms(w, scope + ".norm1", c.d_model, c.layer_norm_eps)
                    : layer_norm_layer<Scalar>::load(w, scope + ".norm1", c.d_model, c.layer_norm_eps);
      l.norm3 = rms ? layer_norm_layer<Scalar>::load_rms(w, scope + ".norm3", c.d_model, c.layer_norm_eps)
                    : layer_norm_layer<Scalar>::load(w, scope + ".norm3", c.d_model, c.layer_norm_eps);
      l.norm_first = true;
      l.has_cross = false;
      return l;
    }
    l.self_attn = attention_weights<Scalar>::load(w, scope + ".self_attn", c.d_model, c.n_heads);
    l.cross_attn = attention_weights<Scalar>::load(w, scope + ".multihead_attn", c.d_model, c.n_heads);
    l.ff = feed_forward_block<Scalar>::load(w, scope, c, decoder_moe_id(c, index));
    l.norm1 = layer_norm_layer<Scalar>::load(w, scope + ".norm1", c.d_model, c.layer_norm_eps);
    l.norm2 = layer_norm_layer<Scalar>::load(w, scope + ".norm2", c.d_model, c.layer_norm_eps);
    l.norm3 = layer_norm_layer<Scalar>::load(w, scope + ".norm3", c.d_model, c.layer_norm_eps);
    l.norm_first = c.norm_first;
    return l;
  }

  index_t parameter_count() const noexcept {
    return self_attn.parameter_count() + cross_attn.parameter_count() + ff.parameter_count() +
           norm1.parameter_count() + norm2.parameter_count() + norm3.parameter_count();
  }
  /// Converts the attention and feed-forward matrices to weight type `t` (norms stay Scalar).
  void convert(weight_type t) {
    self_attn.convert(t);
    cross_attn.convert(t);
    ff.convert(t);
  }

  /// x [n, d_model] in place, packed as ctx.rows says. `self_attention_fn(input, out)` computes
  /// the causal self-attention sublayer (teacher forcing or cached); `memory` views the
  /// cross-attention keys and values (the projected encoder output) of each query sequence.
  template <class SelfAttention>
  void forward(matrix_view<Scalar> x, const forward_context& ctx, const kv_view<Scalar>& memory,
               SelfAttention&& self_attention_fn, workspace<Scalar>& ws) const {
    const index_t n = x.rows(), d = x.cols();
    ws.sub.resize({n, d});
    ws.normed.resize({n, d});
    auto sub = ws.sub.matrix();
    auto normed = ws.normed.matrix();
    auto cross = [&](const auto& input) {
      attention_over_kv(cross_attn, input, ctx.rows.offsets, memory, sub, ws);
    };
    if (norm_first) {
      norm1(x, normed);
      self_attention_fn(normed, sub);
      x += sub;
      if (has_cross) {
        norm2(x, normed);
        cross(normed);
        x += sub;
      }
      norm3(x, normed);
      ff(normed, sub, ctx, ws);
      x += sub;
    } else {
      self_attention_fn(x, sub);
      x += sub;
      norm1(x, x);
      cross(x);
      x += sub;
      norm2(x, x);
      ff(x, sub, ctx, ws);
      x += sub;
      norm3(x, x);
    }
  }
};

}  // namespace eigenformer
