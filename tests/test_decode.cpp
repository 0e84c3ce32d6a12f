// generate(): greedy, sampled and beam-search decoding against straightforward references that
// recompute the whole prefix with model::score (no cache, no reorder, no shared search code),
// n-best lists, forced prefixes, banned tokens, streaming, options, and "no heap allocation per
// step" of generate() itself with a counting global operator new.
#include <eigenformer/decode.hpp>
#include <eigenformer/sampling/sampling.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "support/counting_allocator.hpp"
#include "support/random_model.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using ef::token_id;
using namespace ef::testing;

namespace {

template <class S>
struct fixture {
  ef::model_config c;
  random_weights<S> rw;
  ef::model<S> m;
  explicit fixture(ef::model_config cfg, std::uint64_t seed = 9) : c(cfg), rw(cfg, seed), m(cfg, rw.map()) {}
};

ef::model_config decode_config(bool pre_ln = false) {
  auto c = small_config();
  c.norm_first = pre_ln;
  c.tgt_vocab_size = 13;  // small: end tokens come up often
  return c;
}

template <class S>
double tol() {
  return std::is_same_v<S, float> ? 1e-5 : 1e-10;
}

const std::vector<std::vector<token_id>> sources{{3, 4, 5, 6, 7}, {8, 9}, {10, 11, 12}};

/// Next-token log-probabilities after `prefix` (BOS first), by full recomputation.
template <class S>
std::vector<double> next_log_probs(const ef::model<S>& m, const std::vector<token_id>& src, const std::vector<token_id>& prefix) {
  const auto lp = m.score(ef::token_batch::from_sequences({src}), ef::token_batch::from_sequences({prefix}));
  std::vector<double> out(static_cast<std::size_t>(lp.dim(2)));
  for (index_t v = 0; v < lp.dim(2); ++v) out[std::size_t(v)] = lp(0, lp.dim(1) - 1, v);
  return out;
}

/// Reference greedy decoding: the forced tokens, then argmax (lowest id on ties) of recomputed
/// log-probabilities over the tokens not banned, until an end token (default: eos_id).
template <class S>
std::vector<token_id> reference_greedy(const ef::model<S>& m, const std::vector<token_id>& src, index_t max_new,
                                       const std::vector<token_id>& forced = {}, const std::vector<token_id>& banned = {},
                                       std::vector<token_id> ends = {}) {
  if (ends.empty()) ends = {m.config().eos_id};
  std::vector<token_id> prefix{m.config().bos_id}, out;
  for (index_t step = 0; step < max_new; ++step) {
    token_id best = 0;
    if (step < index_t(forced.size())) {
      best = forced[std::size_t(step)];
    } else {
      auto lp = next_log_probs(m, src, prefix);
      for (token_id b : banned) lp[std::size_t(b)] = -INFINITY;
      best = token_id(std::max_element(lp.begin(), lp.end()) - lp.begin());
      if (std::find(ends.begin(), ends.end(), best) != ends.end()) break;
    }
    out.push_back(best);
    prefix.push_back(best);
  }
  return out;
}

/// Greedy tokens of every source when no end token may stop them (min_new_tokens = max).
template <class S>
std::vector<std::vector<token_id>> unstopped(const ef::model<S>& m, index_t n) {
  ef::generation_options o;
  o.max_new_tokens = o.min_new_tokens = n;
  std::vector<std::vector<token_id>> out;
  for (const auto& r : ef::generate(m, ef::token_batch::from_sequences(sources), o)) out.push_back(r.best().tokens);
  return out;
}

/// Reference beam search, written for clarity: every hypothesis re-scored from scratch. Returns
/// every finished hypothesis, best normalised score first (ties: the earlier finished). With
/// `early_stopping` it stops at K ended hypotheses; without, once the K-th best ended one scores at
/// least the step's best candidate scored as if it ended there (transformers' heuristic).
struct ref_hyp {
  std::vector<token_id> tokens;  // end token excluded
  double sum = 0;
  index_t length = 0;  // end token included
  bool ended = false;
  double score = 0;
};
template <class S>
std::vector<ref_hyp> reference_beam(const ef::model<S>& m, const std::vector<token_id>& src, index_t K, index_t max_new,
                                    double alpha, bool early_stopping = true, std::vector<token_id> ends = {}) {
  if (ends.empty()) ends = {m.config().eos_id};
  const auto normalised = [alpha](double sum, index_t length) { return sum / std::pow(double(std::max<index_t>(length, 1)), alpha); };
  std::vector<ref_hyp> live{{}}, done;
  for (index_t step = 0; step < max_new && !live.empty(); ++step) {
    struct cand {
      double score;
      index_t beam;
      token_id tok;
    };
    std::vector<cand> all;
    for (index_t k = 0; k < index_t(live.size()); ++k) {
      std::vector<token_id> prefix{m.config().bos_id};
      prefix.insert(prefix.end(), live[std::size_t(k)].tokens.begin(), live[std::size_t(k)].tokens.end());
      const auto lp = next_log_probs(m, src, prefix);
      std::vector<token_id> ids(lp.size());
      for (std::size_t v = 0; v < ids.size(); ++v) ids[v] = token_id(v);
      std::stable_sort(ids.begin(), ids.end(), [&](token_id a, token_id b) { return lp[std::size_t(a)] > lp[std::size_t(b)]; });
      for (index_t j = 0; j < std::min<index_t>(2 * K, index_t(ids.size())); ++j)
        all.push_back({live[std::size_t(k)].sum + lp[std::size_t(ids[std::size_t(j)])], k, ids[std::size_t(j)]});
    }
    std::stable_sort(all.begin(), all.end(), [](const cand& a, const cand& b) { return a.score > b.score; });
    std::vector<ref_hyp> next;
    for (index_t r = 0; r < index_t(all.size()) && index_t(next.size()) < K; ++r) {
      ref_hyp h = live[std::size_t(all[std::size_t(r)].beam)];
      h.sum = all[std::size_t(r)].score;
      h.length += 1;
      if (std::find(ends.begin(), ends.end(), all[std::size_t(r)].tok) != ends.end()) {
        h.ended = true;
        if (r < K) done.push_back(h);
        continue;
      }
      h.tokens.push_back(all[std::size_t(r)].tok);
      next.push_back(h);
    }
    live = next;
    if (index_t(done.size()) >= K) {
      if (early_stopping) break;
      std::vector<double> scores;
      for (const auto& h : done) scores.push_back(normalised(h.sum, h.length));
      std::sort(scores.rbegin(), scores.rend());
      if (scores[std::size_t(K - 1)] >= normalised(all.front().score, step + 1)) break;
    }
    if (step + 1 == max_new) done.insert(done.end(), live.begin(), live.end());
  }
  for (auto& h : done) h.score = normalised(h.sum, h.length);
  std::stable_sort(done.begin(), done.end(), [](const ref_hyp& a, const ref_hyp& b) { return a.score > b.score; });
  return done;
}

}  // namespace

