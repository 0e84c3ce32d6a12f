// eigenformer/sampling/penalties.hpp: samplers that change the logits of listed tokens.
//
//   repetition_penalty(penalty, last_n)  CTRL's penalty (Keskar et al. 2019) as Hugging Face's
//                                        RepetitionPenaltyLogitsProcessor applies it: every
//                                        distinct token of the history (or of its last last_n
//                                        tokens) gets logit > 0 ? logit / penalty : logit * penalty
//   no_repeat_ngram(n)                   bans (logit = -inf) each token that would repeat an n-gram
//                                        of the history, as NoRepeatNGramLogitsProcessor
//   logit_bias(entries)                  adds a fixed bias to listed tokens (-inf bans a token)
//
// They find a token in O(1) while the candidates are in vocabulary order (token t at position t,
// as fill() leaves them; penalties normally run first) and otherwise with one pass over the kept
// candidates. Tokens already filtered out are skipped. History ids are checked against the
// vocabulary (invalid_argument naming the position). Each sampler keeps a scratch table of
// vocab_size() entries, allocated on its first step and reused (no allocation per step).
// Modified logits clear sorted() and normalized().
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../error.hpp"
#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

namespace detail {

/// Visits the kept candidates whose ids are listed, once per distinct id.
class token_marks {
 public:
  /// Calls f(candidate&, j) for each distinct id ids[j] (first occurrence) still among the kept
  /// candidates. Throws invalid_argument "<who>: token id <t> at position <j>, expected ..." on an
  /// id outside [0, vocab_size()), before touching anything.
  template <class F>
  void for_each(candidates& c, std::span<const token_id> ids, const char* who, F&& f) {
    const index_t v = c.vocab_size();
    for (std::size_t j = 0; j < ids.size(); ++j) {
      if (ids[j] < 0 || ids[j] >= v) {
        throw invalid_argument(std::string(who) + ": token id " + std::to_string(ids[j]) + " at position " +
                               std::to_string(j) + ", expected an id in [0, " + std::to_string(v) + ")");
      }
    }
    if (static_cast<index_t>(mark_.size()) < v) mark_.assign(static_cast<std::size_t>(v), 0);
    bool pending = false;
    for (std::size_t j = 0; j < ids.size(); ++j) {
      const token_id t = ids[j];
      std::uint32_t& m = mark_[static_cast<std::size_t>(t)];
      if (m != 0) continue;  // seen already
      if (t < c.size() && c[t].id == t) {
        m = done;
        f(c[t], j);
      } else {
        m = static_cast<std::uint32_t>(j + 1);
        pending = true;
      }
    }
    if (pending) {
      for (candidate& x : c) {
        const std::uint32_t m = mark_[static_cast<std::size_t>(x.id)];
        if (m != 0 && m != done) f(x, static_cast<std::size_t>(m - 1));
      }
    }
    for (const token_id t : ids) mark_[static_cast<std::size_t>(t)] = 0;
  }

 private:
  static constexpr std::uint32_t done = std::numeric_limits<std::uint32_t>::max();
  std::vector<std::uint32_t> mark_;  // per token: 0, 1 + index of its first listing, or done
};

}  // namespace detail

class repetition_penalty final : public cloneable_sampler<repetition_penalty> {
 public:
  /// penalty > 1 discourages repeats (1.2 in the CTRL paper); last_n = 0 looks at the whole history.
  explicit repetition_penalty(float penalty, index_t last_n = 0) : penalty_(penalty), last_n_(last_n) {
    if (!(penalty > 0.0f) || std::isinf(penalty)) {
      throw invalid_argument("repetition_penalty",
                             detail::number_string(penalty) + ", expected a finite value > 0 (1 disables)");
    }
    if (last_n < 0) {
      throw invalid_argument("repetition_penalty",
                             "last_n " + std::to_string(last_n) + ", expected a value >= 0 (0 = the whole history)");
    }
  }

