// eigenformer/moe_runtime.hpp: what a caller hands a mixture-of-experts model for one call, and
// what it gets back: the gate noise of noisy_top_k (off unless asked for) and the router statistics.
//
// A model is immutable and shared between threads, so this per-call state lives in the caller's
// objects and reaches the layers through a moe_runtime (two pointers, both null by default):
//
//   eigenformer::seeded_moe_noise noise(1234);        // noisy_top_k noise on, reproducible
//   eigenformer::moe_router_stats stats;              // expert balance of the last call
//   auto lp = model.score(src, tgt, {.noise = &noise, .stats = &stats});
//   for (const auto& layer : stats.layers())          // one entry per MoE layer
//     layer.scope, layer.tokens, layer.counts[e];     // tokens each expert received
//
//   cache.moe() = {.noise = &noise, .stats = &stats}; // the same for model::decode_step
//
// The noise is a training device (Shazeer et al. 2017): with `noise` null, noisy_top_k computes
// exactly what top_k computes. A test injects its own noise by deriving from moe_noise_source.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "detail/rng.hpp"
#include "error.hpp"
#include "types.hpp"

namespace eigenformer {

/// The identity of one mixture-of-experts layer, as noise sources and statistics see it.
struct moe_layer_info {
  index_t id = 0;          // 0 .. (MoE layers of the model) - 1: encoder layers first, then decoder layers
  std::string_view scope;  // "transformer.decoder.layers.1"
  index_t n_experts = 0;
};

/// The packed token rows an MoE layer routes in one call, and who they are: sequence b owns rows
/// offsets[b] .. offsets[b+1]; its row offsets[b] + i is position first_position(b) + i of the
/// caller's sequence sequence(b). In encode/decode/score sequence b of the batch is sequence b,
/// starting at position 0; in decode_step each slot is a sequence (sequence = slot) whose rows
/// start at the slot's step.
struct moe_rows {
  std::span<const index_t> offsets;          // [batch + 1]
  std::span<const index_t> sequence_ids;     // [batch], or empty: sequence b is b
  std::span<const index_t> first_positions;  // [batch], or empty: every sequence starts at 0

  index_t batch() const noexcept { return offsets.empty() ? 0 : static_cast<index_t>(offsets.size()) - 1; }
  index_t rows() const noexcept { return offsets.empty() ? 0 : offsets.back(); }
  index_t sequence(index_t b) const noexcept {
    return sequence_ids.empty() ? b : sequence_ids[static_cast<std::size_t>(b)];
  }
  index_t first_position(index_t b) const noexcept {
    return first_positions.empty() ? 0 : first_positions[static_cast<std::size_t>(b)];
  }
};

/// Where noisy_top_k draws its eps ~ N(0, 1) from. fill() is called once per MoE layer and call
/// (never per token) and must write eps[r * n_experts + e] for every row r of `rows`.
class moe_noise_source {
 public:
  virtual ~moe_noise_source() = default;
  virtual void fill(const moe_layer_info& layer, const moe_rows& rows, std::span<double> eps) = 0;
};

/// Reproducible noise: eps of (layer, sequence, position) is a pure function of the seed and
/// those three numbers (detail::rng stream per token), so it depends neither on which other
/// sequences share the batch, nor on threads, nor on teacher forcing versus step-by-step decoding.
class seeded_moe_noise final : public moe_noise_source {
 public:
  explicit seeded_moe_noise(std::uint64_t seed) noexcept : seed_(seed) {}
  std::uint64_t seed() const noexcept { return seed_; }

  void fill(const moe_layer_info& layer, const moe_rows& rows, std::span<double> eps) override {
    const std::uint64_t layer_seed = detail::splitmix64_at(seed_, static_cast<std::uint64_t>(layer.id) + 1);
    const index_t E = layer.n_experts;
    for (index_t b = 0; b < rows.batch(); ++b) {
      const index_t first = rows.offsets[static_cast<std::size_t>(b)];
      const index_t last = rows.offsets[static_cast<std::size_t>(b) + 1];
      const auto seq = static_cast<std::uint64_t>(rows.sequence(b));
      for (index_t r = first; r < last; ++r) {
        const auto pos = static_cast<std::uint64_t>(rows.first_position(b) + (r - first));
        detail::rng g = detail::rng::stream(layer_seed, (seq << 32) ^ pos);
        for (index_t e = 0; e < E; ++e) eps[static_cast<std::size_t>(r * E + e)] = g.normal();
      }
    }
  }