template <class Scalar>
class DecodeTest : public ::testing::Test {};
TYPED_TEST_SUITE(DecodeTest, scalar_types);

TYPED_TEST(DecodeTest, GreedyEqualsFullRecomputation) {
  // Catches: a cache that drifts from recomputation, wrong tie-breaking, log-probabilities taken
  // after a stage changed the logits, a sum that omits the end token, a score not normalised.
  using S = TypeParam;
  for (bool pre_ln : {false, true}) {
    fixture<S> f(decode_config(pre_ln));
    // The end token: sequence 0's third unstopped token, so that sequence 0 surely ends.
    const token_id end = unstopped(f.m, 12)[0][2];
    ef::generation_options o;
    o.max_new_tokens = 12;
    o.return_log_probs = true;
    o.end_tokens = {end};
    std::vector<ef::token_event> events;
    o.on_token = [&](const ef::token_event& e) {
      if (e.sequence == 0) events.push_back(e);
      return true;
    };
    const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
    ASSERT_EQ(results.size(), sources.size());
    ASSERT_TRUE(results[0].best().ended);
    ASSERT_EQ(index_t(events.size()), results[0].best().length());
    EXPECT_TRUE(events.back().is_end);
    EXPECT_EQ(events.back().token, end);
    for (std::size_t b = 0; b < sources.size(); ++b) {
      ASSERT_EQ(results[b].hypotheses.size(), 1u);
      const auto& h = results[b].best();
      EXPECT_EQ(h.tokens, reference_greedy(f.m, sources[b], 12, {}, {}, {end})) << "sequence " << b;
      ASSERT_EQ(index_t(h.log_probs.size()), h.length());
      std::vector<token_id> prefix{f.c.bos_id};
      double sum = 0;
      for (std::size_t i = 0; i < h.log_probs.size(); ++i) {
        const auto lp = next_log_probs(f.m, sources[b], prefix);
        const token_id t = i < h.tokens.size() ? h.tokens[i] : end;
        EXPECT_NEAR(h.log_probs[i], lp[std::size_t(t)], tol<S>());
        sum += lp[std::size_t(t)];
        prefix.push_back(t);
      }
      EXPECT_NEAR(h.log_prob_sum, sum, 1e-4);
      EXPECT_NEAR(h.score, sum / double(h.length()), 1e-4);  // length_penalty 1
    }
  }
}

