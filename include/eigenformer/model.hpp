// eigenformer/model.hpp: model<Scalar>, the encoder-decoder Transformer of
// shared/spec/model-format.md, computing what torch.nn.Transformer computes.
//
//   encode(src)            -> encoder_output (packed memory [n_src, d_model])
//   decode(memory, tgt)    -> decoder output [n_tgt, d_model] (teacher forcing, causal)
//   score(src, tgt)        -> log-probabilities [batch, max tgt length, tgt_vocab], 0 past each end
//   start_decoding / decode_step: incremental decoding over a caller-owned kv_cache
//
// A model is immutable once built and safe to share between threads: every buffer a call needs
// lives in that call (or in the caller's kv_cache), never in the model. So does the per-call state
// of mixture-of-experts layers (moe_runtime.hpp: gate noise, router statistics): encode, decode
// and score take a moe_runtime (default: noise off, no statistics); decode_step reads cache.moe(),
// each slot being a sequence of its own for the noise (sequence id = slot, position = its step).
#pragma once

#include <cmath>
#include <cstring>
#include <optional>
#include <utility>
#include <span>
#include <string>
#include <vector>

#include "attention.hpp"
#include "batch.hpp"
#include "config.hpp"
#include "kv_cache.hpp"
#include "layers/decoder_layer.hpp"
#include "layers/encoder_layer.hpp"
#include "moe_runtime.hpp"
#include "positional.hpp"
#include "weights.hpp"

namespace eigenformer {

/// The encoder's result for a batch of sources, packed as the batch was.
template <class Scalar>
struct encoder_output {
  tensor<Scalar> memory;          // [n_src_tokens, d_model]
  std::vector<index_t> offsets;   // [batch + 1]
  index_t batch() const noexcept { return static_cast<index_t>(offsets.size()) - 1; }
  index_t length(index_t b) const noexcept {
    return offsets[static_cast<std::size_t>(b) + 1] - offsets[static_cast<std::size_t>(b)];
  }
};

template <class Scalar>
class model {
 public:
  /// Builds the model from `weights`, taking every tensor the config calls for; throws if one is
  /// missing or misshapen, or if any tensor is left over.
  model(const model_config& config, weight_map<Scalar>& weights);

  const model_config& config() const noexcept { return config_; }
  index_t parameter_count() const noexcept { return parameters_; }

  /// `moe` (here and below): the caller's gate noise and router statistics for MoE layers.
  encoder_output<Scalar> encode(const token_batch& src, const moe_runtime& moe = {}) const;
  /// Teacher forcing: packed decoder output [tgt.total(), d_model] (after the final norm).
  tensor<Scalar> decode(const encoder_output<Scalar>& memory, const token_batch& tgt, const moe_runtime& moe = {}) const;
  /// out [n, tgt_vocab] = log_softmax(generator(hidden [n, d_model])).
  void log_probs(const_matrix_view<Scalar> hidden, matrix_view<Scalar> out) const;
  /// Log-probabilities [batch, tgt.max_length(), tgt_vocab]; rows past a sequence's end are 0.
  tensor<Scalar> score(const token_batch& src, const token_batch& tgt, const moe_runtime& moe = {}) const;

  /// Prepares `cache` to decode `slots_per_source` hypotheses of every source of `memory`, each up
  /// to `max_steps` tokens: computes the cross-attention keys and values once.
  void start_decoding(const encoder_output<Scalar>& memory, index_t slots_per_source, index_t max_steps,
                      kv_cache<Scalar>& cache) const;
  /// Feeds tokens[i] to slot slots[i] (distinct slots) and writes the next-token
  /// log-probabilities of each to out [slots.size(), tgt_vocab], or the raw logits (the generator's
  /// output before log_softmax) when `raw_logits`, which samplers such as the repetition penalty
  /// need. Allocates nothing once the cache has served one step of this size.
  void decode_step(kv_cache<Scalar>& cache, std::span<const index_t> slots, std::span<const token_id> tokens,
                   matrix_view<Scalar> out, bool raw_logits = false) const;

