// eigenformer/model.hpp: model<Scalar>, the encoder-decoder Transformer of
// docs/model-format.md, computing what torch.nn.Transformer computes.
//
//   encode(src)            -> encoder_output (packed memory [n_src, d_model])
//   decode(memory, tgt)    -> decoder output [n_tgt, d_model] (teacher forcing, causal)
//   score(src, tgt)        -> log-probabilities [batch, max tgt length, tgt_vocab], 0 past each end
//   start_decoding / decode_step: incremental decoding over a caller-owned kv_cache
//
// A model is immutable once built and safe to share between threads: every buffer a call needs
// lives in that call (or in the caller's kv_cache), never in the model. So does the per-call state
// of mixture-of-experts layers (moe_runtime.hpp: gate noise, router statistics): encode, decode,
// score and decode_step take a moe_runtime (default: noise off, no statistics); in decode_step
// each slot is a sequence of its own for the noise (sequence id = slot, position = its step).
//
// A decoder-only model (config.architecture "decoder-only": Llama family, Mixtral, GPT-2) has no
// encoder: encode(prompts) only checks the prompts and gives an encoder output without rows, the
// decoder layers have no cross-attention, and the prompt goes through decode_step as the first
// tokens of each slot (one causal block). score(tgt) gives next-token log-probabilities of whole
// sequences, through the same decode_step (a fresh cache, each sequence fed as one block).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
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
#include "rotary.hpp"
#include "weights.hpp"

namespace eigenformer {

/// What decode_step writes for each token it is fed.
enum class step_output {
  log_probs,  // log_softmax of the generator's output: next-token log-probabilities
  logits,     // the generator's output itself, which samplers such as the repetition penalty need
};

/// One call of model::decode_step: tokens fed to distinct slots of a kv_cache. A slot may take
/// several tokens at once (a forced target prefix, a prompt): they go through the layers as one
/// causal block and give what feeding them one at a time gives.
struct decode_request {
  std::span<const index_t> slots = {};    // [n] distinct slots of the cache
  std::span<const token_id> tokens = {};  // [m] slot i's tokens, in order, after those of slots 0 .. i-1
  std::span<const index_t> counts = {};   // [n] tokens of each slot (each >= 1), or empty: one each (m = n)
  step_output output = step_output::log_probs;
  moe_runtime moe = {};              // mixture-of-experts gate noise and router statistics
  /// [n] how many of each slot's first rows need no distribution (each < its count), or empty: none.
  /// Those rows still fill the cache; out has only the others, in order. generate() skips all but
  /// the last row of a prompt: the output projection over every prompt row is ~20 % of a 125M
  /// model's prefill.
  std::span<const index_t> skip = {};
};

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
  /// Decoder-only models: next-token log-probabilities [batch, tgt.max_length(), tgt_vocab] of
  /// whole sequences (row t predicts token t + 1); rows past a sequence's end are 0.
  tensor<Scalar> score(const token_batch& tgt, const moe_runtime& moe = {}) const;