TYPED_TEST(DecodeTest, BeamSearchNBestEqualsReference) {
  // Catches: wrong parents after a reorder (cache or token history), end tokens counted outside
  // the K best, early stopping at the wrong time (in either mode), length penalty on the wrong
  // length, n-best lists in the wrong order or with the wrong scores, K = 1 diverging from greedy,
  // and (without early stopping, 24 steps with 5 of the 13 tokens ending a hypothesis: more ended
  // hypotheses than the 3 K rows hold) a compaction that loses one of the K best.
  using S = TypeParam;
  for (bool early : {true, false})
  for (index_t K : {1, 2, 3}) {
    for (double alpha : {0.0, 1.0}) {
      fixture<S> f(decode_config(K == 3), 21);
      const index_t steps = early ? 8 : 24;
      ef::generation_options o;
      o.max_new_tokens = steps;
      o.beam_size = K;
      o.num_return_sequences = K;
      o.length_penalty = alpha;
      o.early_stopping = early;
      const std::vector<token_id> ends = early ? std::vector<token_id>{} : std::vector<token_id>{f.c.eos_id, 3, 5, 7, 9};
      o.end_tokens = ends;
      const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
      for (std::size_t b = 0; b < sources.size(); ++b) {
        SCOPED_TRACE("K=" + std::to_string(K) + " alpha=" + std::to_string(alpha) + " early_stopping=" +
                     std::to_string(early) + " sequence " + std::to_string(b));
        const auto ref = reference_beam(f.m, sources[b], K, steps, alpha, early, ends);
        const auto& got = results[b].hypotheses;
        ASSERT_EQ(got.size(), std::min<std::size_t>(std::size_t(K), ref.size()));
        for (std::size_t j = 0; j < got.size(); ++j) {
          EXPECT_EQ(got[j].tokens, ref[j].tokens) << "hypothesis " << j;
          EXPECT_EQ(got[j].ended, ref[j].ended) << "hypothesis " << j;
          EXPECT_EQ(got[j].length(), ref[j].length);
          EXPECT_NEAR(got[j].log_prob_sum, ref[j].sum, 1e-4);
          EXPECT_NEAR(got[j].score, ref[j].score, 1e-4);
        }
        if (K == 1) {
          EXPECT_EQ(got[0].tokens, reference_greedy(f.m, sources[b], steps, {}, {}, ends));
        }
      }
    }
  }
}

TYPED_TEST(DecodeTest, BeamOfOneIsGreedy) {
  // beam_size 1 runs the one search (there is no other loop) and must equal an independent greedy
  // decoder. Catches: the K = 1 selection keeping a second-ranked token, an end token at rank 0
  // not finishing the sequence, a sampler path taken without a sampler.
  using S = TypeParam;
  fixture<S> f(decode_config());
  ef::generation_options o;
  o.max_new_tokens = 10;
  o.beam_size = 1;
  const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (std::size_t b = 0; b < sources.size(); ++b) EXPECT_EQ(results[b].best().tokens, reference_greedy(f.m, sources[b], 10));
}

TYPED_TEST(DecodeTest, SamplingIsReproducibleAndIndependentOfBatchComposition) {
  fixture<TypeParam> f(decode_config());
  ef::sampling::sampling_options so;
  so.temperature = 1.5f;
  so.top_k = 8;
  so.top_p = 0.95f;
  auto chain = ef::sampling::make_chain(so);
  ef::generation_options o;
  o.max_new_tokens = 10;
  o.sampler = &chain;
  o.seed = 1234;
  const auto batch = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  const auto again = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (std::size_t b = 0; b < sources.size(); ++b) {
    EXPECT_EQ(batch[b].best().tokens, again[b].best().tokens);
    auto alone_opt = o;
    alone_opt.stream_offset = b;  // sequence b of the batch used stream (seed, b)
    const auto alone = ef::generate(f.m, ef::token_batch::from_sequences({sources[b]}), alone_opt);
    EXPECT_EQ(alone[0].best().tokens, batch[b].best().tokens) << "sequence " << b;
  }
  o.seed = 99;
  const auto other = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  bool any_differs = false;
  for (std::size_t b = 0; b < sources.size(); ++b) any_differs |= other[b].best().tokens != batch[b].best().tokens;
  EXPECT_TRUE(any_differs);
}

