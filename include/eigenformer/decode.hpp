// eigenformer/decode.hpp: generate(), autoregressive decoding of a batch of sources with a KV
// cache: greedy, sampled through any sampler (sampling/), or beam search; with streaming.
//
//   eigenformer::generation_options opt;
//   opt.max_new_tokens = 64;
//   auto chain = eigenformer::make_chain({.temperature = 0.8f, .top_p = 0.95f});
//   opt.sampler = &chain;                 // nullptr: greedy
//   opt.on_token = [](const eigenformer::token_event& e) { std::cout << e.token << ' '; return true; };
//   auto results = eigenformer::generate(model, eigenformer::token_batch::from_sequences({{5, 6, 7}}), opt);
//
// Every sequence of a batch gets exactly what it would get alone: its own sampler clone and its
// own random stream, (seed, stream_offset + its index), so splitting a file into batches of any
// size (set stream_offset to the index of the batch's first line) changes no output. Finished
// sequences leave the batch and cost nothing more. After the first step, a step allocates
// nothing (tests/test_decode.cpp proves it with a counting allocator).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "batch.hpp"
#include "kv_cache.hpp"
#include "model.hpp"
#include "sampling/chain.hpp"

namespace eigenformer {

/// What the streaming callback sees: one chosen token of one sequence.
struct token_event {
  index_t sequence = 0;  // index of the source in the batch
  index_t step = 0;      // 0 for the first generated token
  token_id token = 0;
  double log_prob = 0;   // the model's log-probability of the token (before any sampler filter)
  bool is_end = false;   // an end token: the sequence stops after this event
};

/// Return false to stop generating for that sequence.
using token_callback = std::function<bool(const token_event&)>;

struct generation_options {
  index_t max_new_tokens = 128;  // also bounded by the model's max_positions
  index_t min_new_tokens = 0;    // end tokens are forbidden before this many tokens
  std::vector<token_id> end_tokens;  // empty: the model's eos_id
  index_t beam_size = 1;         // > 1: beam search (deterministic; no sampler)
  double length_penalty = 1.0;   // beam search ranks finished hypotheses by score / length^length_penalty
  const eigenformer::sampler* sampler = nullptr;  // cloned per sequence; nullptr: greedy
  std::uint64_t seed = 0;
  std::uint64_t stream_offset = 0;   // sequence b draws from random stream (seed, stream_offset + b)
  bool return_log_probs = false;     // fill generation_result::log_probs
  index_t return_alternatives = 0;   // fill generation_result::alternatives with the n most likely tokens per step
  std::vector<std::vector<token_id>> prefix;  // forced first target tokens per sequence (empty: none)
  token_callback on_token;           // streaming; with beam search, called with the best hypothesis once a source finishes
  moe_runtime moe;                   // mixture-of-experts gate noise and router statistics (default: off)
};

struct alternative {
  token_id id = 0;
  double log_prob = 0;
};

struct generation_result {
  std::vector<token_id> tokens;   // generated ids, forced prefix included, BOS and end token excluded
  double score = 0;               // sum of log-probabilities (end token included); beam: divided by length^penalty
  bool ended = false;             // stopped by an end token (not by max_new_tokens or the callback)
  std::vector<double> log_probs;  // per token, when return_log_probs (the end token's last, if ended)
  std::vector<std::vector<alternative>> alternatives;  // per step, when return_alternatives > 0
};

namespace detail {

/// The n largest entries of `row` (ties: lower id first), written to `out` in descending order.
/// Single pass with a small sorted buffer: O(V) for the small n of beams and alternatives.
template <class Row>
void top_n(const Row& row, index_t n, std::vector<alternative>& out) {
  out.clear();
  n = std::min<index_t>(n, row.size());
  for (index_t v = 0; v < row.size(); ++v) {
    const double x = static_cast<double>(row[v]);
    if (static_cast<index_t>(out.size()) == n && !(x > out.back().log_prob)) continue;
    if (static_cast<index_t>(out.size()) == n) out.pop_back();
    auto it = std::upper_bound(out.begin(), out.end(), x, [](double val, const alternative& a) { return val > a.log_prob; });
    out.insert(it, alternative{static_cast<token_id>(v), x});
  }
}

template <class Row>
double log_sum_exp(const Row& row) {
  const auto m = row.maxCoeff();
  if (m == -std::numeric_limits<std::decay_t<decltype(m)>>::infinity()) return static_cast<double>(m);
  return static_cast<double>(m) + std::log(static_cast<double>((row.array() - m).exp().sum()));
}

inline void validate(const generation_options& o, const model_config& c, index_t batch) {
  if (o.max_new_tokens < 1) throw invalid_argument("max_new_tokens: " + std::to_string(o.max_new_tokens) + ", expected >= 1");
  if (o.min_new_tokens < 0 || o.min_new_tokens > o.max_new_tokens) {
    throw invalid_argument("min_new_tokens: " + std::to_string(o.min_new_tokens) + ", expected 0 to max_new_tokens " +
                           std::to_string(o.max_new_tokens));
  }
  if (o.beam_size < 1) throw invalid_argument("beam_size: " + std::to_string(o.beam_size) + ", expected >= 1");
  if (o.beam_size > 1 && o.sampler) {
    throw invalid_argument("beam_size: " + std::to_string(o.beam_size) + " with a sampler; beam search is deterministic, "
                           "expected beam_size 1 to sample");
  }
  if (!std::isfinite(o.length_penalty)) throw invalid_argument("length_penalty: expected a finite number");
  if (o.return_alternatives < 0) throw invalid_argument("return_alternatives: expected >= 0");
  for (token_id t : o.end_tokens) {
    if (t < 0 || t >= c.tgt_vocab_size) {
      throw invalid_argument("end_tokens: token id " + std::to_string(t) + ", expected 0 to " + std::to_string(c.tgt_vocab_size - 1));
    }
  }
  if (!o.prefix.empty() && static_cast<index_t>(o.prefix.size()) != batch) {
    throw invalid_argument("prefix: " + std::to_string(o.prefix.size()) + " prefixes for " + std::to_string(batch) +
                           " sequences, expected one per sequence (or none)");
  }
  for (std::size_t b = 0; b < o.prefix.size(); ++b)
    for (token_id t : o.prefix[b])
      if (t < 0 || t >= c.tgt_vocab_size) {
        throw invalid_argument("prefix of sequence " + std::to_string(b) + ": token id " + std::to_string(t) +
                               ", expected 0 to " + std::to_string(c.tgt_vocab_size - 1));
      }
}

}  // namespace detail

template <class Scalar>
std::vector<generation_result> generate_beam(const model<Scalar>& m, const encoder_output<Scalar>& memory,
                                             const generation_options& o);

/// Decodes every source of `src`; returns one result per source, in order.
template <class Scalar>
std::vector<generation_result> generate(const model<Scalar>& m, const token_batch& src, const generation_options& o) {
  const model_config& c = m.config();
  detail::validate(o, c, src.size());
  const auto memory = m.encode(src, o.moe);
  if (o.beam_size > 1) return generate_beam(m, memory, o);

  const index_t batch = src.size(), V = c.tgt_vocab_size;
  const index_t max_steps = std::min(o.max_new_tokens, c.max_sequence_length());
  const std::vector<token_id> ends = o.end_tokens.empty() ? std::vector<token_id>{c.eos_id} : o.end_tokens;
  auto is_end = [&](token_id t) { return std::find(ends.begin(), ends.end(), t) != ends.end(); };

  std::vector<generation_result> results(static_cast<std::size_t>(batch));
  if (batch == 0) return results;
  kv_cache<Scalar> cache;
  m.start_decoding(memory, 1, max_steps, cache);
  cache.moe() = o.moe;

  // Per-sequence sampler state: a clone of the caller's chain and its own random stream.
  std::vector<std::unique_ptr<sampler>> samplers;
  std::vector<sampling_context> contexts;
  std::vector<std::vector<token_id>> history(static_cast<std::size_t>(batch));
  if (o.sampler) {
    for (index_t b = 0; b < batch; ++b) {
      samplers.push_back(o.sampler->clone());
      contexts.push_back(sampling_context::for_sequence(o.seed, o.stream_offset + static_cast<std::uint64_t>(b)));
    }
  }
  for (auto& h : history) h.reserve(static_cast<std::size_t>(max_steps));
  for (auto& r : results) {  // the loop below then appends without allocating
    r.tokens.reserve(static_cast<std::size_t>(max_steps));
    if (o.return_log_probs) r.log_probs.reserve(static_cast<std::size_t>(max_steps));
  }
  candidates buffer(o.sampler ? V : 0);
  std::vector<alternative> alternatives;

  std::vector<index_t> active(static_cast<std::size_t>(batch));
  std::vector<token_id> inputs(static_cast<std::size_t>(batch), c.bos_id);
  for (index_t b = 0; b < batch; ++b) active[static_cast<std::size_t>(b)] = b;
  tensor<Scalar> logits({batch, V});

  for (index_t step = 0; !active.empty(); ++step) {
    const index_t n = static_cast<index_t>(active.size());
    auto rows = make_view(logits.data(), n, V);
    m.decode_step(cache, active, std::span<const token_id>(inputs.data(), active.size()), rows, /*raw_logits=*/true);
    std::size_t kept = 0;
    for (index_t i = 0; i < n; ++i) {
      const index_t b = active[static_cast<std::size_t>(i)];
      auto& r = results[static_cast<std::size_t>(b)];
      auto row = rows.row(i);
      const double lse = detail::log_sum_exp(row);
      if (o.return_alternatives > 0) {
        detail::top_n(row, o.return_alternatives, alternatives);
        for (auto& a : alternatives) a.log_prob -= lse;
        r.alternatives.push_back(alternatives);
      }
      const std::vector<token_id>* prefix = o.prefix.empty() ? nullptr : &o.prefix[static_cast<std::size_t>(b)];
      token_id tok;
      double lp;
      if (prefix && step < static_cast<index_t>(prefix->size())) {
        tok = (*prefix)[static_cast<std::size_t>(step)];
        lp = static_cast<double>(row[tok]) - lse;
        if (o.sampler) samplers[static_cast<std::size_t>(b)]->accept(tok);
      } else {
        if (step < o.min_new_tokens)
          for (token_id e : ends) row[e] = -std::numeric_limits<Scalar>::infinity();
        if (o.sampler) {
          auto& ctx = contexts[static_cast<std::size_t>(b)];
          ctx.history = history[static_cast<std::size_t>(b)];
          tok = sample(*samplers[static_cast<std::size_t>(b)], std::span<const Scalar>(row.data(), static_cast<std::size_t>(V)),
                       buffer, ctx);
        } else {
          index_t best = 0;
          row.maxCoeff(&best);  // the first maximum: ties go to the lower id
          tok = static_cast<token_id>(best);
        }
        lp = static_cast<double>(row[tok]) - lse;
      }
      history[static_cast<std::size_t>(b)].push_back(tok);
      const bool end = is_end(tok);
      r.score += lp;
      if (o.return_log_probs) r.log_probs.push_back(lp);
      bool go_on = true;
      if (o.on_token) go_on = o.on_token(token_event{b, step, tok, lp, end});
      if (end) {
        r.ended = true;
        continue;
      }
      r.tokens.push_back(tok);
      if (!go_on || step + 1 >= max_steps) continue;
      active[kept] = b;
      inputs[kept] = tok;
      ++kept;
    }
    active.resize(kept);
  }
  return results;
}

/// Beam search: beam_size hypotheses per source, each step extended by their 2 x beam_size best
/// tokens; a hypothesis ending in an end token is set aside with score / length^length_penalty
/// (length counts the end token); a source stops when beam_size hypotheses have ended or at
/// max_new_tokens (the live beams then join the finished ones, unended).
template <class Scalar>
std::vector<generation_result> generate_beam(const model<Scalar>& m, const encoder_output<Scalar>& memory,
                                             const generation_options& o) {
  const model_config& c = m.config();
  const index_t batch = memory.batch(), K = o.beam_size, V = c.tgt_vocab_size;
  const index_t max_steps = std::min(o.max_new_tokens, c.max_sequence_length());
  const std::vector<token_id> ends = o.end_tokens.empty() ? std::vector<token_id>{c.eos_id} : o.end_tokens;
  auto is_end = [&](token_id t) { return std::find(ends.begin(), ends.end(), t) != ends.end(); };
  constexpr double minus_inf = -std::numeric_limits<double>::infinity();

  struct hypothesis {
    std::vector<token_id> tokens;
    std::vector<double> log_probs;
    double score = 0;  // sum of log-probs
    bool ended = false;
    token_id end_token = 0;
  };
  struct expansion {
    double score;
    index_t beam;
    token_id token;
    double log_prob;
  };
  std::vector<generation_result> results(static_cast<std::size_t>(batch));
  if (batch == 0) return results;
  kv_cache<Scalar> cache;
  m.start_decoding(memory, K, max_steps, cache);
  cache.moe() = o.moe;

  const index_t slots = batch * K;
  std::vector<hypothesis> beams(static_cast<std::size_t>(slots)), next_beams(static_cast<std::size_t>(slots));
  std::vector<double> beam_score(static_cast<std::size_t>(slots), minus_inf);
  std::vector<std::vector<hypothesis>> finished(static_cast<std::size_t>(batch));
  std::vector<char> done(static_cast<std::size_t>(batch), 0);
  for (index_t b = 0; b < batch; ++b) beam_score[static_cast<std::size_t>(b * K)] = 0;  // one live beam to start

  auto penalised = [&](const hypothesis& h) {
    return h.score / std::pow(static_cast<double>(std::max<std::size_t>(h.log_probs.size(), 1)), o.length_penalty);
  };
  std::vector<index_t> active, parents(static_cast<std::size_t>(slots));
  std::vector<token_id> inputs;
  std::vector<expansion> pool;
  std::vector<alternative> best;
  tensor<Scalar> log_probs({slots, V});

  for (index_t step = 0; step < max_steps; ++step) {
    active.clear();
    inputs.clear();
    for (index_t s = 0; s < slots; ++s) {
      if (done[static_cast<std::size_t>(s / K)] || beam_score[static_cast<std::size_t>(s)] == minus_inf) continue;
      active.push_back(s);
      const auto& t = beams[static_cast<std::size_t>(s)].tokens;
      inputs.push_back(t.empty() ? c.bos_id : t.back());
    }
    if (active.empty()) break;
    auto rows = make_view(log_probs.data(), static_cast<index_t>(active.size()), V);
    m.decode_step(cache, active, inputs, rows);
    for (index_t s = 0; s < slots; ++s) parents[static_cast<std::size_t>(s)] = s;

    std::size_t a = 0;
    for (index_t b = 0; b < batch; ++b) {
      if (done[static_cast<std::size_t>(b)]) continue;
      pool.clear();
      const std::vector<token_id>* prefix = o.prefix.empty() ? nullptr : &o.prefix[static_cast<std::size_t>(b)];
      const bool forced = prefix && step < static_cast<index_t>(prefix->size());
      for (; a < active.size() && active[a] / K == b; ++a) {
        const index_t s = active[a];
        auto row = rows.row(static_cast<index_t>(a));
        if (step < o.min_new_tokens)
          for (token_id e : ends) row[e] = -std::numeric_limits<Scalar>::infinity();
        if (forced) {
          const token_id t = (*prefix)[static_cast<std::size_t>(step)];
          best.assign(1, alternative{t, static_cast<double>(row[t])});
        } else {
          detail::top_n(row, 2 * K, best);
        }
        for (const auto& e : best) {
          if (e.log_prob == minus_inf) continue;
          pool.push_back({beam_score[static_cast<std::size_t>(s)] + e.log_prob, s % K, e.id, e.log_prob});
        }
      }
      std::sort(pool.begin(), pool.end(), [](const expansion& x, const expansion& y) {
        if (x.score != y.score) return x.score > y.score;
        if (x.beam != y.beam) return x.beam < y.beam;
        return x.token < y.token;
      });
      index_t live = 0;
      for (std::size_t r = 0; r < pool.size() && live < K; ++r) {
        const expansion& e = pool[r];
        hypothesis h = beams[static_cast<std::size_t>(b * K + e.beam)];
        h.log_probs.push_back(e.log_prob);
        h.score = e.score;
        if (is_end(e.token)) {
          if (static_cast<index_t>(r) < K) {  // an end token counts only among the K best expansions
            h.ended = true;
            h.end_token = e.token;
            finished[static_cast<std::size_t>(b)].push_back(std::move(h));
          }
          continue;
        }
        h.tokens.push_back(e.token);
        next_beams[static_cast<std::size_t>(b * K + live)] = std::move(h);
        parents[static_cast<std::size_t>(b * K + live)] = b * K + e.beam;
        beam_score[static_cast<std::size_t>(b * K + live)] = e.score;
        ++live;
      }
      for (index_t k = live; k < K; ++k) beam_score[static_cast<std::size_t>(b * K + k)] = minus_inf;
      for (index_t k = 0; k < live; ++k) beams[static_cast<std::size_t>(b * K + k)] = std::move(next_beams[static_cast<std::size_t>(b * K + k)]);
      const bool last = step + 1 >= max_steps;
      if (static_cast<index_t>(finished[static_cast<std::size_t>(b)].size()) >= K || live == 0 || last) {
        if (last || live == 0)
          for (index_t k = 0; k < live; ++k) finished[static_cast<std::size_t>(b)].push_back(beams[static_cast<std::size_t>(b * K + k)]);
        done[static_cast<std::size_t>(b)] = 1;
      }
    }
    cache.reorder(parents);
  }

  for (index_t b = 0; b < batch; ++b) {
    auto& f = finished[static_cast<std::size_t>(b)];
    auto& r = results[static_cast<std::size_t>(b)];
    if (f.empty()) continue;
    const auto top = std::max_element(f.begin(), f.end(), [&](const hypothesis& x, const hypothesis& y) {
      return penalised(x) < penalised(y);
    });
    r.tokens = top->tokens;
    r.score = penalised(*top);
    r.ended = top->ended;
    if (o.return_log_probs) r.log_probs = top->log_probs;
    if (o.on_token) {
      for (std::size_t i = 0; i < top->log_probs.size(); ++i) {
        const bool end = i == top->tokens.size();
        const token_id t = end ? top->end_token : top->tokens[i];
        if (!o.on_token(token_event{b, static_cast<index_t>(i), t, top->log_probs[i], end})) break;
      }
    }
  }
  return results;
}

}  // namespace eigenformer
