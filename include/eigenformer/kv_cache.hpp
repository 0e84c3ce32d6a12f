// eigenformer/kv_cache.hpp: kv_cache<Scalar>, the caller-owned state of incremental decoding.
//
// Per decoder layer it holds the self-attention keys and values of every token generated so far
// (preallocated for the whole generation: a step never reallocates) and the cross-attention keys
// and values, computed once from the encoder output. It also owns the scratch buffers of a step,
// so that decoding allocates nothing after its first step, and the caller's mixture-of-experts
// options for the steps (moe(): gate noise and router statistics; default: noise off, no statistics).
//
// Slots: one per hypothesis being decoded (batch x beams). Slot s reads the encoder output of
// source slot_source[s] and has consumed steps[s] tokens. reorder() lets beam search make slot i
// continue the history of slot parents[i].
//
// Layout (the same as attention.hpp's kv buffers, so cached self-attention and cross-attention
// share one kernel):
//   self_kv[layer]  [n_slots * capacity, 2 d_model]: slot s, step t is row s * capacity + t;
//                   columns [0, d_model) are k, [d_model, 2 d_model) are v.
//   cross_kv[layer] [n_src_tokens, 2 d_model], packed by source sequence.
#pragma once

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "error.hpp"
#include "moe_runtime.hpp"
#include "workspace.hpp"
#include "tensor.hpp"

namespace eigenformer {

template <class Scalar>
class kv_cache {
 public:
  kv_cache() = default;

  /// Sizes the cache for `n_slots` hypotheses of up to `capacity` tokens each, over `n_layers`
  /// decoder layers of width d_model. Existing storage is reused when it is large enough.
  void reset(index_t n_layers, index_t n_slots, index_t capacity, index_t d_model) {
    if (n_slots < 0 || capacity < 1) {
      throw invalid_argument("kv_cache: " + std::to_string(n_slots) + " slots of capacity " + std::to_string(capacity) +
                             ", expected >= 0 slots and capacity >= 1");
    }
    n_slots_ = n_slots;
    capacity_ = capacity;
    d_model_ = d_model;
    self_kv_.resize(static_cast<std::size_t>(n_layers));
    spare_.resize(static_cast<std::size_t>(n_layers));
    cross_kv_.resize(static_cast<std::size_t>(n_layers));
    for (auto& t : self_kv_) t.resize({n_slots * capacity, 2 * d_model});
    steps_.assign(static_cast<std::size_t>(n_slots), 0);
    slot_source_.assign(static_cast<std::size_t>(n_slots), 0);
    // Step scratch: sized for the largest step up front, so steps never allocate.
    x_.resize({std::max<index_t>(n_slots, 1), d_model});
    slot_offsets_.reserve(static_cast<std::size_t>(n_slots) + 1);
    kv_offsets_.reserve(static_cast<std::size_t>(n_slots));
    kv_lengths_.reserve(static_cast<std::size_t>(n_slots));
    positions_.reserve(static_cast<std::size_t>(n_slots));
    src_offsets_step_.reserve(static_cast<std::size_t>(n_slots));
    src_lengths_step_.reserve(static_cast<std::size_t>(n_slots));
  }

  index_t n_layers() const noexcept { return static_cast<index_t>(self_kv_.size()); }
  index_t n_slots() const noexcept { return n_slots_; }
  index_t capacity() const noexcept { return capacity_; }
  index_t d_model() const noexcept { return d_model_; }

  /// Tokens slot s has consumed.
  index_t steps(index_t slot) const { return steps_[checked(slot)]; }
  /// The source sequence slot s decodes.
  index_t source(index_t slot) const { return slot_source_[checked(slot)]; }

  /// Beam search: slot i continues the history of slot parents[i] (a permutation with repeats).
  /// Copies only the rows written so far; storage is double-buffered, so nothing is allocated
  /// after the first reorder.
  void reorder(std::span<const index_t> parents) {
    if (static_cast<index_t>(parents.size()) != n_slots_) {
      throw invalid_argument("kv_cache::reorder: " + std::to_string(parents.size()) + " parents, expected " +
                             std::to_string(n_slots_));
    }
    for (index_t p : parents) checked(p);
    const std::size_t row_bytes = static_cast<std::size_t>(2 * d_model_) * sizeof(Scalar);
    for (std::size_t l = 0; l < self_kv_.size(); ++l) {
      spare_[l].resize(self_kv_[l].shape());
      for (index_t i = 0; i < n_slots_; ++i) {
        const index_t p = parents[static_cast<std::size_t>(i)];
        const index_t rows = steps_[static_cast<std::size_t>(p)];
        if (rows > 0) {
          std::memcpy(spare_[l].data() + i * capacity_ * 2 * d_model_, self_kv_[l].data() + p * capacity_ * 2 * d_model_,
                      static_cast<std::size_t>(rows) * row_bytes);
        }
      }
      self_kv_[l].swap(spare_[l]);
    }
    reorder_vector(steps_, parents);
    reorder_vector(slot_source_, parents);
  }

  /// Mixture-of-experts options of the following decode steps: the noisy_top_k noise source and
  /// where the router statistics go (both caller-owned; null: off). reset() leaves them alone.
  moe_runtime& moe() noexcept { return moe_; }
  const moe_runtime& moe() const noexcept { return moe_; }

  // ---- used by model::start_decoding and model::decode_step ----
  tensor<Scalar>& self_kv(index_t layer) { return self_kv_[static_cast<std::size_t>(layer)]; }
  tensor<Scalar>& cross_kv(index_t layer) { return cross_kv_[static_cast<std::size_t>(layer)]; }
  std::vector<index_t>& src_offsets() noexcept { return src_offsets_; }
  std::vector<index_t>& src_lengths() noexcept { return src_lengths_; }
  std::vector<index_t>& slot_source() noexcept { return slot_source_; }
  std::vector<index_t>& step_counts() noexcept { return steps_; }
  workspace<Scalar>& ws() noexcept { return ws_; }
  tensor<Scalar>& x() noexcept { return x_; }
  std::vector<index_t>& slot_offsets() noexcept { return slot_offsets_; }
  std::vector<index_t>& kv_offsets() noexcept { return kv_offsets_; }
  std::vector<index_t>& kv_lengths() noexcept { return kv_lengths_; }
  std::vector<index_t>& positions() noexcept { return positions_; }
  std::vector<index_t>& src_offsets_step() noexcept { return src_offsets_step_; }
  std::vector<index_t>& src_lengths_step() noexcept { return src_lengths_step_; }

 private:
  std::size_t checked(index_t slot) const {
    if (slot < 0 || slot >= n_slots_) {
      throw invalid_argument("kv_cache: slot " + std::to_string(slot) + ", expected 0 to " + std::to_string(n_slots_ - 1));
    }
    return static_cast<std::size_t>(slot);
  }

  void reorder_vector(std::vector<index_t>& v, std::span<const index_t> parents) {
    scratch_.assign(v.begin(), v.end());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = scratch_[static_cast<std::size_t>(parents[i])];
  }

  index_t n_slots_ = 0, capacity_ = 0, d_model_ = 0;
  moe_runtime moe_;
  std::vector<tensor<Scalar>> self_kv_, spare_, cross_kv_;
  std::vector<index_t> src_offsets_, src_lengths_, slot_source_, steps_, scratch_;
  // step scratch
  workspace<Scalar> ws_;
  tensor<Scalar> x_;  // [n_active, d_model]
  std::vector<index_t> slot_offsets_, kv_offsets_, kv_lengths_, positions_, src_offsets_step_, src_lengths_step_;
};

}  // namespace eigenformer