namespace {
/// A user-defined sampler, written outside the library: bans one token.
class ban_token final : public ef::sampling::sampler {
 public:
  explicit ban_token(token_id t) : t_(t) {}
  void apply(ef::sampling::candidates& c, ef::sampling::sampling_context&) override {
    c.keep_if([&](const ef::sampling::candidate& x) { return x.id != t_; });
  }
  std::unique_ptr<ef::sampling::sampler> clone() const override { return std::make_unique<ban_token>(*this); }
  std::string name() const override { return "ban_token"; }

 private:
  token_id t_;
};
}  // namespace

TYPED_TEST(DecodeTest, UserSamplerAndBannedTokens) {
  // The same ban two ways: a user sampler in a chain, and generation_options::banned_tokens (a
  // stage every search applies). Both must equal the reference greedy decoder that never picks the
  // token; catches a ban applied after the choice, or only on the first step, or not in beam search.
  using S = TypeParam;
  fixture<S> f(decode_config());
  ef::generation_options o;
  o.max_new_tokens = 10;
  const auto plain = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  ASSERT_FALSE(plain[0].best().tokens.empty());
  const token_id banned = plain[0].best().tokens[0];
  ef::sampling::chain chain;
  chain.add(ban_token(banned)).add(ef::sampling::greedy());
  auto with_sampler = o;
  with_sampler.sampler = &chain;
  auto with_option = o;
  with_option.banned_tokens = {banned};
  const auto a = ef::generate(f.m, ef::token_batch::from_sequences(sources), with_sampler);
  const auto b = ef::generate(f.m, ef::token_batch::from_sequences(sources), with_option);
  for (std::size_t i = 0; i < sources.size(); ++i) {
    const auto ref = reference_greedy(f.m, sources[i], 10, {}, {banned});
    EXPECT_EQ(a[i].best().tokens, ref) << "sequence " << i;
    EXPECT_EQ(b[i].best().tokens, ref) << "sequence " << i;
  }
  with_option.beam_size = 3;
  for (const auto& r : ef::generate(f.m, ef::token_batch::from_sequences(sources), with_option))
    for (token_id t : r.best().tokens) EXPECT_NE(t, banned);
}

TYPED_TEST(DecodeTest, StreamingCallbackSeesTokensInOrderAndCanStop) {
  // Catches: events out of order or missing, the end token not streamed, a stop request ignored
  // or stopping other sequences too.
  fixture<TypeParam> f(decode_config());
  ef::generation_options o;
  o.max_new_tokens = o.min_new_tokens = 10;  // no end token: only the callback stops a sequence
  std::vector<std::vector<token_id>> streamed(sources.size());
  o.on_token = [&](const ef::token_event& e) {
    EXPECT_EQ(e.step, index_t(streamed[std::size_t(e.sequence)].size()));
    streamed[std::size_t(e.sequence)].push_back(e.token);
    return !(e.sequence == 1 && e.step == 2);  // stop sequence 1 after its third token
  };
  const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (std::size_t b = 0; b < sources.size(); ++b) EXPECT_EQ(streamed[b], results[b].best().tokens);
  EXPECT_EQ(results[1].best().tokens.size(), 3u);
  EXPECT_FALSE(results[1].best().ended);
  EXPECT_EQ(results[0].best().tokens.size(), 10u);  // the others go on
  EXPECT_EQ(results[2].best().tokens.size(), 10u);
}

TYPED_TEST(DecodeTest, BeamSearchStreamsEachSourceWhenItFinishes) {
  // Beam results stream per source as soon as that source is done, while the others decode on.
  // The decoder's mixture-of-experts statistics count the rows decoded so far; the events of the
  // source that finishes first must arrive before the last rows are decoded. Catches streaming
  // only after the whole batch (the old behaviour), and streamed tokens that differ from the result.
  using S = TypeParam;
  auto c = decode_config();
  ef::moe_config moe;
  moe.n_experts = 3;
  moe.top_k = 1;
  moe.gate_kind = ef::gate::top_k;
  moe.decoder_layers = {0};
  c.moe = moe;
  fixture<S> f(c, 4);
  ef::moe_router_stats stats;
  auto decoded_rows = [&] {
    const auto* l = stats.find("transformer.decoder.layers.0");
    std::int64_t n = 0;
    if (l)
      for (auto x : l->cumulative) n += x;
    return n;
  };
  ef::generation_options o;
  o.max_new_tokens = o.min_new_tokens = 12;  // no end token: a source finishes at its 12th token
  o.prefix = {{}, {3, 4, 5, 6, 7, 8, 9, 10}, {}};  // source 1 gets there 8 steps before the others
  o.beam_size = 3;
  o.moe.stats = &stats;
  std::vector<std::vector<token_id>> streamed(sources.size());
  std::vector<std::int64_t> rows_at_event(sources.size(), -1);
  o.on_token = [&](const ef::token_event& e) {
    streamed[std::size_t(e.sequence)].push_back(e.token);
    rows_at_event[std::size_t(e.sequence)] = decoded_rows();
    return true;
  };
  const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  const std::int64_t total = decoded_rows();
  for (std::size_t b = 0; b < sources.size(); ++b) EXPECT_EQ(streamed[b], results[b].best().tokens) << "sequence " << b;
  EXPECT_LT(rows_at_event[1], rows_at_event[0]);
  EXPECT_EQ(rows_at_event[0], total);
}