  /// The output projection [tgt_vocab, d_model] (generator.weight, or tgt_embed.weight if tied).
  const tensor<Scalar>& output_weight() const noexcept {
    return config_.tie_output ? tgt_embed_ : generator_.weight;
  }

 private:
  enum class side { src, tgt };
  void embed(side s, std::span<const token_id> tokens, index_t first_position, Scalar* out) const;
  void check_batch(const token_batch& batch, side s) const;

  model_config config_;
  tensor<Scalar> src_embed_, tgt_embed_;   // [vocab, d_model] (src_embed_ empty when shared)
  tensor<Scalar> src_pos_, tgt_pos_;       // [max_positions, d_model]: learned, or the sinusoidal table
  std::vector<encoder_layer<Scalar>> encoder_;
  std::vector<decoder_layer<Scalar>> decoder_;
  std::optional<layer_norm_layer<Scalar>> encoder_norm_, decoder_norm_;
  linear_layer<Scalar> generator_;         // weight empty when tied; bias optional
  Scalar embed_scale_ = Scalar(1);
  index_t parameters_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Implementation

template <class Scalar>
model<Scalar>::model(const model_config& config, weight_map<Scalar>& w) : config_(config) {
  config_.validate();
  const model_config& c = config_;
  const index_t d = c.d_model;
  tgt_embed_ = w.take("tgt_embed.weight", {c.tgt_vocab_size, d});
  parameters_ += tgt_embed_.size();
  if (!c.share_embeddings) {
    src_embed_ = w.take("src_embed.weight", {c.src_vocab_size, d});
    parameters_ += src_embed_.size();
  }
  if (c.positional == positional_encoding::learned) {
    src_pos_ = w.take("src_pos.weight", {c.max_positions, d});
    tgt_pos_ = w.take("tgt_pos.weight", {c.max_positions, d});
    parameters_ += src_pos_.size() + tgt_pos_.size();
  } else {
    src_pos_ = sinusoidal_table<Scalar>(c.max_positions, d, c.sinusoidal, c.position_offset);
  }
  for (index_t i = 0; i < c.n_encoder_layers; ++i) {
    encoder_.push_back(encoder_layer<Scalar>::load(w, "transformer.encoder.layers." + std::to_string(i), c, i));
    parameters_ += encoder_.back().parameter_count();
  }
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    decoder_.push_back(decoder_layer<Scalar>::load(w, "transformer.decoder.layers." + std::to_string(i), c, i));
    parameters_ += decoder_.back().parameter_count();
  }
  if (c.encoder_final_norm) {
    encoder_norm_ = layer_norm_layer<Scalar>::load(w, "transformer.encoder.norm", d, c.layer_norm_eps);
    parameters_ += encoder_norm_->parameter_count();
  }
  if (c.decoder_final_norm) {
    decoder_norm_ = layer_norm_layer<Scalar>::load(w, "transformer.decoder.norm", d, c.layer_norm_eps);
    parameters_ += decoder_norm_->parameter_count();
  }
  if (!c.tie_output) generator_.weight = w.take("generator.weight", {c.tgt_vocab_size, d});
  generator_.bias = w.take_optional("generator.bias", {c.tgt_vocab_size});
  parameters_ += generator_.weight.size() + generator_.bias.size();
  w.expect_empty();
  embed_scale_ = c.scale_embedding ? static_cast<Scalar>(std::sqrt(static_cast<double>(d))) : Scalar(1);
}

template <class Scalar>
void model<Scalar>::check_batch(const token_batch& batch, side s) const {
  const char* name = s == side::src ? "source" : "target";
  const index_t vocab = s == side::src ? config_.src_vocab_size : config_.tgt_vocab_size;
  const index_t limit = config_.max_sequence_length();
  for (index_t b = 0; b < batch.size(); ++b) {
    if (batch.length(b) > limit) {
      throw invalid_argument(std::string(name) + " sequence " + std::to_string(b) + ": length " +
                             std::to_string(batch.length(b)) + ", expected at most " + std::to_string(limit) +
                             " (max_positions)");
    }
    const auto seq = batch.sequence(b);
    for (std::size_t i = 0; i < seq.size(); ++i) {
      if (seq[i] < 0 || seq[i] >= vocab) {
        throw invalid_argument(std::string(name) + " sequence " + std::to_string(b) + ", position " + std::to_string(i) +
                               ": token id " + std::to_string(seq[i]) + ", expected 0 to " + std::to_string(vocab - 1));
      }
    }
  }
}

/// out rows [tokens.size(), d_model] = E[token] * scale + P[first_position + i].
template <class Scalar>
void model<Scalar>::embed(side s, std::span<const token_id> tokens, index_t first_position, Scalar* out) const {
  const index_t d = config_.d_model;
  const tensor<Scalar>& table = (s == side::tgt || config_.share_embeddings) ? tgt_embed_ : src_embed_;
  const tensor<Scalar>& pos = (s == side::tgt && config_.positional == positional_encoding::learned) ? tgt_pos_ : src_pos_;
  const index_t pos_base = config_.positional == positional_encoding::learned ? config_.position_offset : 0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const index_t p = pos_base + first_position + static_cast<index_t>(i);
    auto row = make_view(out + static_cast<index_t>(i) * d, 1, d);
    row = make_view(table.data() + tokens[i] * d, 1, d) * embed_scale_ + make_view(pos.data() + p * d, 1, d);
  }
}

