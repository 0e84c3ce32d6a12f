// eigenformer/kv_cache.hpp: kv_cache<Scalar>, the caller-owned state of incremental decoding.
//
// It holds state only: per decoder layer the self-attention keys and values of every token each
// slot has consumed (preallocated for the whole generation: a step never reallocates) and the
// cross-attention keys and values, computed once from the encoder output; per slot the number of
// tokens consumed and the source it decodes. The scratch buffers of a step live in the cache too,
// so that decoding allocates nothing after its first step, but only the model reaches them.
//
// Slots: one per hypothesis being decoded (batch x beams). Slot s reads the encoder output of
// source source(s) and has consumed steps(s) tokens. reorder() lets beam search make slot i
// continue the history of slot parents[i].
//
// Layout (attention.hpp's kv_view, so cached self-attention and cross-attention share one kernel):
//   self_kv(layer)   [n_slots * capacity, 2 kv_dim]: slot s, step t is row s * capacity + t;
//                    columns [0, kv_dim) are k, [kv_dim, 2 kv_dim) are v. kv_dim = d_model, or
//                    n_kv_heads * d_head with grouped-query attention (only the KV heads are held).
//   cross_kv(layer)  [n_src_tokens, 2 d_model], packed by source sequence (src_offsets()).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "detail/byte_count.hpp"
#include "error.hpp"
#include "tensor.hpp"
#include "workspace.hpp"

namespace eigenformer {

template <class Scalar>
class model;

/// The default memory limit of decoding (model::start_decoding's max_bytes,
/// generation_options::max_cache_bytes): 16 GiB. Decoding checks what its KV cache and buffers
/// will need against the limit before it allocates anything, and throws invalid_argument naming
/// the request and the bytes if it is over, instead of std::bad_alloc (or the OOM killer) midway.
inline constexpr std::uint64_t default_max_cache_bytes = std::uint64_t{16} << 30;

namespace detail {
/// The scratch of model::decode_step: reused from step to step, never state. Sizes: n slots in
/// the step, m tokens fed in all (m = n when each slot takes one token).
template <class Scalar>
struct decode_scratch {
  workspace<Scalar> ws;
  tensor<Scalar> x;                 // [m, d_model] the layers' activations
  std::vector<index_t> q_offsets;   // [n + 1] first row of each slot's tokens in x
  std::vector<index_t> kv_offsets;  // [n] first self-attention key row of each slot
  std::vector<index_t> kv_lengths;  // [n] key rows each slot sees: its steps + its tokens
  std::vector<index_t> positions;   // [n] position of each slot's first token (its steps)
  std::vector<index_t> src_offsets; // [n] first cross-attention key row of each slot's source
  std::vector<index_t> src_lengths; // [n] length of each slot's source
  std::vector<index_t> row_positions; // [m] absolute position of each token fed (rotary positions)
  std::vector<char> seen;           // [n_slots] slot validation: each slot at most once
};
}  // namespace detail

template <class Scalar>
class kv_cache {
 public:
  kv_cache() = default;

  index_t n_layers() const noexcept { return static_cast<index_t>(self_kv_.size()); }
  index_t n_slots() const noexcept { return n_slots_; }
  /// The most tokens a slot can consume.
  index_t capacity() const noexcept { return capacity_; }
  index_t d_model() const noexcept { return d_model_; }
  /// Width of a cached key (and value) row: d_model, or n_kv_heads * d_head (grouped-query attention).
  index_t kv_dim() const noexcept { return kv_dim_; }
  /// Source sequences of the encoder output the cache was started on.
  index_t n_sources() const noexcept { return static_cast<index_t>(src_lengths_.size()); }

  /// Tokens slot s has consumed.
  index_t steps(index_t slot) const { return steps_[checked(slot, "slot")]; }
  /// The source sequence slot s decodes.
  index_t source(index_t slot) const { return slot_source_[checked(slot, "slot")]; }