 private:
  std::uint64_t seed_;
};

/// The routing of one MoE layer in the last call that ran it.
struct moe_layer_stats {
  std::string scope;                     // "transformer.encoder.layers.0"
  index_t tokens = 0;                    // tokens the layer routed (real tokens only: never padding)
  std::vector<index_t> counts;           // [n_experts]: tokens each expert received (softmax gate: all of them)
  std::vector<std::int64_t> cumulative;  // [n_experts]: counts summed over every call since reset()
  /// With moe_router_stats::keep_choices, top_k / noisy_top_k gates only: the chosen experts of
  /// every token, [tokens, k] in packed row order, each row by descending gate logit.
  std::vector<index_t> choices;
  index_t k = 0;                         // experts per token in `choices` (0 for the softmax gate)
  /// With moe_router_stats::keep_logits: the gate (router) logits of every token before the
  /// softmax, noise included, [tokens, n_experts] in packed row order (transformers' router_logits).
  std::vector<double> logits;
};

/// Per-layer router statistics, filled by the MoE layers of the calls it is passed to. Entry i is
/// MoE layer i (moe_layer_info::id); a layer's entry is overwritten each time it runs, so after
/// score() both sides are fresh, after decode_step only the decoder layers.
class moe_router_stats {
 public:
  /// Also record every token's chosen experts (moe_layer_stats::choices).
  bool keep_choices = false;
  /// Also record every token's gate logits (moe_layer_stats::logits).
  bool keep_logits = false;

  std::span<const moe_layer_stats> layers() const noexcept { return layers_; }
  /// The entry of `scope`, or null if no layer of that scope has run.
  const moe_layer_stats* find(std::string_view scope) const noexcept {
    for (const auto& l : layers_)
      if (l.scope == scope) return &l;
    return nullptr;
  }
  /// Zeroes every count (the entries stay).
  void reset() noexcept {
    for (auto& l : layers_) {
      l.tokens = 0;
      std::fill(l.counts.begin(), l.counts.end(), index_t{0});
      std::fill(l.cumulative.begin(), l.cumulative.end(), std::int64_t{0});
      l.choices.clear();
      l.logits.clear();
    }
  }

  /// Used by the layers: the entry of `layer`, created (allocating) on the layer's first run only.
  moe_layer_stats& entry(const moe_layer_info& layer) {
    if (layer.id < 0) throw invalid_argument("moe_router_stats: layer id " + std::to_string(layer.id));
    if (static_cast<index_t>(layers_.size()) <= layer.id) layers_.resize(static_cast<std::size_t>(layer.id) + 1);
    auto& l = layers_[static_cast<std::size_t>(layer.id)];
    if (l.scope != layer.scope) l.scope.assign(layer.scope);
    if (static_cast<index_t>(l.counts.size()) != layer.n_experts) {
      l.counts.assign(static_cast<std::size_t>(layer.n_experts), 0);
      l.cumulative.assign(static_cast<std::size_t>(layer.n_experts), 0);
    }
    return l;
  }

 private:
  std::vector<moe_layer_stats> layers_;
};

/// The per-call options of a mixture-of-experts model; both null: noise off, no statistics.
struct moe_runtime {
  moe_noise_source* noise = nullptr;  // noisy_top_k gate noise (ignored by the other gates)
  moe_router_stats* stats = nullptr;  // where each MoE layer records its routing
};

/// What a layer's forward pass is handed besides its input rows: who the packed rows are and the
/// caller's mixture-of-experts options. Attention reads rows.offsets; MoE layers read all of it.
struct forward_context {
  moe_rows rows;
  moe_runtime moe;
};

}  // namespace eigenformer