template <class Scalar>
encoder_output<Scalar> model<Scalar>::encode(const token_batch& src, const moe_runtime& moe) const {
  check_batch(src, side::src);
  encoder_output<Scalar> out;
  out.offsets = src.offsets;
  out.memory.resize({src.total(), config_.d_model});
  for (index_t b = 0; b < src.size(); ++b) {
    embed(side::src, src.sequence(b), 0, out.memory.data() + src.offsets[static_cast<std::size_t>(b)] * config_.d_model);
  }
  workspace<Scalar> ws;
  ws.moe = &moe;
  for (const auto& layer : encoder_) layer.forward(out.memory.matrix(), out.offsets, ws);
  if (encoder_norm_) (*encoder_norm_)(out.memory.matrix(), out.memory.matrix());
  return out;
}

template <class Scalar>
tensor<Scalar> model<Scalar>::decode(const encoder_output<Scalar>& memory, const token_batch& tgt,
                                     const moe_runtime& moe) const {
  check_batch(tgt, side::tgt);
  if (tgt.size() != memory.batch()) {
    throw invalid_argument("decode: " + std::to_string(tgt.size()) + " target sequences for " +
                           std::to_string(memory.batch()) + " sources");
  }
  const index_t d = config_.d_model;
  tensor<Scalar> x({tgt.total(), d});
  for (index_t b = 0; b < tgt.size(); ++b) embed(side::tgt, tgt.sequence(b), 0, x.data() + tgt.offsets[static_cast<std::size_t>(b)] * d);
  std::vector<index_t> src_lengths(static_cast<std::size_t>(memory.batch()));
  for (index_t b = 0; b < memory.batch(); ++b) src_lengths[static_cast<std::size_t>(b)] = memory.length(b);
  workspace<Scalar> ws;
  ws.moe = &moe;
  tensor<Scalar> kv;  // [n_src, 2 d_model], one layer at a time
  for (const auto& layer : decoder_) {
    kv.resize({memory.memory.dim(0), 2 * d});
    cross_kv(layer.cross_attn, memory.memory.matrix(), kv.matrix());
    const kv_source<Scalar> mem{kv.data(), 2 * d, memory.offsets, src_lengths};
    layer.forward(x.matrix(), tgt.offsets, mem,
                  [&](const auto& input, const auto& out) { self_attention(layer.self_attn, input, tgt.offsets, true, out, ws); },
                  ws);
  }
  if (decoder_norm_) (*decoder_norm_)(x.matrix(), x.matrix());
  return x;
}