  /// Prepares `cache` to decode `slots_per_source` hypotheses of every source of `memory`, each up
  /// to `max_steps` tokens: computes the cross-attention keys and values once. First compares the
  /// bytes the cache and its step scratch will hold (cache_bytes) with `max_bytes` and throws
  /// invalid_argument, allocating nothing, if they are over it.
  void start_decoding(const encoder_output<Scalar>& memory, index_t slots_per_source, index_t max_steps,
                      kv_cache<Scalar>& cache, std::uint64_t max_bytes = default_max_cache_bytes) const;
  /// The bytes a kv_cache started for `n_sources` sources of `source_tokens` tokens in all (the
  /// longest `longest_source`), `slots_per_source` slots each of `max_steps` steps, holds once
  /// it has served a step of one token per slot: self-attention keys and values (layers x slots x
  /// max_steps x 2 d_model, twice when slots_per_source > 1: reorder() double-buffers them),
  /// cross-attention keys and values (layers x source_tokens x 2 d_model) and the step scratch.
  /// Saturates at 2^64 - 1 instead of overflowing.
  std::uint64_t cache_bytes(index_t n_sources, index_t source_tokens, index_t longest_source, index_t slots_per_source,
                            index_t max_steps) const;
  /// The self-attention KV cache of one token of one sequence: layers x 2 (key and value) x
  /// kv_heads x d_head x sizeof(Scalar). Only the key/value heads are cached (grouped-query
  /// attention: n_kv_heads, not n_heads). A request of `slots` sequences of `steps` tokens holds
  /// slots x steps x this (twice with beam search: reorder() double-buffers); cache_bytes() adds the
  /// cross-attention keys and values of an encoder-decoder model and the step scratch.
  std::uint64_t kv_bytes_per_token() const noexcept {
    return std::uint64_t(decoder_.size()) * 2u * std::uint64_t(config_.kv_heads()) * std::uint64_t(config_.d_head()) *
           sizeof(Scalar);
  }
  /// Feeds the request's tokens to its slots and writes, for each token fed (but the skipped ones),
  /// the distribution of the token that follows it: out [m - sum(skip), tgt_vocab], in request order.
  /// Checks everything before it changes anything (slots distinct, in range and with room for
  /// their tokens, token ids, the cache's shape, out's shape) and throws invalid_argument naming
  /// the culprit, leaving the cache as it was. Allocates nothing once the cache has served a step
  /// of this size.
  void decode_step(kv_cache<Scalar>& cache, const decode_request& request, matrix_view<Scalar> out) const;
  /// One token per slot: tokens[i] to slots[i].
  void decode_step(kv_cache<Scalar>& cache, std::span<const index_t> slots, std::span<const token_id> tokens,
                   matrix_view<Scalar> out, step_output output = step_output::log_probs) const {
    decode_step(cache, decode_request{slots, tokens, {}, output, {}}, out);
  }

  /// Converts the weight matrices of every linear layer and of the output projection to `t`, once
  /// (packed_weights.hpp); embeddings, norms, biases, MoE gates and the KV cache stay Scalar. A tied
  /// output projection gets a converted copy of tgt_embed (the embedding lookup keeps the original).
  /// float32 leaves the model as it is; a model already converted is not converted again.
  void convert_weights(weight_type t);
  /// The weight type of the linear layers (float32 until convert_weights).
  weight_type weights() const noexcept { return weights_; }
  /// Bytes of every parameter as held (reduced weight matrices count their reduced size).
  std::size_t weight_bytes() const noexcept;

 private:
  /// out [n, tgt_vocab] = x [n, d_model] W_out^T + b_out: the output projection (generator.weight,
  /// or tgt_embed.weight if tied), float or converted.
  template <class X>
  void project_output(const Eigen::MatrixBase<X>& x, matrix_view<Scalar> out) const {
    if (config_.tie_output && generator_.packed.empty()) {
      linear(x, tgt_embed_.matrix(), generator_.bias.values(), out);
    } else {
      generator_(x, out);
    }
  }

  enum class side { src, tgt };
  void embed(side s, std::span<const token_id> tokens, index_t first_position, Scalar* out) const;
  void check_batch(const token_batch& batch, side s) const;
  void check_request(kv_cache<Scalar>& cache, const decode_request& r, matrix_view<Scalar> out) const;

