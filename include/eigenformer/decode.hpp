// eigenformer/decode.hpp: generate(), autoregressive decoding of a batch of sources over a KV
// cache: greedy, sampled through any sampler (sampling/), or beam search, with streaming.
//
//   eigenformer::generation_options opt;
//   opt.max_new_tokens = 64;
//   auto chain = eigenformer::sampling::make_chain({.temperature = 0.8f, .top_p = 0.95f});
//   opt.sampler = &chain;                 // nullptr: greedy; or opt.beam_size = 4
//   opt.on_token = [](const eigenformer::token_event& e) { std::cout << e.token << ' '; return true; };
//   for (const auto& r : eigenformer::generate(model, eigenformer::token_batch::from_sequences({{5, 6, 7}}), opt))
//     r.best().tokens;
//
// One search serves every mode. Each source owns beam_size slots of the cache (1 for greedy and
// sampling); a step feeds every live hypothesis its last token, and each hypothesis proposes
// continuations: the sampler's token, or its 2 x beam_size most likely tokens. Per source the
// proposals are ranked by summed log-probability and the best beam_size become the next live
// hypotheses; an end token among the beam_size best finishes its hypothesis. Greedy decoding is
// this search with one beam, so it is the beam-search code, not a second loop. The logits of every
// row pass through the same stages first, whatever the search: banned tokens, then end tokens
// before min_new_tokens are removed; a forced prefix token is taken as it is; alternatives are
// the best remaining tokens. The forced prefix of a source goes through the model in the first
// step as one causal block, with the start token.
//
// Decoder-only models (model_config::decoder_only(): Llama-family language models): each "source"
// is a prompt. The first step feeds the whole prompt (then any forced prefix) as one causal block,
// in place of the start token, which does not apply; the prompt's last row gives the first new
// token. Hypotheses hold only the new tokens, and their log-probabilities and lengths count only
// those. The cache holds the prompt and max_new_tokens more per slot; max_new_tokens is cut to what
// the longest prompt of the batch leaves of max_positions.
//
// A source finishes when beam_size hypotheses have ended, when no live hypothesis is left, when its
// hypotheses reach max_new_tokens (they join the finished ones, unended) or, with one beam, when
// the callback returns false. Its results are then final: with one beam every token is streamed as
// it is chosen; with beam search the best hypothesis is streamed as soon as its source finishes
// (other sources of the batch may still be decoding).
//
// Every sequence of a batch gets exactly what it would get alone: its own sampler clone and its
// own random stream (seed, stream_offset + its index), so splitting a file into batches of any
// size (set stream_offset to the index of the batch's first line) changes no output. Finished
// sources leave the batch and cost nothing more. Every buffer is sized before the first step: a
// step allocates nothing, with any search and with streaming (tests/test_decode.cpp counts).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "batch.hpp"
#include "kv_cache.hpp"
#include "model.hpp"
#include "sampling/chain.hpp"

namespace eigenformer {

/// What the streaming callback sees: one final token of one sequence.
struct token_event {
  index_t sequence = 0;  // index of the source in the batch
  index_t step = 0;      // 0 for the first generated token
  token_id token = 0;
  double log_prob = 0;   // the model's log-probability of the token (before any stage or sampler)
  bool is_end = false;   // an end token: the sequence stops after this event
};

/// Return false to stop generating for that sequence (with beam search: to stop its stream).
using token_callback = std::function<bool(const token_event&)>;

struct generation_options {
  index_t max_new_tokens = 128;  // also bounded by the model's max_positions
  index_t min_new_tokens = 0;    // end tokens are forbidden before this many tokens
  std::vector<token_id> end_tokens;     // empty: the model's eos_id
  std::vector<token_id> banned_tokens;  // never generated (nor allowed in `prefix`)
  index_t beam_size = 1;         // > 1: beam search (deterministic; no sampler)
  index_t num_return_sequences = 1;  // hypotheses returned per source, best first; at most beam_size
  double length_penalty = 1.0;   // hypothesis::score divides by length^length_penalty
  /// Beam search: true stops a source as soon as beam_size hypotheses have ended (transformers'
  /// early_stopping=True; CTranslate2); false goes on while a live hypothesis might still beat the
  /// worst of the beam_size best ended ones, judged as transformers' default does (early_stopping=
  /// False): the best candidate's log-probability sum / its length^length_penalty.
  bool early_stopping = true;
  const sampling::sampler* sampler = nullptr;  // cloned per sequence; nullptr: greedy
  std::uint64_t seed = 0;            // the one seed of sampling
  std::uint64_t stream_offset = 0;   // sequence b draws from random stream (seed, stream_offset + b)
  bool return_log_probs = false;     // fill hypothesis::log_probs
  index_t return_alternatives = 0;   // fill hypothesis::alternatives with the n most likely tokens per step
  std::vector<std::vector<token_id>> prefix;  // forced first target tokens per sequence (empty: none)
  /// The decoder's first input for every sequence; unset: the model's decoder start token
  /// (model_config::bos_id). mBART starts from the target language's code: transformers'
  /// generate(decoder_start_token_id=...), CTranslate2's target_prefix of a model whose start token is
  /// null. Not generated, not returned, no log-probability.
  std::optional<token_id> start_token;
  token_callback on_token;           // streaming (see the file comment for when tokens stream)
  moe_runtime moe;                   // mixture-of-experts gate noise and router statistics (default: off)
  /// The most bytes the KV cache and the search's buffers may take (model::cache_bytes plus the
  /// hypotheses, logits and beam candidates): generate() checks before it allocates anything and
  /// throws invalid_argument naming the request and the bytes if they are over. Default 16 GiB.
  std::uint64_t max_cache_bytes = default_max_cache_bytes;
};

struct alternative {
  token_id id = 0;
  double log_prob = 0;  // the model's log-probability
};
/// Pads a step's alternatives when fewer tokens than asked for remain (the others banned).
inline constexpr alternative no_alternative{-1, -std::numeric_limits<double>::infinity()};

/// One generated sequence. Its length is tokens.size(), plus one if it ended (the end token).
struct hypothesis {
  std::vector<token_id> tokens;  // generated ids, forced prefix included, start and end token excluded
  double log_prob_sum = 0;       // sum of the model's log-probabilities of every step (end token included)
  /// What beam search ranks: (log_prob_sum less the forced prefix's log-probabilities) /
  /// max(length, 1)^length_penalty, the length counting the prefix (as transformers scores).
  double score = 0;
  bool ended = false;            // stopped by an end token (not by max_new_tokens or the callback)
  std::vector<double> log_probs;          // [length] per step, when return_log_probs
  std::vector<alternative> alternatives;  // [length x return_alternatives], when return_alternatives > 0
                                          // (no_alternative where fewer tokens were allowed)