TYPED_TEST(DecodeTest, ForcedPrefixMinimumLengthAndAlternatives) {
  // Catches: a prefix fed one token per step but scored wrongly, prefix log-probabilities not
  // those of recomputation, a continuation that ignores the prefix, the minimum length not
  // enforced (or enforced on the alternatives only), alternatives out of order or not the
  // model's log-probabilities.
  using S = TypeParam;
  fixture<S> f(decode_config());
  // The end token: sequence 1's first unstopped token, so that without a minimum length sequence 1
  // would end at once; the prefixes avoid it.
  const token_id end = unstopped(f.m, 6)[1][0];
  std::vector<token_id> others;
  for (token_id t = 3; t < 13; ++t)
    if (t != end) others.push_back(t);
  const std::vector<std::vector<token_id>> prefix{{others[4], others[5]}, {}, {others[2]}};
  for (index_t K : {1, 2}) {
    SCOPED_TRACE("beam " + std::to_string(K));
    ef::generation_options o;
    o.max_new_tokens = 6;
    o.end_tokens = {end};
    o.min_new_tokens = 6;  // the end token is forbidden throughout
    o.beam_size = K;
    o.prefix = prefix;
    o.return_alternatives = 3;
    o.return_log_probs = true;
    const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
    for (std::size_t b = 0; b < sources.size(); ++b) {
      const auto& h = results[b].best();
      ASSERT_EQ(h.tokens.size(), 6u);
      EXPECT_FALSE(h.ended);
      ASSERT_TRUE(std::equal(prefix[b].begin(), prefix[b].end(), h.tokens.begin()));
      if (K == 1) {
        EXPECT_EQ(h.tokens, reference_greedy(f.m, sources[b], 6, prefix[b], {end}, {end}));
      }
      std::vector<token_id> history{f.c.bos_id};
      for (index_t step = 0; step < 6; ++step) {
        const auto lp = next_log_probs(f.m, sources[b], history);
        const token_id t = h.tokens[std::size_t(step)];
        EXPECT_NEAR(h.log_probs[std::size_t(step)], lp[std::size_t(t)], tol<S>()) << "step " << step;
        const auto alts = h.alternatives_at(step);
        ASSERT_EQ(alts.size(), 3u);
        for (std::size_t j = 0; j < 3; ++j) {
          EXPECT_NE(alts[j].id, end) << "step " << step;  // the minimum length removed it
          EXPECT_NEAR(alts[j].log_prob, lp[std::size_t(alts[j].id)], tol<S>());
          if (j > 0) {
            EXPECT_GE(alts[j - 1].log_prob, alts[j].log_prob);
          }
        }
        // greedy takes the best alternative whenever it is free to choose
        if (K == 1 && step >= index_t(prefix[b].size())) {
          EXPECT_EQ(alts[0].id, t) << "step " << step;
        }
        history.push_back(t);
      }
    }
  }
}

TYPED_TEST(DecodeTest, PrefixAsLongAsTheLimit) {
  // A prefix of exactly max_new_tokens tokens is the whole output: no free step follows (catches
  // a search that feeds one token too many, overflowing the cache, or drops the last forced token).
  using S = TypeParam;
  fixture<S> f(decode_config());
  for (index_t K : {1, 3}) {
    ef::generation_options o;
    o.max_new_tokens = 4;
    o.beam_size = K;
    o.return_log_probs = true;
    o.prefix = {{3, 4, 5, 6}, {7}, {8, 9, 10, 11}};
    const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
    for (std::size_t b : {std::size_t(0), std::size_t(2)}) {
      EXPECT_EQ(results[b].best().tokens, o.prefix[b]) << "beam " << K << " sequence " << b;
      EXPECT_FALSE(results[b].best().ended);
      EXPECT_EQ(results[b].best().log_probs.size(), 4u);
    }
    EXPECT_EQ(results[1].best().tokens.front(), 7);
  }
}

