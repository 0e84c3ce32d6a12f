// eigenformer/sampling/chain.hpp: samplers run in the order the caller adds them; a chain is
// itself a sampler, so chains nest. sample() runs one step and returns the chosen token.
//
//   namespace efs = eigenformer::sampling;
//   efs::chain c;
//   c.add(efs::temperature(0.8f)).add(efs::top_k(40)).add(efs::distribution());
//   efs::candidates buf(vocab_size);                               // once
//   auto ctx = efs::sampling_context::for_sequence(seed, 0);
//   token_id t = efs::sample(c, logits, buf, ctx);                 // each step
//
// The chain stops at the first stage that selects a token (greedy, distribution); a chain with no
// selecting stage leaves the choice to its caller, and sample() then throws.
#pragma once

#include <concepts>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

class chain final : public sampler {
 public:
  chain() = default;
  chain(chain&&) noexcept = default;
  chain& operator=(chain&&) noexcept = default;
  /// Deep copy: every stage is clone()d.
  chain(const chain& other) : sampler(other) {
    stages_.reserve(other.stages_.size());
    for (const auto& s : other.stages_) stages_.push_back(s->clone());
  }
  chain& operator=(const chain& other) {
    if (this != &other) *this = chain(other);
    return *this;
  }

  /// Appends a stage; throws invalid_argument on a null pointer.
  chain& add(std::unique_ptr<sampler> stage) {
    if (!stage) throw invalid_argument("chain", "null sampler, expected a sampler");
    stages_.push_back(std::move(stage));
    return *this;
  }

  /// Appends a copy of a concrete sampler: c.add(top_k(40)).
  template <class S>
    requires std::derived_from<std::remove_cvref_t<S>, sampler> && (!std::same_as<std::remove_cvref_t<S>, chain>)
  chain& add(S&& stage) {
    return add(std::make_unique<std::remove_cvref_t<S>>(std::forward<S>(stage)));
  }

  /// Appends a copy of another chain as one nested stage.
  chain& add_chain(const chain& nested) { return add(std::make_unique<chain>(nested)); }

  std::size_t size() const noexcept { return stages_.size(); }
  bool empty() const noexcept { return stages_.empty(); }
  const sampler& operator[](std::size_t i) const { return *stages_.at(i); }

  void apply(candidates& c, sampling_context& ctx) override {
    for (auto& s : stages_) {
      s->apply(c, ctx);
      if (c.selected()) return;
    }
  }
  void accept(token_id t) override {
    for (auto& s : stages_) s->accept(t);
  }
  void reset() override {
    for (auto& s : stages_) s->reset();
  }
  std::unique_ptr<sampler> clone() const override { return std::make_unique<chain>(*this); }

  /// "chain(temperature(0.8), top_k(40), distribution)"
  std::string name() const override {
    std::string n = "chain(";
    for (std::size_t i = 0; i < stages_.size(); ++i) {
      if (i) n += ", ";
      n += stages_[i]->name();
    }
    return n + ")";
  }

 private:
  std::vector<std::unique_ptr<sampler>> stages_;
};

/// One step on already filled candidates: clears the selection, applies `s`, tells `s` the chosen
/// token (accept) and returns it. Throws invalid_argument if no stage selected a token.
inline token_id sample(sampler& s, candidates& c, sampling_context& ctx) {
  c.clear_selection();
  s.apply(c, ctx);
  const auto t = c.selected();
  if (!t) {
    throw invalid_argument("sampler " + s.name() +
                           ": no stage selected a token, expected a final greedy or distribution stage");
  }
  s.accept(*t);
  return *t;
}

/// One step from a logits row [V]: fills `buffer` (capacity >= V), then sample() above.
inline token_id sample(sampler& s, std::span<const float> logits, candidates& buffer, sampling_context& ctx) {
  buffer.fill(logits);
  return sample(s, buffer, ctx);
}

inline token_id sample(sampler& s, std::span<const double> logits, candidates& buffer, sampling_context& ctx) {
  buffer.fill(logits);
  return sample(s, buffer, ctx);
}

}  // namespace eigenformer::sampling
