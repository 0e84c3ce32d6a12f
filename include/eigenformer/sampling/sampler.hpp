// eigenformer/sampling/sampler.hpp: the interface every sampler implements, built-in or user's.
//
// A sampler transforms a step's candidates in place: it filters them (top-k, top-p, ...), changes
// logits (temperature, penalties) or selects the token (greedy, distribution). Samplers compose
// in a `chain` (chain.hpp), itself a sampler. The shape follows llama.cpp's llama_sampler_i
// (apply / accept / reset / clone).
//
// A user sampler needs nothing but this header and candidates.hpp:
//
//   struct ban_token final : eigenformer::sampling::cloneable_sampler<ban_token> {
//     eigenformer::token_id banned;
//     explicit ban_token(eigenformer::token_id t) : banned(t) {}
//     void apply(eigenformer::sampling::candidates& c, eigenformer::sampling::sampling_context&) override {
//       c.keep_if([&](const eigenformer::sampling::candidate& x) { return x.id != banned; });
//     }
//     std::string name() const override { return "ban_token"; }
//   };
//
// Contract for apply(): keep what you keep in [0, size()), maintain the flags (clear sorted() if
// you reorder, call logits_changed() if you change logits; keep_if and truncate do this for you),
// and call select() only if you are a final stage. The decode loop runs one clone() of the chain
// per sequence, so any state must be deep-copied by clone(). A sampler object is not thread-safe
// (built-ins keep scratch tables): one per sequence, never shared between threads.
#pragma once

#include <charconv>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "../detail/rng.hpp"
#include "../types.hpp"
#include "candidates.hpp"

namespace eigenformer::sampling {

/// What a sampler may know about the sequence it samples for. The decode loop keeps one per
/// sequence and updates `history` before each step.
struct sampling_context {
  /// This sequence's random stream (see detail/rng.hpp); the only source of randomness.
  eigenformer::detail::rng rng;
  /// The sequence's tokens so far, oldest first, as the decode loop keeps them (Hugging Face's
  /// processors see the whole decoder input, start token included). Penalties read it.
  std::span<const token_id> history = {};

  /// The context of sequence `index` of a batch decoded with `seed`: stream
  /// eigenformer::detail::rng::stream(seed, index), so a sequence's tokens do not depend on its batch.
  static sampling_context for_sequence(std::uint64_t seed, std::uint64_t index) {
    return sampling_context{eigenformer::detail::rng::stream(seed, index), {}};
  }
};

class sampler {
 public:
  virtual ~sampler() = default;

  /// Transforms one step's candidates.
  virtual void apply(candidates& c, sampling_context& ctx) = 0;
  /// Told the token that was finally chosen this step (sample() calls it).
  virtual void accept(token_id) {}
  /// Back to the state of a fresh sampler (new sequence).
  virtual void reset() {}
  /// A deep copy, state included.
  virtual std::unique_ptr<sampler> clone() const = 0;
  /// For messages and logs, e.g. "top_p(0.95)".
  virtual std::string name() const { return "sampler"; }

 protected:
  sampler() = default;
  sampler(const sampler&) = default;
  sampler& operator=(const sampler&) = default;
};

/// Implements clone() by copy construction: derive as `struct mine : cloneable_sampler<mine>`.
template <class Derived>
class cloneable_sampler : public sampler {
 public:
  std::unique_ptr<sampler> clone() const override {
    return std::make_unique<Derived>(static_cast<const Derived&>(*this));
  }
};

namespace detail {
/// Shortest round-trip decimal form of a float ("0.95", "1.5", "-inf"), locale-independent.
inline std::string number_string(float v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}
}  // namespace detail

}  // namespace eigenformer::sampling