TYPED_TEST(DecodeTest, InvalidOptionsAreNamed) {
  // Each error names the option (as its subject) and, for combinations, the other option too.
  fixture<TypeParam> f(decode_config());
  const auto src = ef::token_batch::from_sequences(sources);
  auto expect = [&](const ef::generation_options& o, const std::string& subject, const std::string& needle) {
    try {
      ef::generate(f.m, src, o);
      ADD_FAILURE() << "expected an error naming " << subject;
    } catch (const ef::invalid_argument& e) {
      EXPECT_EQ(e.subject(), subject);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ef::generation_options o;
  o.max_new_tokens = 0;
  expect(o, "max_new_tokens", "max_new_tokens: 0, expected >= 1");
  o = {};
  o.min_new_tokens = 5;
  o.max_new_tokens = 4;
  expect(o, "min_new_tokens", "min_new_tokens: 5, expected 0 to max_new_tokens 4");
  o = {};
  o.beam_size = 0;
  expect(o, "beam_size", "beam_size: 0");
  o = {};
  ef::sampling::sampling_options half;
  half.temperature = 0.5f;
  auto chain = ef::sampling::make_chain(half);
  o.beam_size = 2;
  o.sampler = &chain;
  expect(o, "beam_size", "beam_size: 2 with a sampler");
  o = {};
  o.beam_size = 2;
  o.num_return_sequences = 3;
  expect(o, "num_return_sequences", "num_return_sequences: 3 with beam_size 2, expected 1 to beam_size");
  o = {};
  o.return_alternatives = 14;
  expect(o, "return_alternatives", "14, expected 0 to 13");
  o = {};
  o.end_tokens = {13};
  expect(o, "end_tokens", "end_tokens: token id 13, expected 0 to 12");
  o = {};
  o.banned_tokens = {-1};
  expect(o, "banned_tokens", "banned_tokens: token id -1");
  o = {};
  o.prefix = {{1}};
  expect(o, "prefix", "prefix: 1 prefixes for 3 sequences");
  o = {};
  o.prefix = {{}, {4, 5, 6}, {}};
  o.max_new_tokens = 2;
  expect(o, "prefix of sequence 1", "prefix of sequence 1: 3 tokens with max_new_tokens 2");
  o = {};
  o.prefix = {{}, {4, 5}, {}};
  o.banned_tokens = {5};
  expect(o, "prefix of sequence 1", "token id 5 is in banned_tokens");
  o = {};
  o.prefix = {{2}, {}, {}};
  expect(o, "prefix of sequence 0", "token id 2 is an end token");
  o = {};
  o.length_penalty = std::numeric_limits<double>::quiet_NaN();
  expect(o, "length_penalty", "length_penalty: expected a finite number");
}

namespace {
/// Heap allocations of one generate() call.
template <class S>
long allocations_of(const ef::model<S>& m, const ef::token_batch& src, const ef::generation_options& o) {
  const long before = ef::testing::allocations();
  const auto r = ef::generate(m, src, o);
  return ef::testing::allocations() - before;
}
}  // namespace

TYPED_TEST(DecodeTest, GenerateAllocatesNothingPerStep) {
  // A run of 24 steps allocates exactly what a run of 6 steps allocates (setup and results), with
  // every search, streaming, per-step log-probabilities, alternatives and a forced prefix. Catches
  // any allocation inside the step loop: hypothesis copies, growing token lists, the per-step
  // candidate pools of beam search, sampler scratch, the cache's reorder.
  using S = TypeParam;
  auto c = small_config(32, 4);
  c.tgt_vocab_size = 300;
  fixture<S> f(c);
  const auto src = ef::token_batch::from_sequences({{3, 4, 5, 6}, {7, 8}});
  ef::sampling::sampling_options so;
  so.temperature = 1.2f;
  so.top_k = 40;
  so.top_p = 0.9f;
  so.min_p = 0.01f;
  auto chain = ef::sampling::make_chain(so);
  long streamed = 0;
  for (const char* mode : {"greedy", "sampled", "beam"}) {
    SCOPED_TRACE(mode);
    ef::generation_options o;
    o.return_log_probs = true;
    o.return_alternatives = 2;
    o.prefix = {{5, 6}, {}};
    o.on_token = [&](const ef::token_event&) { return ++streamed > 0; };
    if (std::string(mode) == "sampled") o.sampler = &chain;
    if (std::string(mode) == "beam") {
      o.beam_size = 4;
      o.num_return_sequences = 2;
    }
    o.max_new_tokens = o.min_new_tokens = 6;  // no end token: every run takes all its steps
    const long short_run = allocations_of(f.m, src, o);
    o.max_new_tokens = o.min_new_tokens = 24;
    const long long_run = allocations_of(f.m, src, o);
    EXPECT_EQ(long_run, short_run);
  }
  EXPECT_GT(streamed, 0);
}

TYPED_TEST(DecodeTest, NoHeapAllocationInsideADecodeStep) {
  using S = TypeParam;
  auto c = small_config(64, 4);  // large enough that GEMMs would need heap blocking buffers
  c.d_ff = 256;
  c.tgt_vocab_size = 300;
  fixture<S> f(c);
  for (index_t batch : {1, 3, 8}) {
    std::vector<std::vector<token_id>> src(static_cast<std::size_t>(batch), std::vector<token_id>{3, 4, 5, 6});
    const auto memory = f.m.encode(ef::token_batch::from_sequences(src));
    ef::kv_cache<S> cache;
    f.m.start_decoding(memory, 2, 16, cache);  // 2 slots per source, as beam search uses them
    std::vector<index_t> slots;
    for (index_t s = 0; s < 2 * batch; ++s) slots.push_back(s);
    std::vector<token_id> tokens(slots.size(), 1);
    ef::tensor<S> out({index_t(slots.size()), c.tgt_vocab_size});
    std::vector<index_t> parents(slots.size());
    for (std::size_t s = 0; s < parents.size(); ++s) parents[s] = index_t(s ^ 1);
    f.m.decode_step(cache, slots, tokens, out.matrix());  // the first step may allocate
    cache.reorder(parents);
    const long before = ef::testing::allocations();
    for (int step = 0; step < 10; ++step) {
      f.m.decode_step(cache, slots, tokens, out.matrix());
      cache.reorder(parents);
      // fewer active slots than the first step (finished sequences leave)
      f.m.decode_step(cache, std::span<const index_t>(slots).first(1), std::span<const token_id>(tokens).first(1),
                      ef::make_view(out.data(), 1, c.tgt_vocab_size));
    }
    EXPECT_EQ(ef::testing::allocations() - before, 0) << "batch " << batch;
  }
}

// ---- Memory checked against a limit before anything is allocated ----

// generate() and start_decoding() compute what the cache and the search will take and throw,
// naming the request and the bytes, when it is over the limit (generation_options::max_cache_bytes,
// start_decoding's max_bytes). Catches: no check (std::bad_alloc or std::length_error midway, or
// the OOM killer: beam 10^6 x 3 sources asks for about 100 GB), a size computed in index_t that
// wraps (beam 2^62 x 3 sources: slots and 2 K^2 candidates wrap, the count passes the limit and
// the allocations fail), a check made after the cache is allocated (the call takes seconds and
// the allocation fails first), and a limit fixed in the code (max_cache_bytes ignored).
TYPED_TEST(DecodeTest, MemoryIsCheckedAgainstALimitBeforeAnyAllocation) {
  using S = TypeParam;
  fixture<S> f(decode_config());
  const auto src = ef::token_batch::from_sequences(sources);
  auto expect = [&](const ef::generation_options& o, const std::vector<std::string>& needles) {
    try {
      ef::generate(f.m, src, o);
      ADD_FAILURE() << "expected an error, beam_size " << o.beam_size;
    } catch (const ef::invalid_argument& e) {
      EXPECT_EQ(e.subject(), "max_cache_bytes");
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what() << "\nexpected: " << n;
    }
  };
  ef::generation_options o;
  o.beam_size = 1000000;
  // 2 layers x 3 x 10^6 slots x 64 steps (max_positions) x 2 d_model x sizeof(S), twice for reorder.
  const std::uint64_t self_kv = 2ull * 2 * 3000000 * 64 * 32 * sizeof(S);
  const std::uint64_t cache = f.m.cache_bytes(3, src.total(), 5, 1000000, 64);
  EXPECT_GE(cache, self_kv);
  EXPECT_LT(cache, self_kv + self_kv / 2);
  expect(o, {"max_cache_bytes: beam_size 1000000 x 3 sources x 64 steps: the KV cache needs " + ef::detail::bytes_string(cache),
             ", over the limit of 17.2 GB"});
  o.beam_size = ef::index_t{1} << 62;
  expect(o, {"beam_size 4611686018427387904 x 3 sources", "needs more than 18.4 EB"});
  // The limit is the caller's: 1 kB refuses a greedy run the default accepts.
  o = {};
  o.max_new_tokens = 4;
  EXPECT_EQ(ef::generate(f.m, src, o).size(), 3u);
  o.max_cache_bytes = 1000;
  expect(o, {"beam_size 1 x 3 sources x 4 steps", "over the limit of 1.0 kB"});
  o.max_cache_bytes = std::numeric_limits<std::uint64_t>::max();
  o.beam_size = 4;
  EXPECT_EQ(ef::generate(f.m, src, o).size(), 3u);

  // start_decoding checks too, and leaves the cache as it was.
  const auto memory = f.m.encode(src);
  ef::kv_cache<S> cache_state;
  EIGENFORMER_EXPECT_THROW_WITH(f.m.start_decoding(memory, 1000000, 64, cache_state), ef::invalid_argument,
                                "start_decoding: 1000000 slots per source x 3 sources x 64 steps: the KV cache needs ");
  EXPECT_EQ(cache_state.n_slots(), 0);
  EIGENFORMER_EXPECT_THROW_WITH(f.m.start_decoding(memory, 1, 8, cache_state, 100), ef::invalid_argument,
                                "over the limit of 100 bytes; raise max_bytes");
  f.m.start_decoding(memory, 1, 8, cache_state, f.m.cache_bytes(3, src.total(), 5, 1, 8));  // exactly enough
  EXPECT_EQ(cache_state.n_slots(), 3);
}

// ---- Non-finite logits ----

// Logits that are NaN or infinite (a model with a NaN weight, or extreme inputs) stop generate()
// with an error naming the sequence and the step. Catches a search that carries on: top_n skips
// NaN, so greedy and beam search would emit whatever compares as largest (token 0 when every
// logit is NaN) and return normally; and a check on the chosen token's log-probability only (the
// sampler's draw from a row with one NaN may be a finite token).
TYPED_TEST(DecodeTest, NonFiniteLogitsStopWithAnErrorNamingSequenceAndStep) {
  using S = TypeParam;
  const auto c = decode_config();
  const auto src = ef::token_batch::from_sequences(sources);
  ef::sampling::sampling_options warm;
  warm.temperature = 0.8f;
  const auto chain = ef::sampling::make_chain(warm);
  auto expect = [&](const ef::model<S>& m, const ef::generation_options& o, const std::string& needle,
                    index_t sequence = 0) {
    try {
      ef::generate(m, src, o);
      ADD_FAILURE() << "expected an error: " << needle;
    } catch (const ef::numeric_error& e) {
      EXPECT_EQ(e.subject(), "generate");
      EXPECT_EQ(e.sequence(), sequence);
      EXPECT_EQ(e.step(), 0);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {  // one NaN generator weight: logit 5 is NaN at every step of every sequence
    random_weights<S> rw(c, 9);
    auto w = *rw.map().find("generator.weight");
    w(5, 3) = std::numeric_limits<S>::quiet_NaN();
    rw.map().insert("generator.weight", std::move(w));
    const ef::model<S> m(c, rw.map());
    ef::generation_options o;
    expect(m, o, "generate: sequence 0, step 0: the model's logits are not finite (NaN or Inf)");
    o.beam_size = 3;
    expect(m, o, "sequence 0, step 0: the model's logits are not finite");
    o.beam_size = 1;
    o.sampler = &chain;
    expect(m, o, "sequence 0, step 0: the model's logits are not finite");
  }
  {  // an infinite bias: +Inf logits
    random_weights<S> rw(c, 9);
    auto b = *rw.map().find("generator.bias");
    b(4) = std::numeric_limits<S>::infinity();
    rw.map().insert("generator.bias", std::move(b));
    const ef::model<S> m(c, rw.map());
    expect(m, {}, "sequence 0, step 0: the model's logits are not finite");
  }
  {  // a NaN in the embedding of source token 9, which only the second source holds: sequence 1 fails,
     // and the error's sequence() says so (catches an index of the slot, or of the first row, instead)
    random_weights<S> rw(c, 9);
    const std::string name = c.share_embeddings ? "tgt_embed.weight" : "src_embed.weight";
    auto e = *rw.map().find(name);
    e(9, 0) = std::numeric_limits<S>::quiet_NaN();
    rw.map().insert(name, std::move(e));
    const ef::model<S> m(c, rw.map());
    ef::generation_options o;
    expect(m, o, "generate: sequence 1, step 0: the model's logits are not finite", 1);
    o.beam_size = 2;
    expect(m, o, "generate: sequence 1, step 0: the model's logits are not finite", 1);
  }
}