template <class Scalar>
void model<Scalar>::log_probs(const_matrix_view<Scalar> hidden, matrix_view<Scalar> out) const {
  linear(hidden, output_weight().matrix(), generator_.bias.values(), out);
  log_softmax_rows(out);
}

template <class Scalar>
tensor<Scalar> model<Scalar>::score(const token_batch& src, const token_batch& tgt, const moe_runtime& moe) const {
  if (src.size() != tgt.size()) {
    throw invalid_argument("score: " + std::to_string(src.size()) + " source and " + std::to_string(tgt.size()) +
                           " target sequences, expected as many of each");
  }
  const auto memory = encode(src, moe);
  const auto hidden = decode(memory, tgt, moe);
  const index_t V = config_.tgt_vocab_size, T = tgt.max_length();
  tensor<Scalar> packed({tgt.total(), V});
  log_probs(std::as_const(hidden).matrix(), packed.matrix());
  tensor<Scalar> out({tgt.size(), T, V});  // zero-filled: positions past a sequence's end stay 0
  for (index_t b = 0; b < tgt.size(); ++b) {
    const index_t n = tgt.length(b);
    if (n > 0) {
      std::memcpy(out.data() + b * T * V, packed.data() + tgt.offsets[static_cast<std::size_t>(b)] * V,
                  static_cast<std::size_t>(n * V) * sizeof(Scalar));
    }
  }
  return out;
}

template <class Scalar>
void model<Scalar>::start_decoding(const encoder_output<Scalar>& memory, index_t slots_per_source, index_t max_steps,
                                   kv_cache<Scalar>& cache) const {
  if (slots_per_source < 1) {
    throw invalid_argument("start_decoding: slots_per_source " + std::to_string(slots_per_source) + ", expected >= 1");
  }
  if (max_steps < 1 || max_steps > config_.max_sequence_length()) {
    throw invalid_argument("start_decoding: max_steps " + std::to_string(max_steps) + ", expected 1 to " +
                           std::to_string(config_.max_sequence_length()) + " (max_positions)");
  }
  const index_t d = config_.d_model, batch = memory.batch();
  cache.reset(static_cast<index_t>(decoder_.size()), batch * slots_per_source, max_steps, d);
  for (std::size_t l = 0; l < decoder_.size(); ++l) {
    auto& kv = cache.cross_kv(static_cast<index_t>(l));
    kv.resize({memory.memory.dim(0), 2 * d});
    cross_kv(decoder_[l].cross_attn, memory.memory.matrix(), kv.matrix());
  }
  cache.src_offsets() = memory.offsets;
  cache.src_lengths().resize(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b) cache.src_lengths()[static_cast<std::size_t>(b)] = memory.length(b);
  for (index_t s = 0; s < batch * slots_per_source; ++s) cache.slot_source()[static_cast<std::size_t>(s)] = s / slots_per_source;
  // Attention scratch for the longest step: one query row per slot against at most max_steps
  // cached keys or the longest source, per thread. Sized now so that steps never allocate.
  index_t longest_source = 0;
  for (index_t b = 0; b < batch; ++b) longest_source = std::max(longest_source, memory.length(b));
  cache.ws().scores.resize({std::max<index_t>(1, num_threads() * std::max(max_steps, longest_source))});
}