  /// Beam search: slot i continues the history of slot parents[i] (a permutation with repeats).
  /// Copies only the rows written so far; storage is double-buffered, so nothing is allocated
  /// after the first reorder. Throws (changing nothing) unless parents has one valid slot per slot.
  void reorder(std::span<const index_t> parents) {
    if (static_cast<index_t>(parents.size()) != n_slots_) {
      throw invalid_argument("kv_cache::reorder", std::to_string(parents.size()) + " parents, expected " +
                                                      std::to_string(n_slots_));
    }
    for (index_t p : parents) checked(p, "kv_cache::reorder: parent");
    const std::size_t row_bytes = static_cast<std::size_t>(2 * kv_dim_) * sizeof(Scalar);
    for (std::size_t l = 0; l < self_kv_.size(); ++l) {
      spare_[l].resize(self_kv_[l].shape());
      for (index_t i = 0; i < n_slots_; ++i) {
        const index_t p = parents[static_cast<std::size_t>(i)];
        const index_t rows = steps_[static_cast<std::size_t>(p)];
        if (rows > 0) {
          std::memcpy(spare_[l].data() + i * capacity_ * 2 * kv_dim_, self_kv_[l].data() + p * capacity_ * 2 * kv_dim_,
                      static_cast<std::size_t>(rows) * row_bytes);
        }
      }
      self_kv_[l].swap(spare_[l]);
    }
    reorder_vector(steps_, parents);
    reorder_vector(slot_source_, parents);
  }

  // ---- read by model<Scalar> (attention views over the state) ----
  const tensor<Scalar>& self_kv(index_t layer) const { return self_kv_.at(static_cast<std::size_t>(layer)); }
  const tensor<Scalar>& cross_kv(index_t layer) const { return cross_kv_.at(static_cast<std::size_t>(layer)); }
  /// [n_sources + 1] first cross-attention key row of each source; [n_sources] their lengths.
  std::span<const index_t> src_offsets() const noexcept { return src_offsets_; }
  std::span<const index_t> src_lengths() const noexcept { return src_lengths_; }

 private:
  friend class model<Scalar>;

  /// Sizes the cache for `n_slots` hypotheses of up to `capacity` tokens each, over `n_layers`
  /// decoder layers of width d_model (keys and values kv_dim wide), every slot at step 0. Storage
  /// is reused when large enough.
  void reset(index_t n_layers, index_t n_slots, index_t capacity, index_t d_model, index_t kv_dim) {
    n_slots_ = n_slots;
    capacity_ = capacity;
    d_model_ = d_model;
    kv_dim_ = kv_dim;
    self_kv_.resize(static_cast<std::size_t>(n_layers));
    spare_.resize(static_cast<std::size_t>(n_layers));
    cross_kv_.resize(static_cast<std::size_t>(n_layers));
    for (auto& t : self_kv_) t.resize({n_slots * capacity, 2 * kv_dim});
    steps_.assign(static_cast<std::size_t>(n_slots), 0);
    slot_source_.assign(static_cast<std::size_t>(n_slots), 0);
    scratch_.seen.assign(static_cast<std::size_t>(n_slots), 0);
    // Step scratch for the usual step, one token per slot, so that steps never allocate.
    const auto n = static_cast<std::size_t>(n_slots);
    scratch_.x.resize({std::max<index_t>(n_slots, 1), d_model});
    scratch_.q_offsets.reserve(n + 1);
    for (auto* v : {&scratch_.kv_offsets, &scratch_.kv_lengths, &scratch_.positions, &scratch_.src_offsets,
                    &scratch_.src_lengths, &scratch_.row_positions})
      v->reserve(n);
  }

  std::size_t checked(index_t slot, const char* what) const {
    if (slot < 0 || slot >= n_slots_) {
      throw invalid_argument(what, std::to_string(slot) + ", expected a slot 0 to " + std::to_string(n_slots_ - 1));
    }
    return static_cast<std::size_t>(slot);
  }

  void reorder_vector(std::vector<index_t>& v, std::span<const index_t> parents) {
    order_.assign(v.begin(), v.end());
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = order_[static_cast<std::size_t>(parents[i])];
  }

  // state
  index_t n_slots_ = 0, capacity_ = 0, d_model_ = 0, kv_dim_ = 0;
  std::vector<tensor<Scalar>> self_kv_, cross_kv_;
  std::vector<index_t> src_offsets_, src_lengths_, slot_source_, steps_;
  // storage that only serves reorder() and decode_step
  std::vector<tensor<Scalar>> spare_;
  std::vector<index_t> order_;
  detail::decode_scratch<Scalar> scratch_;
};

}  // namespace eigenformer