  model_config config_;
  tensor<Scalar> src_embed_, tgt_embed_;   // [vocab, d_model] (src_embed_ empty when shared)
  tensor<Scalar> src_pos_, tgt_pos_;       // [max_positions, d_model]: learned (empty when sinusoidal)
  sinusoidal_positions<Scalar> sinusoid_;  // sinusoidal: rows computed where a token is embedded
  std::optional<rotary_embedding<Scalar>> rope_;  // rotary positions (decoder-only)
  std::vector<encoder_layer<Scalar>> encoder_;
  std::vector<decoder_layer<Scalar>> decoder_;
  std::optional<layer_norm_layer<Scalar>> encoder_norm_, decoder_norm_;
  std::optional<layer_norm_layer<Scalar>> src_embed_norm_, tgt_embed_norm_;  // embedding_norm
  linear_layer<Scalar> generator_;         // weight empty when tied; bias optional
  Scalar embed_scale_ = Scalar(1);
  index_t parameters_ = 0;
  weight_type weights_ = weight_type::float32;
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
  if (!c.share_embeddings && !c.decoder_only()) {  // decoder-only: the prompt is read with tgt_embed
    src_embed_ = w.take("src_embed.weight", {c.src_vocab_size, d});
    parameters_ += src_embed_.size();
  }
  if (c.positional == positional_encoding::learned) {
    if (!c.decoder_only()) src_pos_ = w.take("src_pos.weight", {c.max_positions, d});  // decoder-only: one table (GPT-2's wpe)
    tgt_pos_ = w.take("tgt_pos.weight", {c.max_positions, d});
    parameters_ += src_pos_.size() + tgt_pos_.size();
  } else if (c.positional == positional_encoding::sinusoidal) {
    // No table: max_positions is a limit, not a size (a file may say 10^9 at no cost).
    sinusoid_ = sinusoidal_positions<Scalar>(d, c.sinusoidal, c.position_offset);
  } else {
    // Rotary: a cos/sin table of max_positions rows. In float the angles are float32, as
    // transformers computes them; in double they are double (a true float64 computation).
    rotary_parameters p;
    p.head_dim = c.d_head();
    p.theta = c.rope_theta;
    p.scaling_factor = c.rope_scaling_factor;
    p.max_positions = c.max_positions;
    p.float32_angles = !std::is_same_v<Scalar, double>;
    rope_.emplace(p);
  }
  if (c.embedding_norm) {
    src_embed_norm_ = layer_norm_layer<Scalar>::load(w, "transformer.encoder.embed_norm", d, c.layer_norm_eps);
    tgt_embed_norm_ = layer_norm_layer<Scalar>::load(w, "transformer.decoder.embed_norm", d, c.layer_norm_eps);
    parameters_ += src_embed_norm_->parameter_count() + tgt_embed_norm_->parameter_count();
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
    decoder_norm_ = c.norm == normalization::rms_norm ? layer_norm_layer<Scalar>::load_rms(w, "transformer.decoder.norm", d, c.layer_norm_eps)
                                                      : layer_norm_layer<Scalar>::load(w, "transformer.decoder.norm", d, c.layer_norm_eps);
    parameters_ += decoder_norm_->parameter_count();
  }
  if (!c.tie_output) generator_.weight = w.take("generator.weight", {c.tgt_vocab_size, d});
  generator_.bias = w.take_optional("generator.bias", {c.tgt_vocab_size});
  parameters_ += generator_.weight.size() + generator_.bias.size();
  w.expect_empty();
  embed_scale_ = c.scale_embedding ? static_cast<Scalar>(std::sqrt(static_cast<double>(d))) : Scalar(1);
}

template <class Scalar>
void model<Scalar>::convert_weights(weight_type t) {
  if (t == weight_type::float32 || weights_ != weight_type::float32) return;
  for (auto& l : encoder_) l.convert(t);
  for (auto& l : decoder_) l.convert(t);
  if (config_.tie_output) {
    // [tgt_vocab, d_model]: the head reads a converted copy; lookups keep reading tgt_embed_.
    generator_.packed = packed_matrix<Scalar>(std::as_const(tgt_embed_).matrix(), t);
  } else {
    generator_.convert(t);
  }
  weights_ = t;
}