template <class Scalar>
void model<Scalar>::decode_step(kv_cache<Scalar>& cache, std::span<const index_t> slots, std::span<const token_id> tokens,
                                matrix_view<Scalar> log_probs_out, bool raw_logits) const {
  const index_t n = static_cast<index_t>(slots.size()), d = config_.d_model, cap = cache.capacity();
  if (static_cast<index_t>(tokens.size()) != n) {
    throw invalid_argument("decode_step: " + std::to_string(tokens.size()) + " tokens for " + std::to_string(n) + " slots");
  }
  detail::check_dims("decode_step", "log_probs", log_probs_out.rows(), log_probs_out.cols(), n, config_.tgt_vocab_size);
  if (cache.n_layers() != static_cast<index_t>(decoder_.size()) || cache.d_model() != d) {
    throw invalid_argument("decode_step: the cache was not prepared by start_decoding for this model");
  }
  auto& step = cache.step_counts();
  auto& slot_offsets = cache.slot_offsets();
  auto& kv_offsets = cache.kv_offsets();
  auto& kv_lengths = cache.kv_lengths();
  auto& src_offsets = cache.src_offsets_step();
  auto& src_lengths = cache.src_lengths_step();
  auto& positions = cache.positions();
  slot_offsets.clear();
  positions.clear();
  kv_offsets.clear();
  kv_lengths.clear();
  src_offsets.clear();
  src_lengths.clear();
  auto& x = cache.x();
  x.resize({n, d});
  for (index_t i = 0; i < n; ++i) {
    const index_t s = slots[static_cast<std::size_t>(i)];
    const index_t t = cache.steps(s);  // checks the slot
    if (t >= cap) {
      throw invalid_argument("decode_step: slot " + std::to_string(s) + " is full (" + std::to_string(cap) + " steps)");
    }
    const token_id tok = tokens[static_cast<std::size_t>(i)];
    if (tok < 0 || tok >= config_.tgt_vocab_size) {
      throw invalid_argument("decode_step: token id " + std::to_string(tok) + " for slot " + std::to_string(s) +
                             ", expected 0 to " + std::to_string(config_.tgt_vocab_size - 1));
    }
    embed(side::tgt, std::span<const token_id>(&tokens[static_cast<std::size_t>(i)], 1), t, x.data() + i * d);
    slot_offsets.push_back(i);
    kv_offsets.push_back(s * cap);
    kv_lengths.push_back(t + 1);
    positions.push_back(t);
    const index_t src = cache.source(s);
    src_offsets.push_back(cache.src_offsets()[static_cast<std::size_t>(src)]);
    src_lengths.push_back(cache.src_lengths()[static_cast<std::size_t>(src)]);
  }
  slot_offsets.push_back(n);
  auto& ws = cache.ws();
  ws.moe = &cache.moe();  // MoE rows: one per slot, sequence id = slot, at position = its step
  ws.sequence_ids = slots;
  ws.first_positions = positions;
  for (std::size_t l = 0; l < decoder_.size(); ++l) {
    const auto& layer = decoder_[l];
    Scalar* self_kv = cache.self_kv(static_cast<index_t>(l)).data();
    const kv_source<Scalar> mem{cache.cross_kv(static_cast<index_t>(l)).data(), 2 * d, src_offsets, src_lengths};
    auto cached_self_attention = [&](const auto& input, const auto& out) {
      // Project this step's keys and values, append them to each slot's cache, then attend.
      ws.qkv.resize({n, 2 * d});
      linear(input, layer.self_attn.kv_weight(), layer.self_attn.kv_bias(), ws.qkv.matrix());
      for (index_t i = 0; i < n; ++i) {
        std::memcpy(self_kv + (kv_offsets[static_cast<std::size_t>(i)] + kv_lengths[static_cast<std::size_t>(i)] - 1) * 2 * d,
                    ws.qkv.data() + i * 2 * d, static_cast<std::size_t>(2 * d) * sizeof(Scalar));
      }
      attention_over_kv(layer.self_attn, input, slot_offsets, static_cast<const Scalar*>(self_kv), 2 * d, kv_offsets,
                        kv_lengths, false, std::span<const index_t>{}, out, ws);
    };
    layer.forward(x.matrix(), slot_offsets, mem, cached_self_attention, ws);
  }
  if (decoder_norm_) (*decoder_norm_)(x.matrix(), x.matrix());
  linear(std::as_const(x).matrix(), output_weight().matrix(), generator_.bias.values(), log_probs_out);
  if (!raw_logits) log_softmax_rows(log_probs_out);
  for (index_t i = 0; i < n; ++i) ++step[static_cast<std::size_t>(slots[static_cast<std::size_t>(i)])];
}

}  // namespace eigenformer