  index_t length() const noexcept { return static_cast<index_t>(tokens.size()) + (ended ? 1 : 0); }
  /// The alternatives of step `step` (return_alternatives of them, most likely first).
  std::span<const alternative> alternatives_at(index_t step) const {
    const index_t n = length() > 0 ? static_cast<index_t>(alternatives.size()) / length() : 0;
    if (step < 0 || step >= length()) {
      throw invalid_argument("alternatives_at", "step " + std::to_string(step) + ", expected 0 to " +
                                                    std::to_string(length() - 1));
    }
    return std::span<const alternative>(alternatives).subspan(static_cast<std::size_t>(step * n), static_cast<std::size_t>(n));
  }
};

/// The result of one source: num_return_sequences hypotheses (fewer only if fewer were found), best
/// score first. Greedy and sampling give one.
struct generation_result {
  std::vector<hypothesis> hypotheses;
  const hypothesis& best() const {
    if (hypotheses.empty()) throw invalid_argument("generation_result", "no hypothesis");
    return hypotheses.front();
  }
};

namespace detail {

/// The n largest entries of `row` (ties: lower id first), written to `out` in descending order;
/// -inf entries are never listed. Single pass with a small sorted buffer: O(V) for the small n of
/// beams and alternatives; `out` must have capacity n (then it never allocates).
template <class Row>
void top_n(const Row& row, index_t n, std::vector<alternative>& out) {
  out.clear();
  n = std::min<index_t>(n, row.size());
  if (n <= 0) return;
  for (index_t v = 0; v < row.size(); ++v) {
    const double x = static_cast<double>(row[v]);
    if (x == -std::numeric_limits<double>::infinity()) continue;
    if (static_cast<index_t>(out.size()) == n) {
      if (!(x > out.back().log_prob)) continue;
      out.pop_back();
    }
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

inline void check_ids(const char* option, std::span<const token_id> ids, index_t vocab) {
  for (token_id t : ids) {
    if (t < 0 || t >= vocab) {
      throw invalid_argument(option, "token id " + std::to_string(t) + ", expected 0 to " + std::to_string(vocab - 1));
    }
  }
}

/// Rejects every option out of range and every combination that makes no sense, naming both.
inline void validate(const generation_options& o, const model_config& c, index_t batch) {
  const index_t V = c.tgt_vocab_size, max_steps = std::min(o.max_new_tokens, c.max_sequence_length());
  if (o.max_new_tokens < 1) throw invalid_argument("max_new_tokens", std::to_string(o.max_new_tokens) + ", expected >= 1");
  if (o.min_new_tokens < 0 || o.min_new_tokens > o.max_new_tokens) {
    throw invalid_argument("min_new_tokens", std::to_string(o.min_new_tokens) + ", expected 0 to max_new_tokens " +
                                                 std::to_string(o.max_new_tokens));
  }
  if (o.beam_size < 1) throw invalid_argument("beam_size", std::to_string(o.beam_size) + ", expected >= 1");
  if (o.beam_size > 1 && o.sampler) {
    throw invalid_argument("beam_size", std::to_string(o.beam_size) + " with a sampler; beam search is deterministic, "
                                                                      "expected beam_size 1 to sample");
  }
  if (o.num_return_sequences < 1 || o.num_return_sequences > o.beam_size) {
    throw invalid_argument("num_return_sequences", std::to_string(o.num_return_sequences) + " with beam_size " +
                                                       std::to_string(o.beam_size) + ", expected 1 to beam_size");
  }
  if (!std::isfinite(o.length_penalty)) throw invalid_argument("length_penalty", "expected a finite number");
  if (o.return_alternatives < 0 || o.return_alternatives > V) {
    throw invalid_argument("return_alternatives", std::to_string(o.return_alternatives) + ", expected 0 to " +
                                                      std::to_string(V) + " (the target vocabulary)");
  }
  check_ids("end_tokens", o.end_tokens, V);
  if (o.start_token) check_ids("start_token", std::span<const token_id>(&*o.start_token, 1), V);
  check_ids("banned_tokens", o.banned_tokens, V);
  if (!o.prefix.empty() && static_cast<index_t>(o.prefix.size()) != batch) {
    throw invalid_argument("prefix", std::to_string(o.prefix.size()) + " prefixes for " + std::to_string(batch) +
                                         " sequences, expected one per sequence (or none)");
  }
  const auto contains = [](std::span<const token_id> ids, token_id t) { return std::find(ids.begin(), ids.end(), t) != ids.end(); };
  for (std::size_t b = 0; b < o.prefix.size(); ++b) {
    const std::string where = "prefix of sequence " + std::to_string(b);
    check_ids(where.c_str(), o.prefix[b], V);
    if (static_cast<index_t>(o.prefix[b].size()) > max_steps) {
      throw invalid_argument(where, std::to_string(o.prefix[b].size()) + " tokens with max_new_tokens " +
                                        std::to_string(max_steps) + ", expected at most max_new_tokens");
    }
    for (token_id t : o.prefix[b]) {
      if (contains(o.banned_tokens, t)) {
        throw invalid_argument(where, "token id " + std::to_string(t) + " is in banned_tokens");
      }
      if (o.end_tokens.empty() ? t == c.eos_id : contains(o.end_tokens, t)) {
        throw invalid_argument(where, "token id " + std::to_string(t) + " is an end token (end_tokens or eos_id)");
      }
    }
  }
}

/// The bytes the search of generate() allocates besides the KV cache (saturating): live and
/// spare hypotheses, finished ones, the logits of the largest step, beam candidates, alternatives.
inline std::uint64_t search_bytes(const generation_options& o, const model_config& c, index_t batch, index_t max_steps,
                                  index_t first_tokens, std::size_t scalar_size) {
  using detail::sat_add;
  using detail::sat_mul;
  using detail::u64;
  const std::uint64_t K = u64(o.beam_size), slots = sat_mul(u64(batch), K), alts = u64(o.return_alternatives);
  // One hypothesis row: per step a token, a log-probability and its alternatives; plus its counters.
  const std::uint64_t row = sat_add(sat_mul(u64(max_steps), sat_add(sizeof(token_id) + sizeof(double), sat_mul(alts, sizeof(alternative)))),
                                    sizeof(index_t) + sizeof(double) + 1);
  // live + spare, finished (3 per slot), compact()'s K rows
  std::uint64_t total = sat_mul(row, sat_add(sat_add(sat_mul(slots, 2), sat_mul(slots, 3)), K));
  total = sat_add(total, sat_mul({std::max(slots, u64(first_tokens)), u64(c.tgt_vocab_size), scalar_size}));  // logits
  total = sat_add(total, sat_mul({2, K, K, sizeof(double) + 2 * sizeof(index_t) + sizeof(double)}));  // a source's candidates
  total = sat_add(total, sat_mul({slots, sat_add(alts, 1), sizeof(alternative)}));
  total = sat_add(total, sat_mul(slots, 4 * sizeof(index_t) + 2));  // request, parents, flags
  return total;
}

/// Throws invalid_argument (subject "max_cache_bytes"), before anything is allocated, if the KV cache
/// and the search's buffers would take more than o.max_cache_bytes.
template <class Scalar>
void check_memory(const model<Scalar>& m, const generation_options& o, const token_batch& src) {
  const index_t batch = src.size();
  if (batch == 0) return;
  const bool lm = m.config().decoder_only();
  const index_t context = lm ? src.max_length() : 0;  // decoder-only: the prompts are cached too
  const index_t max_steps = std::min(o.max_new_tokens, m.config().max_sequence_length() - context);
  index_t first_tokens = 0;
  for (index_t b = 0; b < batch; ++b) {
    first_tokens += (lm ? src.length(b) : 1) +
                    (o.prefix.empty() ? 0 : std::min(static_cast<index_t>(o.prefix[static_cast<std::size_t>(b)].size()), max_steps - 1));
  }
  const std::uint64_t cache = lm ? m.cache_bytes(batch, 0, 0, o.beam_size, context + max_steps)
                                 : m.cache_bytes(batch, src.total(), src.max_length(), o.beam_size, max_steps);
  const std::uint64_t search = search_bytes(o, m.config(), batch, max_steps, first_tokens, sizeof(Scalar));
  const std::uint64_t total = detail::sat_add(cache, search);
  if (total > o.max_cache_bytes) {
    // The subject is the option to raise, so that a caller (the tool: --max-cache-bytes) can name its own.
    throw invalid_argument("max_cache_bytes", "beam_size " + std::to_string(o.beam_size) + " x " + std::to_string(batch) +
                                                  (batch == 1 ? " source x " : " sources x ") + std::to_string(max_steps) +
                                                  " steps: the KV cache needs " + detail::bytes_string(cache) +
                                                  " and the search " + detail::bytes_string(search) + ", over the limit of " +
                                                  detail::bytes_string(o.max_cache_bytes));
  }
}

/// Hypotheses stored flat, one row each, so that a step never allocates: row r holds up to
/// `width` steps of tokens, log-probabilities and alternatives.
struct hypothesis_rows {
  index_t width = 0, n_alt = 0;
  std::vector<token_id> tokens;   // [rows, width]
  std::vector<double> log_probs;  // [rows, width]
  std::vector<alternative> alts;  // [rows, width * n_alt]
  std::vector<index_t> length;    // [rows] steps so far (the end token included)
  std::vector<double> sum;        // [rows] summed log-probabilities
  std::vector<char> ended;        // [rows]

  void reset(index_t rows, index_t w, index_t alternatives) {
    width = w;
    n_alt = alternatives;
    const auto n = static_cast<std::size_t>(rows);
    tokens.assign(n * static_cast<std::size_t>(w), 0);
    log_probs.assign(n * static_cast<std::size_t>(w), 0.0);
    alts.assign(n * static_cast<std::size_t>(w * alternatives), alternative{});
    length.assign(n, 0);
    sum.assign(n, 0.0);
    ended.assign(n, 0);
  }
  std::span<const token_id> row_tokens(index_t r) const {
    return std::span<const token_id>(tokens).subspan(static_cast<std::size_t>(r * width),
                                                     static_cast<std::size_t>(length[static_cast<std::size_t>(r)]));
  }
  token_id last(index_t r) const { return tokens[static_cast<std::size_t>(r * width + length[static_cast<std::size_t>(r)] - 1)]; }
  /// Row `to` becomes a copy of row `r` of `from`.
  void copy(index_t to, const hypothesis_rows& from, index_t r) {
    const auto len = static_cast<std::size_t>(from.length[static_cast<std::size_t>(r)]);
    std::copy_n(from.tokens.begin() + r * width, len, tokens.begin() + to * width);
    std::copy_n(from.log_probs.begin() + r * width, len, log_probs.begin() + to * width);
    std::copy_n(from.alts.begin() + r * width * n_alt, len * static_cast<std::size_t>(n_alt), alts.begin() + to * width * n_alt);
    length[static_cast<std::size_t>(to)] = from.length[static_cast<std::size_t>(r)];
    sum[static_cast<std::size_t>(to)] = from.sum[static_cast<std::size_t>(r)];
    ended[static_cast<std::size_t>(to)] = from.ended[static_cast<std::size_t>(r)];
  }
  /// Appends one step to row r; `alternatives` holds n_alt entries (or is empty when n_alt is 0).
  void push(index_t r, token_id t, double lp, std::span<const alternative> alternatives) {
    const auto i = static_cast<std::size_t>(r);
    const index_t at = length[i]++;
    tokens[static_cast<std::size_t>(r * width + at)] = t;
    log_probs[static_cast<std::size_t>(r * width + at)] = lp;
    std::copy(alternatives.begin(), alternatives.end(), alts.begin() + (r * width + at) * n_alt);
    sum[i] += lp;
  }
};

/// One source's continuation of one of its live hypotheses.
struct expansion {
  double score;     // summed log-probability after the token
  index_t beam;     // the live hypothesis it continues (0 .. beam_size - 1)
  token_id token;
  double log_prob;  // the token's log-probability
};

/// The search of the file comment, for one call of generate().
template <class Scalar>
class search {
 public:
  /// `prompts`: a decoder-only model's prompts (the sources), null for an encoder-decoder model.
  search(const model<Scalar>& m, const generation_options& o, index_t batch, const token_batch* prompts = nullptr)
      : m_(m), o_(o), batch_(batch), K_(o.beam_size), V_(m.config().tgt_vocab_size),
        prompts_(prompts), context_(prompts ? prompts->max_length() : 0),
        max_steps_(std::min(o.max_new_tokens, m.config().max_sequence_length() - context_)),
        ends_(o.end_tokens.empty() ? std::vector<token_id>{m.config().eos_id} : o.end_tokens) {}

  std::vector<generation_result> run(const encoder_output<Scalar>& memory) {
    std::vector<generation_result> results(static_cast<std::size_t>(batch_));
    if (batch_ == 0) return results;
    prepare(memory);
    while (live_sources_ > 0) step(results);
    return results;
  }

 private:
  index_t slots() const noexcept { return batch_ * K_; }
  index_t prefix_length(index_t b) const {
    return o_.prefix.empty() ? 0 : static_cast<index_t>(o_.prefix[static_cast<std::size_t>(b)].size());
  }
  bool is_end(token_id t) const { return std::find(ends_.begin(), ends_.end(), t) != ends_.end(); }
  /// The tokens the first step feeds for source b before its forced prefix: its prompt
  /// (decoder-only), or the start token.
  index_t lead_length(index_t b) const { return prompts_ ? prompts_->length(b) : 1; }

  /// Sizes every buffer for the whole generation.
  void prepare(const encoder_output<Scalar>& memory) {
    m_.start_decoding(memory, K_, context_ + max_steps_, cache_, o_.max_cache_bytes);
    const index_t S = slots(), n_alt = o_.return_alternatives;
    live_.reset(S, max_steps_, n_alt);
    spare_.reset(S, max_steps_, n_alt);
    finished_.reset(batch_ * finished_per_source(), max_steps_, n_alt);
    best_.reset(K_, max_steps_, n_alt);
    n_finished_.assign(static_cast<std::size_t>(batch_), 0);
    alive_.assign(static_cast<std::size_t>(S), 0);
    for (index_t b = 0; b < batch_; ++b) alive_[static_cast<std::size_t>(b * K_)] = 1;  // one live beam to start
    live_sources_ = batch_;
    index_t first_tokens = 0;  // the first step feeds the start token and the forced prefix
    for (index_t b = 0; b < batch_; ++b) first_tokens += lead_length(b) + std::min(prefix_length(b), max_steps_ - 1);
    const index_t rows = std::max(S, first_tokens);
    logits_.resize({rows, V_});
    req_slots_.reserve(static_cast<std::size_t>(S));
    req_counts_.reserve(static_cast<std::size_t>(S));
    req_skip_.reserve(static_cast<std::size_t>(S));
    req_tokens_.reserve(static_cast<std::size_t>(rows));
    parents_.resize(static_cast<std::size_t>(S));
    pool_.reserve(static_cast<std::size_t>(2 * K_ * K_));
    proposals_.reserve(static_cast<std::size_t>(2 * K_));
    row_alts_.reserve(static_cast<std::size_t>(n_alt));
    step_alts_.assign(static_cast<std::size_t>(S * n_alt), alternative{});
    order_.reserve(static_cast<std::size_t>(finished_per_source()));
    chosen_.reserve(static_cast<std::size_t>(K_));
    if (o_.sampler) {
      buffer_ = sampling::candidates(V_);
      for (index_t b = 0; b < batch_; ++b) {
        samplers_.push_back(o_.sampler->clone());
        contexts_.push_back(sampling::sampling_context::for_sequence(o_.seed, o_.stream_offset + static_cast<std::uint64_t>(b)));
      }
    }
  }

  /// With early_stopping a source collects at most beam_size - 1 ended hypotheses before its last
  /// step, then at most beam_size ended ones and beam_size live ones in that step. Without, ended
  /// hypotheses accumulate until compact() keeps the beam_size best.
  index_t finished_per_source() const noexcept { return 3 * K_; }

  /// The log-probabilities of row r's forced prefix tokens (source b's), which beam search does not
  /// rank by: every hypothesis of the source shares them, and transformers counts a forced token as
  /// log-probability 0 (its processors leave it the only choice).
  double prefix_sum(const hypothesis_rows& rows, index_t r, index_t b) const {
    const index_t n = std::min(prefix_length(b), rows.length[static_cast<std::size_t>(r)]);
    double s = 0;
    for (index_t j = 0; j < n; ++j) s += rows.log_probs[static_cast<std::size_t>(r * rows.width + j)];
    return s;
  }
  /// What beam search ranks row r by: (log_prob_sum - prefix_sum) / max(length, 1)^length_penalty.
  double rank_score(const hypothesis_rows& rows, index_t r, index_t b) const {
    const auto len = static_cast<double>(std::max<index_t>(rows.length[static_cast<std::size_t>(r)], 1));
    return (rows.sum[static_cast<std::size_t>(r)] - prefix_sum(rows, r, b)) / std::pow(len, o_.length_penalty);
  }
  /// Sorts order_ to source b's finished rows, best first (ties: the earlier finished).
  void rank_finished(index_t b) {
    const index_t f0 = b * finished_per_source(), n = n_finished_[static_cast<std::size_t>(b)];
    order_.clear();
    for (index_t j = 0; j < n; ++j) order_.push_back(f0 + j);
    std::sort(order_.begin(), order_.end(), [&](index_t x, index_t y) {
      const double sx = rank_score(finished_, x, b), sy = rank_score(finished_, y, b);
      return sx != sy ? sx > sy : x < y;
    });
  }
  /// Keeps source b's beam_size best finished hypotheses (in rank order) and drops the others: what
  /// the final ranking would choose among does not change, and the rows are bounded.
  void compact(index_t b) {
    rank_finished(b);
    const index_t f0 = b * finished_per_source();
    const index_t keep = std::min<index_t>(K_, static_cast<index_t>(order_.size()));
    for (index_t j = 0; j < keep; ++j) best_.copy(j, finished_, order_[static_cast<std::size_t>(j)]);
    for (index_t j = 0; j < keep; ++j) finished_.copy(f0 + j, best_, j);
    n_finished_[static_cast<std::size_t>(b)] = keep;
  }

  void step(std::vector<generation_result>& results) {
    // 1. Every live hypothesis of every unfinished source feeds its last token (or, first, the
    //    start token and its source's forced prefix).
    req_slots_.clear();
    req_counts_.clear();
    req_skip_.clear();
    req_tokens_.clear();
    for (index_t s = 0; s < slots(); ++s) {
      if (!alive_[static_cast<std::size_t>(s)]) continue;
      req_slots_.push_back(s);
      if (live_.length[static_cast<std::size_t>(s)] > 0) {
        req_tokens_.push_back(live_.last(s));
        req_counts_.push_back(1);
        req_skip_.push_back(0);
        continue;
      }
      const index_t b = s / K_, forced = std::min(prefix_length(b), max_steps_ - 1);
      if (prompts_) {  // the prompt; its rows but the last predict tokens of the prompt itself
        const auto prompt = prompts_->sequence(b);
        req_tokens_.insert(req_tokens_.end(), prompt.begin(), prompt.end());
      } else {
        req_tokens_.push_back(o_.start_token.value_or(m_.config().bos_id));
      }
      for (index_t i = 0; i < forced; ++i) req_tokens_.push_back(o_.prefix[static_cast<std::size_t>(b)][static_cast<std::size_t>(i)]);
      req_counts_.push_back(lead_length(b) + forced);
      req_skip_.push_back(lead_length(b) - 1);
    }
    index_t n_rows = static_cast<index_t>(req_tokens_.size());
    for (index_t k : req_skip_) n_rows -= k;
    auto rows = make_view(logits_.data(), n_rows, V_);
    m_.decode_step(cache_, decode_request{req_slots_, req_tokens_, req_counts_, step_output::logits, o_.moe, req_skip_}, rows);

    // 2. Per source: the stages on each row, forced tokens, proposals, selection.
    bool reordered = false;
    for (index_t s = 0; s < slots(); ++s) parents_[static_cast<std::size_t>(s)] = s;
    std::size_t i = 0;  // request entry
    index_t r = 0;      // logits row
    while (i < req_slots_.size()) {
      const index_t b = req_slots_[i] / K_;
      pool_.clear();
      bool stopped = false, free_row = false;
      for (; i < req_slots_.size() && req_slots_[i] / K_ == b; ++i) {
        const index_t s = req_slots_[i], count = req_counts_[i];
        // rows of prompt tokens followed by prompt tokens were skipped: nothing to choose there
        for (index_t j = req_skip_[i]; j < count; ++j, ++r) {
          if (stopped) continue;
          auto row = rows.row(r);
          const double lse = log_sum_exp(row);
          if (!std::isfinite(lse)) {  // NaN or Inf logits: no distribution to choose from
            const index_t step = live_.length[static_cast<std::size_t>(s)];
            throw numeric_error("generate",
                                "sequence " + std::to_string(b) + ", step " + std::to_string(step) +
                                    ": the model's logits are not finite (NaN or Inf)",
                                b, step);
          }
          apply_stages(row, live_.length[static_cast<std::size_t>(s)]);
          if (o_.return_alternatives > 0) {
            top_n(row, o_.return_alternatives, row_alts_);
            for (auto& a : row_alts_) a.log_prob -= lse;
            row_alts_.resize(static_cast<std::size_t>(o_.return_alternatives), no_alternative);
          }
          const index_t pos = live_.length[static_cast<std::size_t>(s)];
          if (pos < prefix_length(b)) {  // a forced token
            const token_id t = o_.prefix[static_cast<std::size_t>(b)][static_cast<std::size_t>(pos)];
            const double lp = static_cast<double>(rows(r, t)) - lse;
            live_.push(s, t, lp, row_alts_);
            if (o_.sampler) samplers_[static_cast<std::size_t>(b)]->accept(t);
            if (K_ == 1 && !emit(b, pos, t, lp, false)) stopped = true;
          } else {
            free_row = true;
            propose(b, s, row, lse);
          }
        }
      }
      // No free row: the forced prefix (fed whole in the first step) filled max_new_tokens.
      if (stopped || !free_row || pool_.empty()) {
        finish(b, /*with_live=*/true, results);
        continue;
      }
      reordered |= select(b, results);
    }
    if (reordered) cache_.reorder(parents_);
  }

  /// The logits-processing stages, in place on one row (raw logits): banned tokens, then the end
  /// tokens while the hypothesis is shorter than min_new_tokens.
  template <class Row>
  void apply_stages(Row& row, index_t length) const {
    constexpr Scalar minus_inf = -std::numeric_limits<Scalar>::infinity();
    for (token_id t : o_.banned_tokens) row[t] = minus_inf;
    if (length < o_.min_new_tokens)
      for (token_id e : ends_) row[e] = minus_inf;
  }

  /// The continuations hypothesis s proposes: the sampler's token, or its 2 beam_size best.
  template <class Row>
  void propose(index_t b, index_t s, Row& row, double lse) {
    const double base = live_.sum[static_cast<std::size_t>(s)];
    std::copy(row_alts_.begin(), row_alts_.end(), step_alts_.begin() + s * o_.return_alternatives);
    if (o_.sampler) {
      auto& ctx = contexts_[static_cast<std::size_t>(b)];
      ctx.history = live_.row_tokens(s);
      const token_id t = sampling::sample(*samplers_[static_cast<std::size_t>(b)],
                                          std::span<const Scalar>(row.data(), static_cast<std::size_t>(V_)), buffer_, ctx);
      const double lp = static_cast<double>(row[t]) - lse;
      pool_.push_back({base + lp, s % K_, t, lp});
      return;
    }
    top_n(row, 2 * K_, proposals_);
    for (const auto& e : proposals_) pool_.push_back({base + e.log_prob - lse, s % K_, e.id, e.log_prob - lse});
  }

  /// Ranks source b's proposals; ended ones among the beam_size best finish, the best beam_size
  /// others become the live hypotheses. Returns whether a slot now continues another's history.
  bool select(index_t b, std::vector<generation_result>& results) {
    std::sort(pool_.begin(), pool_.end(), [](const expansion& x, const expansion& y) {
      if (x.score != y.score) return x.score > y.score;
      if (x.beam != y.beam) return x.beam < y.beam;
      return x.token < y.token;
    });
    const index_t first = b * K_;
    bool stopped = false;  // one beam: the callback asked to stop
    // transformers' done test (early_stopping=false): the best candidate, ended or not, as a score.
    double best_possible = -std::numeric_limits<double>::infinity();
    if (!pool_.empty()) {
      const index_t parent = first + pool_.front().beam;
      const double len = static_cast<double>(live_.length[static_cast<std::size_t>(parent)] + 1);
      best_possible = (pool_.front().score - prefix_sum(live_, parent, b)) / std::pow(len, o_.length_penalty);
    }
    chosen_.clear();
    for (std::size_t rank = 0; rank < pool_.size() && static_cast<index_t>(chosen_.size()) < K_; ++rank) {
      const expansion& e = pool_[rank];
      const index_t parent = first + e.beam;
      if (K_ == 1 && rank == 0) {  // one beam: the token is final now
        const index_t step = live_.length[static_cast<std::size_t>(parent)];
        if (!emit(b, step, e.token, e.log_prob, is_end(e.token))) stopped = true;
      }
      if (is_end(e.token)) {
        if (static_cast<index_t>(rank) < K_) {  // an end token counts only among the K best
          if (n_finished_[static_cast<std::size_t>(b)] == finished_per_source()) compact(b);
          const index_t f = b * finished_per_source() + n_finished_[static_cast<std::size_t>(b)]++;
          finished_.copy(f, live_, parent);
          finished_.push(f, e.token, e.log_prob, alts_of(parent));
          finished_.ended[static_cast<std::size_t>(f)] = 1;
        }
        continue;
      }
      chosen_.push_back(e);
      if (stopped) break;
    }
    // Apply: live hypothesis k of the source continues chosen_[k].
    bool moved = false;
    for (index_t k = 0; k < static_cast<index_t>(chosen_.size()); ++k) moved |= chosen_[static_cast<std::size_t>(k)].beam != k;
    if (moved) {  // copy the parents aside first: a parent may feed several children
      for (index_t k = 0; k < static_cast<index_t>(chosen_.size()); ++k) spare_.copy(first + k, live_, first + chosen_[static_cast<std::size_t>(k)].beam);
    }
    for (index_t k = 0; k < static_cast<index_t>(chosen_.size()); ++k) {
      const expansion& e = chosen_[static_cast<std::size_t>(k)];
      const index_t s = first + k, parent = first + e.beam;
      const auto alts = alts_of(parent);
      if (moved) live_.copy(s, spare_, s);
      live_.push(s, e.token, e.log_prob, alts);
      parents_[static_cast<std::size_t>(s)] = parent;
      alive_[static_cast<std::size_t>(s)] = 1;
    }
    for (index_t k = static_cast<index_t>(chosen_.size()); k < K_; ++k) alive_[static_cast<std::size_t>(first + k)] = 0;

    const index_t ended = n_finished_[static_cast<std::size_t>(b)];
    bool done = ended >= K_ && o_.early_stopping;
    if (ended >= K_ && !o_.early_stopping) {  // done when no candidate can beat the K-th best ended
      rank_finished(b);
      done = rank_score(finished_, order_[static_cast<std::size_t>(K_ - 1)], b) >= best_possible;
    }
    if (done) {
      finish(b, /*with_live=*/false, results);
    } else if (chosen_.empty() || stopped || live_.length[static_cast<std::size_t>(first)] >= max_steps_) {
      finish(b, /*with_live=*/true, results);
    }
    return moved;
  }

  std::span<const alternative> alts_of(index_t slot) const {
    return std::span<const alternative>(step_alts_).subspan(static_cast<std::size_t>(slot * o_.return_alternatives),
                                                            static_cast<std::size_t>(o_.return_alternatives));
  }

  bool emit(index_t b, index_t step, token_id t, double lp, bool end) const {
    return !o_.on_token || o_.on_token(token_event{b, step, t, lp, end});
  }

  /// Source b is done: its finished hypotheses (and its live ones, unended, if `with_live`) are
  /// ranked by score and the best num_return_sequences become its result.
  void finish(index_t b, bool with_live, std::vector<generation_result>& results) {
    const index_t first = b * K_, f0 = b * finished_per_source();
    auto& n = n_finished_[static_cast<std::size_t>(b)];
    if ((with_live || n == 0) && n + K_ > finished_per_source()) compact(b);
    if (with_live || n == 0) {
      for (index_t k = 0; k < K_ && n < finished_per_source(); ++k)
        if (alive_[static_cast<std::size_t>(first + k)]) finished_.copy(f0 + n++, live_, first + k);
    }
    for (index_t k = 0; k < K_; ++k) alive_[static_cast<std::size_t>(first + k)] = 0;
    --live_sources_;

    rank_finished(b);
    auto& out = results[static_cast<std::size_t>(b)].hypotheses;
    const index_t keep = std::min<index_t>(o_.num_return_sequences, n);
    out.resize(static_cast<std::size_t>(keep));
    for (index_t j = 0; j < keep; ++j) {
      const index_t f = order_[static_cast<std::size_t>(j)];
      hypothesis& h = out[static_cast<std::size_t>(j)];
      const auto steps = finished_.row_tokens(f);
      h.ended = finished_.ended[static_cast<std::size_t>(f)] != 0;
      h.tokens.assign(steps.begin(), steps.end() - (h.ended ? 1 : 0));
      h.log_prob_sum = finished_.sum[static_cast<std::size_t>(f)];
      h.score = rank_score(finished_, f, b);
      if (o_.return_log_probs) {
        const auto lp = finished_.log_probs.begin() + f * finished_.width;
        h.log_probs.assign(lp, lp + static_cast<std::ptrdiff_t>(steps.size()));
      }
      if (o_.return_alternatives > 0) {
        const auto a = finished_.alts.begin() + f * finished_.width * finished_.n_alt;
        h.alternatives.assign(a, a + static_cast<std::ptrdiff_t>(steps.size()) * finished_.n_alt);
      }
    }
    if (K_ > 1 && keep > 0 && o_.on_token) {  // beam search streams its best hypothesis now
      const hypothesis& h = out.front();
      for (index_t j = 0; j < h.length(); ++j) {
        const bool end = j == static_cast<index_t>(h.tokens.size());
        const double lp = finished_.log_probs[static_cast<std::size_t>(order_.front() * finished_.width + j)];
        if (!emit(b, j, end ? finished_.last(order_.front()) : h.tokens[static_cast<std::size_t>(j)], lp, end)) break;
      }
    }
  }

  const model<Scalar>& m_;
  const generation_options& o_;
  const index_t batch_, K_, V_;
  const token_batch* prompts_;  // decoder-only: the prompts; null otherwise
  const index_t context_;       // decoder-only: the longest prompt (cached before the new tokens)
  const index_t max_steps_;
  const std::vector<token_id> ends_;
  kv_cache<Scalar> cache_;
  tensor<Scalar> logits_;                // [rows of the largest step, V]
  hypothesis_rows live_, spare_;          // [batch x K] live hypotheses, and room to reorder them
  hypothesis_rows finished_;              // [batch x 3K] finished hypotheses, source b from row 3 K b
  hypothesis_rows best_;                  // [K]: compact()'s room
  std::vector<index_t> n_finished_;       // [batch]
  std::vector<char> alive_;               // [batch x K] live slots
  index_t live_sources_ = 0;
  std::vector<index_t> req_slots_, req_counts_, req_skip_, parents_, order_;
  std::vector<token_id> req_tokens_;
  std::vector<expansion> pool_, chosen_;  // one source's proposals; the ones kept
  std::vector<alternative> proposals_, row_alts_, step_alts_;  // step_alts_ [batch x K, n_alt]
  std::vector<std::unique_ptr<sampling::sampler>> samplers_;   // [batch] with a sampler
  std::vector<sampling::sampling_context> contexts_;           // [batch] random streams
  sampling::candidates buffer_{0};
};

}  // namespace detail

/// Decodes every source of `src`; returns one result per source, in order.
/// A model that forces its first target token (model_config::forced_bos_id, from a Hugging Face
/// config) gets it as every sequence's prefix when `o` gives none.
template <class Scalar>
std::vector<generation_result> generate(const model<Scalar>& m, const token_batch& src, const generation_options& o) {
  if (o.prefix.empty() && m.config().forced_bos_id && src.size() > 0) {
    generation_options forced = o;
    forced.prefix.assign(static_cast<std::size_t>(src.size()), std::vector<token_id>{*m.config().forced_bos_id});
    return generate(m, src, forced);
  }
  detail::validate(o, m.config(), src.size());
  const bool lm = m.config().decoder_only();
  if (lm) {  // the prompts: each at least one token, leaving room for a new one
    if (o.start_token) {
      throw invalid_argument("start_token", "a decoder-only model starts from each prompt, it takes no start token");
    }
    for (index_t b = 0; b < src.size(); ++b) {
      if (src.length(b) == 0) {
        throw invalid_argument("source", "prompt " + std::to_string(b) + " is empty, expected at least one token (e.g. bos)");
      }
      if (src.length(b) >= m.config().max_sequence_length()) {
        throw invalid_argument("source", "prompt " + std::to_string(b) + ": " + std::to_string(src.length(b)) +
                                             " tokens leave no room for a new one (max_positions " +
                                             std::to_string(m.config().max_sequence_length()) + ")");
      }
    }
  }
  detail::check_memory(m, o, src);
  const auto memory = m.encode(src, o.moe);
  return detail::search<Scalar>(m, o, src.size(), lm ? &src : nullptr).run(memory);
}

}  // namespace eigenformer