template <class Scalar>
std::size_t model<Scalar>::weight_bytes() const noexcept {
  std::size_t b = sizeof(Scalar) * static_cast<std::size_t>(src_embed_.size() + tgt_embed_.size() + src_pos_.size() + tgt_pos_.size());
  for (const auto& l : encoder_) b += l.self_attn.in_proj.bytes() + l.self_attn.out_proj.bytes() + l.ff.bytes() +
                                     sizeof(Scalar) * static_cast<std::size_t>(l.norm1.parameter_count() + l.norm2.parameter_count());
  for (const auto& l : decoder_) {
    b += l.self_attn.in_proj.bytes() + l.self_attn.out_proj.bytes() + l.cross_attn.in_proj.bytes() + l.cross_attn.out_proj.bytes() +
         l.ff.bytes() + sizeof(Scalar) * static_cast<std::size_t>(l.norm1.parameter_count() + l.norm2.parameter_count() + l.norm3.parameter_count());
  }
  for (const auto* n : {&encoder_norm_, &decoder_norm_, &src_embed_norm_, &tgt_embed_norm_}) {
    if (*n) b += sizeof(Scalar) * static_cast<std::size_t>((*n)->parameter_count());
  }
  return b + (generator_.packed.empty() ? generator_.bytes() : generator_.packed.bytes() + sizeof(Scalar) * static_cast<std::size_t>(generator_.bias.size()));
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

/// out rows [tokens.size(), d_model] = E[token] * scale + P[first_position + i], then the side's
/// embedding norm if the model has one.
template <class Scalar>
void model<Scalar>::embed(side s, std::span<const token_id> tokens, index_t first_position, Scalar* out) const {
  const index_t d = config_.d_model, n = static_cast<index_t>(tokens.size());
  const tensor<Scalar>& table = (s == side::tgt || config_.share_embeddings) ? tgt_embed_ : src_embed_;
  if (config_.positional == positional_encoding::learned) {
    const tensor<Scalar>& pos = s == side::tgt ? tgt_pos_ : src_pos_;
    for (index_t i = 0; i < n; ++i) {
      const index_t p = config_.position_offset + first_position + i;
      auto row = make_view(out + i * d, 1, d);
      row = make_view(table.data() + tokens[static_cast<std::size_t>(i)] * d, 1, d) * embed_scale_ +
            make_view(pos.data() + p * d, 1, d);
    }
  } else if (config_.positional == positional_encoding::rotary) {
    for (index_t i = 0; i < n; ++i) {  // no position vector: rotary positions turn q and k instead
      auto row = make_view(out + i * d, 1, d);
      row = make_view(table.data() + tokens[static_cast<std::size_t>(i)] * d, 1, d) * embed_scale_;
    }
  } else {
    for (index_t i = 0; i < n; ++i) {  // the position's row first, in place, then the token's
      Scalar* o = out + i * d;
      sinusoid_.row(first_position + i, o);
      auto row = make_view(o, 1, d);
      row = make_view(table.data() + tokens[static_cast<std::size_t>(i)] * d, 1, d) * embed_scale_ +
            make_view(static_cast<const Scalar*>(o), 1, d);
    }
  }
  const auto& norm = s == side::src ? src_embed_norm_ : tgt_embed_norm_;
  if (norm) (*norm)(make_view(out, n, d), make_view(out, n, d));  // row-wise: in place is safe
}

template <class Scalar>
encoder_output<Scalar> model<Scalar>::encode(const token_batch& src, const moe_runtime& moe) const {
  check_batch(src, side::src);
  encoder_output<Scalar> out;
  if (config_.decoder_only()) {  // no encoder: no rows for any source (the prompts are fed by decode_step)
    out.offsets.assign(static_cast<std::size_t>(src.size()) + 1, 0);
    out.memory.resize({0, config_.d_model});
    return out;
  }
  out.offsets = src.offsets;
  out.memory.resize({src.total(), config_.d_model});
  for (index_t b = 0; b < src.size(); ++b) {
    embed(side::src, src.sequence(b), 0, out.memory.data() + src.offsets[static_cast<std::size_t>(b)] * config_.d_model);
  }
  workspace<Scalar> ws;
  const forward_context ctx{{out.offsets, {}, {}}, moe};
  for (const auto& layer : encoder_) layer.forward(out.memory.matrix(), ctx, ws);
  if (encoder_norm_) (*encoder_norm_)(out.memory.matrix(), out.memory.matrix());
  return out;
}

template <class Scalar>
tensor<Scalar> model<Scalar>::decode(const encoder_output<Scalar>& memory, const token_batch& tgt,
                                     const moe_runtime& moe) const {
  if (config_.decoder_only()) {
    throw invalid_argument("decode", "a decoder-only model has no encoder output to decode from; use score(tgt) or decode_step");
  }
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
  const forward_context ctx{{tgt.offsets, {}, {}}, moe};
  tensor<Scalar> kv;  // [n_src, 2 d_model], one layer at a time
  for (const auto& layer : decoder_) {
    kv.resize({memory.memory.dim(0), 2 * d});
    cross_kv(layer.cross_attn, memory.memory.matrix(), kv.matrix());
    const kv_view<Scalar> mem{kv.data(), 2 * d, memory.offsets, src_lengths, false};
    layer.forward(x.matrix(), ctx, mem,
                  [&](const auto& input, const auto& out) { self_attention(layer.self_attn, input, tgt.offsets, true, out, ws); },
                  ws);
  }
  if (decoder_norm_) (*decoder_norm_)(x.matrix(), x.matrix());
  return x;
}

template <class Scalar>
void model<Scalar>::log_probs(const_matrix_view<Scalar> hidden, matrix_view<Scalar> out) const {
  project_output(hidden, out);
  log_softmax_rows(out);
}

template <class Scalar>
tensor<Scalar> model<Scalar>::score(const token_batch& src, const token_batch& tgt, const moe_runtime& moe) const {
  if (config_.decoder_only()) {
    throw invalid_argument("score", "a decoder-only model scores sequences alone: use score(tgt)");
  }
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
tensor<Scalar> model<Scalar>::score(const token_batch& tgt, const moe_runtime& moe) const {
  if (!config_.decoder_only()) {
    throw invalid_argument("score", "an encoder-decoder model scores a target given its source: use score(src, tgt)");
  }
  check_batch(tgt, side::tgt);
  const index_t V = config_.tgt_vocab_size, T = tgt.max_length(), B = tgt.size();
  tensor<Scalar> out({B, T, V});  // zero-filled: positions past a sequence's end stay 0
  if (T == 0) return out;
  // Teacher forcing is prefill: each non-empty sequence is one causal block of its own slot.
  encoder_output<Scalar> none;
  none.offsets.assign(static_cast<std::size_t>(B) + 1, 0);
  none.memory.resize({0, config_.d_model});
  kv_cache<Scalar> cache;
  start_decoding(none, 1, T, cache, std::numeric_limits<std::uint64_t>::max());
  std::vector<index_t> slots, counts;
  std::vector<token_id> tokens;
  for (index_t b = 0; b < B; ++b) {
    if (tgt.length(b) == 0) continue;
    slots.push_back(b);
    counts.push_back(tgt.length(b));
    const auto seq = tgt.sequence(b);
    tokens.insert(tokens.end(), seq.begin(), seq.end());
  }
  tensor<Scalar> packed({static_cast<index_t>(tokens.size()), V});
  decode_step(cache, decode_request{slots, tokens, counts, step_output::log_probs, moe}, packed.matrix());
  index_t row = 0;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    std::memcpy(out.data() + slots[i] * T * V, packed.data() + row * V, static_cast<std::size_t>(counts[i] * V) * sizeof(Scalar));
    row += counts[i];
  }
  return out;
}

template <class Scalar>
std::uint64_t model<Scalar>::cache_bytes(index_t n_sources, index_t source_tokens, index_t longest_source,
                                         index_t slots_per_source, index_t max_steps) const {
  using detail::sat_add;
  using detail::sat_mul;
  using detail::u64;
  const std::uint64_t L = decoder_.size(), d = u64(config_.d_model), f = u64(config_.d_ff), sz = sizeof(Scalar);
  const std::uint64_t kvd = u64(config_.kv_heads() * config_.d_head());  // only the KV heads are cached
  const std::uint64_t slots = sat_mul(u64(n_sources), u64(slots_per_source));
  std::uint64_t self = sat_mul({L, slots, u64(max_steps), 2 * kvd, sz});  // slots x max_steps x kv_bytes_per_token()
  if (slots_per_source > 1) self = sat_mul(self, 2);  // reorder()'s second buffer
  const std::uint64_t cross = config_.decoder_only() ? 0 : sat_mul({L, u64(source_tokens), 2 * d, sz});
  // Step scratch: x, the layers' workspace for one row per slot (qkv, q, ctx, sub, normed:
  // 7 d_model; the feed-forward's d_ff, or k of them in a mixture-of-experts layer), the attention
  // scores of every thread, and the per-slot index vectors.
  // (Gated experts hold the gate and up projections side by side: 2 d_ff per routed row.)
  const std::uint64_t fe = config_.ff == feed_forward_kind::gated ? 2 * f : f;
  const std::uint64_t ff = config_.moe ? sat_mul(fe + 2 * d, u64(config_.moe->gate_kind == gate::softmax ? config_.moe->n_experts
                                                                                                       : config_.moe->top_k))
                                        : f;
  std::uint64_t scratch = sat_mul({slots, 8 * d + ff, sz});
  scratch = sat_add(scratch, sat_mul({u64(num_threads()), u64(detail::head_scratch_block<Scalar>(std::max(max_steps, longest_source))), sz}));
  scratch = sat_add(scratch, sat_mul(slots, 6 * sizeof(index_t) + 1));
  return sat_add(sat_add(self, cross), scratch);
}

template <class Scalar>
void model<Scalar>::start_decoding(const encoder_output<Scalar>& memory, index_t slots_per_source, index_t max_steps,
                                   kv_cache<Scalar>& cache, std::uint64_t max_bytes) const {
  if (slots_per_source < 1) {
    throw invalid_argument("start_decoding: slots_per_source", std::to_string(slots_per_source) + ", expected >= 1");
  }
  if (max_steps < 1 || max_steps > config_.max_sequence_length()) {
    throw invalid_argument("start_decoding: max_steps", std::to_string(max_steps) + ", expected 1 to " +
                                                            std::to_string(config_.max_sequence_length()) + " (max_positions)");
  }
  const index_t d = config_.d_model, batch = memory.batch();
  if (memory.memory.rank() != 2 || memory.memory.dim(1) != d || memory.offsets.empty() || memory.offsets.front() != 0 ||
      memory.offsets.back() != memory.memory.dim(0)) {
    throw invalid_argument("start_decoding: memory", "not an encoder output of this model (expected [n, " +
                                                         std::to_string(d) + "] rows packed by offsets)");
  }
  index_t longest_source = 0;
  for (index_t b = 0; b < batch; ++b) longest_source = std::max(longest_source, memory.length(b));
  if (const std::uint64_t need = cache_bytes(batch, memory.memory.dim(0), longest_source, slots_per_source, max_steps);
      need > max_bytes) {
    throw invalid_argument("start_decoding", std::to_string(slots_per_source) + " slots per source x " + std::to_string(batch) +
                                                 " sources x " + std::to_string(max_steps) + " steps: the KV cache needs " +
                                                 detail::bytes_string(need) + ", over the limit of " +
                                                 detail::bytes_string(max_bytes) + "; raise max_bytes");
  }
  cache.reset(static_cast<index_t>(decoder_.size()), batch * slots_per_source, max_steps, d,
              config_.kv_heads() * config_.d_head());
  for (std::size_t l = 0; l < decoder_.size(); ++l) {
    auto& kv = cache.cross_kv_[l];
    if (!decoder_[l].has_cross) {  // decoder-only: nothing to attend to but the cache
      kv.resize({0, 2 * d});
      continue;
    }
    kv.resize({memory.memory.dim(0), 2 * d});
    cross_kv(decoder_[l].cross_attn, memory.memory.matrix(), kv.matrix());
  }
  cache.src_offsets_ = memory.offsets;
  cache.src_lengths_.resize(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b) cache.src_lengths_[static_cast<std::size_t>(b)] = memory.length(b);
  for (index_t s = 0; s < batch * slots_per_source; ++s) cache.slot_source_[static_cast<std::size_t>(s)] = s / slots_per_source;
  // Attention scratch for the usual step: one query row per slot against at most max_steps
  // cached keys or the longest source, per thread. Sized now so that steps never allocate.
  cache.scratch_.ws.scores.resize({num_threads() * detail::head_scratch_block<Scalar>(std::max(max_steps, longest_source))});
}

template <class Scalar>
void model<Scalar>::check_request(kv_cache<Scalar>& cache, const decode_request& r, matrix_view<Scalar> out) const {
  const index_t n = static_cast<index_t>(r.slots.size()), d = config_.d_model;
  if (cache.n_layers() != static_cast<index_t>(decoder_.size()) || cache.d_model() != d || cache.n_slots() < 1 ||
      cache.kv_dim() != config_.kv_heads() * config_.d_head() ||
      static_cast<index_t>(cache.src_offsets_.size()) != cache.n_sources() + 1) {
    throw invalid_argument("decode_step: cache", "not prepared by start_decoding for this model (" +
                                                     std::to_string(cache.n_layers()) + " layers of width " +
                                                     std::to_string(cache.d_model()) + ", expected " +
                                                     std::to_string(decoder_.size()) + " of width " + std::to_string(d) + ")");
  }
  if (!r.counts.empty() && static_cast<index_t>(r.counts.size()) != n) {
    throw invalid_argument("decode_step: counts", std::to_string(r.counts.size()) + " counts for " + std::to_string(n) +
                                                      " slots, expected one per slot (or none)");
  }
  if (!r.skip.empty() && static_cast<index_t>(r.skip.size()) != n) {
    throw invalid_argument("decode_step: skip", std::to_string(r.skip.size()) + " values for " + std::to_string(n) +
                                                    " slots, expected one per slot (or none)");
  }
  index_t skipped = 0;
  auto& seen = cache.scratch_.seen;
  std::fill(seen.begin(), seen.end(), char{0});
  index_t m = 0;
  for (index_t i = 0; i < n; ++i) {
    const index_t s = r.slots[static_cast<std::size_t>(i)];
    if (s < 0 || s >= cache.n_slots()) {
      throw invalid_argument("decode_step: slots", "slot " + std::to_string(s) + ", expected 0 to " +
                                                       std::to_string(cache.n_slots() - 1));
    }
    if (seen[static_cast<std::size_t>(s)]) {
      throw invalid_argument("decode_step: slots", "slot " + std::to_string(s) + " given twice, expected distinct slots");
    }
    seen[static_cast<std::size_t>(s)] = 1;
    const index_t count = r.counts.empty() ? 1 : r.counts[static_cast<std::size_t>(i)];
    if (count < 1) {
      throw invalid_argument("decode_step: counts", std::to_string(count) + " tokens for slot " + std::to_string(s) +
                                                        ", expected >= 1");
    }
    const index_t t = cache.steps_[static_cast<std::size_t>(s)];
    if (count > cache.capacity() - t) {
      throw invalid_argument("decode_step: slots", "slot " + std::to_string(s) + " has consumed " + std::to_string(t) +
                                                       " of its " + std::to_string(cache.capacity()) + " steps, no room for " +
                                                       std::to_string(count) + " more");
    }
    const index_t skip = r.skip.empty() ? 0 : r.skip[static_cast<std::size_t>(i)];
    if (skip < 0 || skip >= count) {
      throw invalid_argument("decode_step: skip", std::to_string(skip) + " rows of slot " + std::to_string(s) + ", expected 0 to " +
                                                      std::to_string(count - 1) + " (its last row always has an output)");
    }
    skipped += skip;
    m += count;
  }
  if (static_cast<index_t>(r.tokens.size()) != m) {
    throw invalid_argument("decode_step: tokens", std::to_string(r.tokens.size()) + " tokens, expected " +
                                                      std::to_string(m) + " (the slots' counts)");
  }
  for (token_id tok : r.tokens) {
    if (tok < 0 || tok >= config_.tgt_vocab_size) {
      throw invalid_argument("decode_step: tokens", "token id " + std::to_string(tok) + ", expected 0 to " +
                                                        std::to_string(config_.tgt_vocab_size - 1));
    }
  }
  detail::check_dims("decode_step", "out", out.rows(), out.cols(), m - skipped, config_.tgt_vocab_size);
}

template <class Scalar>
void model<Scalar>::decode_step(kv_cache<Scalar>& cache, const decode_request& request, matrix_view<Scalar> out) const {
  check_request(cache, request, out);  // from here on nothing can fail on the caller's input
  if (request.slots.empty()) return;
  const index_t n = static_cast<index_t>(request.slots.size()), d = config_.d_model, cap = cache.capacity();
  const index_t m = static_cast<index_t>(request.tokens.size());
  auto& sc = cache.scratch_;
  sc.q_offsets.clear();
  sc.positions.clear();
  sc.kv_offsets.clear();
  sc.kv_lengths.clear();
  sc.src_offsets.clear();
  sc.src_lengths.clear();
  sc.row_positions.clear();
  sc.x.resize({m, d});
  const index_t kvd = cache.kv_dim();
  index_t row = 0;
  for (index_t i = 0; i < n; ++i) {
    const index_t s = request.slots[static_cast<std::size_t>(i)];
    const index_t t = cache.steps_[static_cast<std::size_t>(s)];
    const index_t count = request.counts.empty() ? 1 : request.counts[static_cast<std::size_t>(i)];
    embed(side::tgt, request.tokens.subspan(static_cast<std::size_t>(row), static_cast<std::size_t>(count)), t,
          sc.x.data() + row * d);
    sc.q_offsets.push_back(row);
    sc.kv_offsets.push_back(s * cap);
    sc.kv_lengths.push_back(t + count);
    sc.positions.push_back(t);
    if (rope_)
      for (index_t j = 0; j < count; ++j) sc.row_positions.push_back(t + j);
    const auto src = static_cast<std::size_t>(cache.slot_source_[static_cast<std::size_t>(s)]);
    sc.src_offsets.push_back(cache.src_offsets_[src]);
    sc.src_lengths.push_back(cache.src_lengths_[src]);
    row += count;
  }
  sc.q_offsets.push_back(m);
  // MoE rows: slot i is sequence slots[i], its first row at position steps(slot).
  const forward_context ctx{{sc.q_offsets, request.slots, sc.positions}, request.moe};
  auto& ws = sc.ws;
  for (std::size_t l = 0; l < decoder_.size(); ++l) {
    const auto& layer = decoder_[l];
    Scalar* self_kv = cache.self_kv_[l].data();
    const kv_view<Scalar> mem{cache.cross_kv_[l].data(), 2 * d, sc.src_offsets, sc.src_lengths, false};
    const kv_view<Scalar> cached{self_kv, 2 * kvd, sc.kv_offsets, sc.kv_lengths, true};
    auto cached_self_attention = [&](const auto& input, const auto& sub) {
      // Project the new tokens' keys and values, append them to their slots' rows, then attend
      // (causally: a slot's token j sees the cache and the slot's tokens up to j).
      // Rotary positions turn the keys (at each token's absolute position) before they are cached,
      // and the queries inside attention_over_kv.
      ws.qkv.resize({m, 2 * kvd});
      layer.self_attn.project_kv(input, ws.qkv.matrix());
      if (rope_) rope_->apply(make_view(ws.qkv.data(), m, kvd, 2 * kvd), sc.row_positions);
      for (index_t i = 0; i < n; ++i) {
        const index_t first = sc.q_offsets[static_cast<std::size_t>(i)], rows = sc.q_offsets[static_cast<std::size_t>(i) + 1] - first;
        const index_t dest = sc.kv_offsets[static_cast<std::size_t>(i)] + sc.positions[static_cast<std::size_t>(i)];
        std::memcpy(self_kv + dest * 2 * kvd, ws.qkv.data() + first * 2 * kvd, static_cast<std::size_t>(rows * 2 * kvd) * sizeof(Scalar));
      }
      attention_over_kv(layer.self_attn, input, sc.q_offsets, cached, sub, ws, rope_ ? &*rope_ : nullptr,
                        std::span<const index_t>(sc.row_positions));
    };
    layer.forward(sc.x.matrix(), ctx, mem, cached_self_attention, ws);
  }
  index_t kept = m;
  if (!request.skip.empty()) {  // the rows that get a distribution, moved up in order (row r >= its new index)
    kept = 0;
    for (index_t i = 0; i < n; ++i) {
      const index_t first = sc.q_offsets[static_cast<std::size_t>(i)] + request.skip[static_cast<std::size_t>(i)];
      const index_t last = sc.q_offsets[static_cast<std::size_t>(i) + 1];
      for (index_t r = first; r < last; ++r, ++kept)
        if (r != kept) std::memcpy(sc.x.data() + kept * d, sc.x.data() + r * d, static_cast<std::size_t>(d) * sizeof(Scalar));
    }
  }
  auto rows = make_view(sc.x.data(), kept, d);  // [kept, d_model]
  if (decoder_norm_) (*decoder_norm_)(rows, rows);
  project_output(make_view(static_cast<const Scalar*>(sc.x.data()), kept, d, d), out);
  if (request.output == step_output::log_probs) log_softmax_rows(out);
  // Only now does the state advance: an exception above leaves every slot at its step (rows
  // written past a slot's step are never read before they are written again).
  for (index_t i = 0; i < n; ++i) {
    const auto s = static_cast<std::size_t>(request.slots[static_cast<std::size_t>(i)]);
    cache.steps_[s] += sc.q_offsets[static_cast<std::size_t>(i) + 1] - sc.q_offsets[static_cast<std::size_t>(i)];
  }
}

}  // namespace eigenformer