  void apply(candidates& c, sampling_context& ctx) override {
    if (penalty_ == 1.0f || ctx.history.empty()) return;
    auto h = ctx.history;
    if (last_n_ > 0 && static_cast<index_t>(h.size()) > last_n_) h = h.last(static_cast<std::size_t>(last_n_));
    const float penalty = penalty_;
    marks_.for_each(c, h, "repetition_penalty: history", [penalty](candidate& x, std::size_t) {
      x.logit = x.logit > 0 ? x.logit / penalty : x.logit * penalty;
    });
    c.logits_changed();
  }

  std::string name() const override {
    return "repetition_penalty(" + detail::number_string(penalty_) +
           (last_n_ > 0 ? ", last " + std::to_string(last_n_) : std::string()) + ")";
  }

 private:
  float penalty_;
  index_t last_n_;
  detail::token_marks marks_;
};

class no_repeat_ngram final : public cloneable_sampler<no_repeat_ngram> {
 public:
  /// n >= 1; n = 1 bans every token of the history.
  explicit no_repeat_ngram(index_t n) : n_(n) {
    if (n < 1) throw invalid_argument("no_repeat_ngram", std::to_string(n) + ", expected n >= 1");
  }

  void apply(candidates& c, sampling_context& ctx) override {
    const auto h = ctx.history;
    const auto len = static_cast<index_t>(h.size());
    if (len < n_) return;  // no complete n-gram in the history yet
    // The last n - 1 tokens are the prefix; every earlier n-gram starting with it bans its last token.
    banned_.clear();
    const index_t prefix = n_ - 1;
    for (index_t i = 0; i + n_ <= len; ++i) {
      if (std::equal(h.begin() + i, h.begin() + i + prefix, h.end() - prefix)) {
        banned_.push_back(h[static_cast<std::size_t>(i + prefix)]);
      }
    }
    if (banned_.empty()) return;
    marks_.for_each(c, banned_, "no_repeat_ngram: history",
                    [](candidate& x, std::size_t) { x.logit = -std::numeric_limits<float>::infinity(); });
    c.logits_changed();
  }

  std::string name() const override { return "no_repeat_ngram(" + std::to_string(n_) + ")"; }

 private:
  index_t n_;
  std::vector<token_id> banned_;  // scratch, capacity kept between steps
  detail::token_marks marks_;
};

/// One entry of logit_bias.
struct token_bias {
  token_id id;
  float bias;
};

class logit_bias final : public cloneable_sampler<logit_bias> {
 public:
  /// Each id at most once, >= 0; each bias finite or -inf (a ban).
  explicit logit_bias(std::vector<token_bias> entries) : entries_(std::move(entries)) {
    ids_.reserve(entries_.size());
    for (std::size_t j = 0; j < entries_.size(); ++j) {
      const auto& e = entries_[j];
      const std::string token = "token " + std::to_string(e.id);
      if (e.id < 0) throw invalid_argument("logit_bias", token + ", expected an id >= 0");
      if (std::isnan(e.bias) || e.bias == std::numeric_limits<float>::infinity()) {
        throw invalid_argument("logit_bias",
                               token + " bias " + detail::number_string(e.bias) + ", expected a finite value or -inf");
      }
      if (std::find(ids_.begin(), ids_.end(), e.id) != ids_.end()) {
        throw invalid_argument("logit_bias", token + " listed twice, expected each token at most once");
      }
      ids_.push_back(e.id);
    }
  }

  void apply(candidates& c, sampling_context&) override {
    if (entries_.empty()) return;
    const auto& entries = entries_;
    marks_.for_each(c, ids_, "logit_bias", [&entries](candidate& x, std::size_t j) { x.logit += entries[j].bias; });
    c.logits_changed();
  }

  std::string name() const override { return "logit_bias(" + std::to_string(entries_.size()) + " tokens)"; }

 private:
  std::vector<token_bias> entries_;
  std::vector<token_id> ids_;  // entries_[j].id, the list token_marks visits
  detail::token_marks marks_;
};

}  // namespace eigenformer::sampling
