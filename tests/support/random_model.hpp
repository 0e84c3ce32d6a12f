// Test and benchmark helper: a complete set of randomly initialised weights for any model_config, named as
// docs/model-format.md names them. Values are rounded to float first, so a float and a
// double model built from the same seed hold exactly the same weights.
#pragma once

#include <cmath>
#include <string>

#include <eigenformer/config.hpp>
#include <eigenformer/weights.hpp>

#include "random.hpp"

namespace eigenformer::testing {

template <class Scalar>
class random_weights {
 public:
  random_weights(const model_config& c, std::uint64_t seed) : c_(c), f_(seed), w_("random") {
    const index_t d = c.d_model;
    const double s = 1.0 / std::sqrt(double(d));
    add("tgt_embed.weight", {c.tgt_vocab_size, d}, 1.0);
    if (!c.share_embeddings) add("src_embed.weight", {c.src_vocab_size, d}, 1.0);
    if (c.positional == positional_encoding::learned) {
      add("src_pos.weight", {c.max_positions, d}, 0.5);
      add("tgt_pos.weight", {c.max_positions, d}, 0.5);
    }
    if (c.embedding_norm) {
      norm("transformer.encoder.embed_norm");
      norm("transformer.decoder.embed_norm");
    }
    for (index_t i = 0; i < c.n_encoder_layers; ++i) {
      const std::string p = "transformer.encoder.layers." + std::to_string(i);
      attention(p + ".self_attn", s);
      ff(p, c.moe && c.moe->in_encoder(i), s);
      norm(p + ".norm1");
      norm(p + ".norm2");
    }
    for (index_t i = 0; i < c.n_decoder_layers; ++i) {
      const std::string p = "transformer.decoder.layers." + std::to_string(i);
      attention(p + ".self_attn", s);
      attention(p + ".multihead_attn", s);
      ff(p, c.moe && c.moe->in_decoder(i), s);
      norm(p + ".norm1");
      norm(p + ".norm2");
      norm(p + ".norm3");
    }
    if (c.encoder_final_norm) norm("transformer.encoder.norm");
    if (c.decoder_final_norm) norm("transformer.decoder.norm");
    if (!c.tie_output) add("generator.weight", {c.tgt_vocab_size, d}, s);
    add("generator.bias", {c.tgt_vocab_size}, 0.1);
  }

  weight_map<Scalar>& map() { return w_; }

 private:
  void add(const std::string& name, std::initializer_list<index_t> dims, double scale, double center = 0.0) {
    tensor<Scalar> t(dims);
    for (auto& v : t.values()) v = static_cast<Scalar>(static_cast<float>(center + scale * f_.next()));
    w_.insert(name, std::move(t));
  }
  void attention(const std::string& p, double s) {
    const index_t d = c_.d_model;
    add(p + ".in_proj_weight", {3 * d, d}, s * 1.7);
    add(p + ".in_proj_bias", {3 * d}, 0.1);
    add(p + ".out_proj.weight", {d, d}, s * 1.7);
    add(p + ".out_proj.bias", {d}, 0.1);
  }
  void linear_pair(const std::string& p, double s) {
    const index_t d = c_.d_model, f = c_.d_ff;
    add(p + ".linear1.weight", {f, d}, s * 1.7);
    add(p + ".linear1.bias", {f}, 0.1);
    add(p + ".linear2.weight", {d, f}, 1.7 / std::sqrt(double(f)));
    add(p + ".linear2.bias", {d}, 0.1);
  }
  void ff(const std::string& p, bool moe, double s) {
    if (!moe) return linear_pair(p, s);
    const index_t d = c_.d_model, e = c_.moe->n_experts;
    add(p + ".moe.gate.weight", {e, d}, s * 2);
    if (c_.moe->gate_kind == gate::noisy_top_k) add(p + ".moe.noise.weight", {e, d}, s);
    for (index_t x = 0; x < e; ++x) linear_pair(p + ".moe.experts." + std::to_string(x), s);
  }
  void norm(const std::string& p) {
    add(p + ".weight", {c_.d_model}, 0.2, 1.0);
    add(p + ".bias", {c_.d_model}, 0.1);
  }

  model_config c_;
  filler f_;
  weight_map<Scalar> w_;
};

/// A small config with every required key set.
inline model_config small_config(index_t d_model = 16, index_t n_heads = 4) {
  model_config c;
  c.d_model = d_model;
  c.n_heads = n_heads;
  c.d_ff = 2 * d_model + 3;
  c.n_encoder_layers = 2;
  c.n_decoder_layers = 2;
  c.src_vocab_size = 23;
  c.tgt_vocab_size = 19;
  c.max_positions = 64;
  c.bos_id = 1;
  c.eos_id = 2;
  c.pad_id = 0;
  return c;
}

/// The Transformer-base shape (Vaswani et al. 2017) the benchmarks measure: d_model 512, 8 heads,
/// d_ff 2048, 6 encoder and 6 decoder layers, source and target vocab 32000, post-LN, relu,
/// sinusoidal positions. max_positions 8192 leaves room for bench_decode's 32 + 4096 cached steps.
inline model_config base_config() {
  auto c = small_config(512, 8);
  c.d_ff = 2048;
  c.n_encoder_layers = c.n_decoder_layers = 6;
  c.src_vocab_size = c.tgt_vocab_size = 32000;
  c.max_positions = 8192;
  return c;
}

}  // namespace eigenformer::testing
