// generate(): greedy, sampled and beam-search decoding against straightforward references that
// recompute the whole prefix with model::score (no cache, no reorder), streaming, options, and
// "no heap allocation inside a decode step" with a counting global operator new.
#include <eigenformer/decode.hpp>
#include <eigenformer/sampling/sampling.hpp>

#include <atomic>
#include <cstdlib>
#include <new>
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

const std::vector<std::vector<token_id>> sources{{3, 4, 5, 6, 7}, {8, 9}, {10, 11, 12}};

/// Next-token log-probabilities after `prefix` (BOS first), by full recomputation.
template <class S>
std::vector<double> next_log_probs(const ef::model<S>& m, const std::vector<token_id>& src, const std::vector<token_id>& prefix) {
  const auto lp = m.score(ef::token_batch::from_sequences({src}), ef::token_batch::from_sequences({prefix}));
  std::vector<double> out(static_cast<std::size_t>(lp.dim(2)));
  for (index_t v = 0; v < lp.dim(2); ++v) out[std::size_t(v)] = lp(0, lp.dim(1) - 1, v);
  return out;
}

/// Reference greedy decoding: argmax (lowest id on ties) of recomputed log-probabilities.
template <class S>
std::vector<token_id> reference_greedy(const ef::model<S>& m, const std::vector<token_id>& src, index_t max_new) {
  std::vector<token_id> prefix{m.config().bos_id}, out;
  for (index_t step = 0; step < max_new; ++step) {
    const auto lp = next_log_probs(m, src, prefix);
    const auto best = token_id(std::max_element(lp.begin(), lp.end()) - lp.begin());
    if (best == m.config().eos_id) break;
    out.push_back(best);
    prefix.push_back(best);
  }
  return out;
}

/// Reference beam search, written for clarity: every hypothesis re-scored from scratch.
template <class S>
std::pair<std::vector<token_id>, double> reference_beam(const ef::model<S>& m, const std::vector<token_id>& src, index_t K,
                                                        index_t max_new, double alpha) {
  struct hyp {
    std::vector<token_id> tokens;
    double score;
    index_t length;
  };
  std::vector<hyp> live{{{}, 0.0, 0}}, done;
  auto norm = [&](const hyp& h) { return h.score / std::pow(double(std::max<index_t>(h.length, 1)), alpha); };
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
        all.push_back({live[std::size_t(k)].score + lp[std::size_t(ids[std::size_t(j)])], k, ids[std::size_t(j)]});
    }
    std::stable_sort(all.begin(), all.end(), [](const cand& a, const cand& b) { return a.score > b.score; });
    std::vector<hyp> next;
    for (index_t r = 0; r < index_t(all.size()) && index_t(next.size()) < K; ++r) {
      hyp h = live[std::size_t(all[std::size_t(r)].beam)];
      h.score = all[std::size_t(r)].score;
      h.length += 1;
      if (all[std::size_t(r)].tok == m.config().eos_id) {
        if (r < K) done.push_back(h);
        continue;
      }
      h.tokens.push_back(all[std::size_t(r)].tok);
      next.push_back(h);
    }
    live = next;
    if (index_t(done.size()) >= K) break;
    if (step + 1 == max_new) done.insert(done.end(), live.begin(), live.end());
  }
  const auto best = std::max_element(done.begin(), done.end(), [&](const hyp& a, const hyp& b) { return norm(a) < norm(b); });
  return {best->tokens, norm(*best)};
}

}  // namespace

template <class Scalar>
class DecodeTest : public ::testing::Test {};
TYPED_TEST_SUITE(DecodeTest, scalar_types);

TYPED_TEST(DecodeTest, GreedyEqualsFullRecomputation) {
  for (bool pre_ln : {false, true}) {
    fixture<TypeParam> f(decode_config(pre_ln));
    ef::generation_options o;
    o.max_new_tokens = 12;
    o.return_log_probs = true;
    const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
    ASSERT_EQ(results.size(), sources.size());
    for (std::size_t b = 0; b < sources.size(); ++b) {
      EXPECT_EQ(results[b].tokens, reference_greedy(f.m, sources[b], 12)) << "sequence " << b;
      // Scores: the sum of the recomputed log-probabilities of the chosen tokens (end token included).
      std::vector<token_id> prefix{f.c.bos_id};
      double score = 0;
      for (std::size_t i = 0; i < results[b].log_probs.size(); ++i) {
        const auto lp = next_log_probs(f.m, sources[b], prefix);
        const token_id t = i < results[b].tokens.size() ? results[b].tokens[i] : f.c.eos_id;
        EXPECT_NEAR(results[b].log_probs[i], lp[std::size_t(t)], (std::is_same_v<TypeParam, float> ? 1e-5 : 1e-10));
        score += lp[std::size_t(t)];
        prefix.push_back(t);
      }
      EXPECT_NEAR(results[b].score, score, 1e-4);
    }
  }
}

TYPED_TEST(DecodeTest, BeamSearchEqualsReference) {
  for (index_t K : {2, 3}) {
    for (double alpha : {0.0, 1.0}) {
      fixture<TypeParam> f(decode_config(K == 3), 21);
      ef::generation_options o;
      o.max_new_tokens = 8;
      o.beam_size = K;
      o.length_penalty = alpha;
      const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
      for (std::size_t b = 0; b < sources.size(); ++b) {
        const auto [tokens, score] = reference_beam(f.m, sources[b], K, 8, alpha);
        EXPECT_EQ(results[b].tokens, tokens) << "K=" << K << " alpha=" << alpha << " sequence " << b;
        EXPECT_NEAR(results[b].score, score, 1e-4);
      }
    }
  }
}

TYPED_TEST(DecodeTest, BeamOfOneIsGreedy) {
  fixture<TypeParam> f(decode_config());
  ef::generation_options greedy, beam;
  greedy.max_new_tokens = beam.max_new_tokens = 10;
  beam.beam_size = 1;
  const auto src = ef::token_batch::from_sequences(sources);
  const auto a = ef::generate(f.m, src, greedy);
  const auto b = ef::generate(f.m, src, beam);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens);
}

TYPED_TEST(DecodeTest, SamplingIsReproducibleAndIndependentOfBatchComposition) {
  fixture<TypeParam> f(decode_config());
  ef::sampling_options so;
  so.temperature = 1.5f;
  so.top_k = 8;
  so.top_p = 0.95f;
  auto chain = ef::make_chain(so);
  ef::generation_options o;
  o.max_new_tokens = 10;
  o.sampler = &chain;
  o.seed = 1234;
  const auto batch = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  const auto again = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (std::size_t b = 0; b < sources.size(); ++b) {
    EXPECT_EQ(batch[b].tokens, again[b].tokens);
    auto alone_opt = o;
    alone_opt.stream_offset = b;  // sequence b of the batch used stream (seed, b)
    const auto alone = ef::generate(f.m, ef::token_batch::from_sequences({sources[b]}), alone_opt);
    EXPECT_EQ(alone[0].tokens, batch[b].tokens) << "sequence " << b;
  }
  o.seed = 99;
  const auto other = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  bool any_differs = false;
  for (std::size_t b = 0; b < sources.size(); ++b) any_differs |= other[b].tokens != batch[b].tokens;
  EXPECT_TRUE(any_differs);
}

namespace {
/// A user-defined sampler, written outside the library: bans one token.
class ban_token final : public ef::sampler {
 public:
  explicit ban_token(token_id t) : t_(t) {}
  void apply(ef::candidates& c, ef::sampling_context&) override {
    c.keep_if([&](const ef::candidate& x) { return x.id != t_; });
  }
  std::unique_ptr<ef::sampler> clone() const override { return std::make_unique<ban_token>(*this); }
  std::string name() const override { return "ban_token"; }

 private:
  token_id t_;
};
}  // namespace

TYPED_TEST(DecodeTest, UserSamplerInAChain) {
  fixture<TypeParam> f(decode_config());
  ef::generation_options o;
  o.max_new_tokens = 10;
  const auto plain = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  ASSERT_FALSE(plain[0].tokens.empty());
  const token_id banned = plain[0].tokens[0];
  ef::chain chain;
  chain.add(ban_token(banned)).add(ef::greedy());
  o.sampler = &chain;
  const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (const auto& r : results)
    for (token_id t : r.tokens) EXPECT_NE(t, banned);
}

TYPED_TEST(DecodeTest, StreamingCallbackSeesTokensInOrderAndCanStop) {
  fixture<TypeParam> f(decode_config());
  ef::generation_options o;
  o.max_new_tokens = 10;
  o.end_tokens = {12};  // an id that is not the model's eos: sequences run long
  std::vector<std::vector<token_id>> streamed(sources.size());
  o.on_token = [&](const ef::token_event& e) {
    EXPECT_EQ(e.step, index_t(streamed[std::size_t(e.sequence)].size()));
    streamed[std::size_t(e.sequence)].push_back(e.token);
    return !(e.sequence == 1 && e.step == 2);  // stop sequence 1 after its third token
  };
  const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (std::size_t b = 0; b < sources.size(); ++b) {
    auto expected = results[b].tokens;
    if (results[b].ended) expected.push_back(12);
    EXPECT_EQ(streamed[b], expected);
  }
  EXPECT_EQ(results[1].tokens.size(), 3u);
  EXPECT_FALSE(results[1].ended);
}

TYPED_TEST(DecodeTest, MinTokensPrefixAndAlternatives) {
  fixture<TypeParam> f(decode_config());
  ef::generation_options o;
  o.max_new_tokens = 6;
  o.min_new_tokens = 6;  // the end token is forbidden throughout
  o.prefix = {{7, 8}, {}, {5}};
  o.return_alternatives = 3;
  const auto results = ef::generate(f.m, ef::token_batch::from_sequences(sources), o);
  for (std::size_t b = 0; b < sources.size(); ++b) {
    EXPECT_EQ(results[b].tokens.size(), 6u);
    EXPECT_FALSE(results[b].ended);
    for (token_id t : results[b].tokens) EXPECT_NE(t, f.c.eos_id);
    ASSERT_EQ(results[b].alternatives.size(), 6u);
    for (const auto& alts : results[b].alternatives) {
      ASSERT_EQ(alts.size(), 3u);
      EXPECT_GE(alts[0].log_prob, alts[1].log_prob);
      EXPECT_GE(alts[1].log_prob, alts[2].log_prob);
    }
  }
  EXPECT_EQ(results[0].tokens[0], 7);
  EXPECT_EQ(results[0].tokens[1], 8);
  EXPECT_EQ(results[2].tokens[0], 5);
}

TYPED_TEST(DecodeTest, InvalidOptionsAreNamed) {
  fixture<TypeParam> f(decode_config());
  const auto src = ef::token_batch::from_sequences(sources);
  ef::generation_options o;
  o.max_new_tokens = 0;
  EIGENFORMER_EXPECT_THROW_WITH(ef::generate(f.m, src, o), ef::invalid_argument, "max_new_tokens: 0");
  o = {};
  o.beam_size = 0;
  EIGENFORMER_EXPECT_THROW_WITH(ef::generate(f.m, src, o), ef::invalid_argument, "beam_size: 0");
  o = {};
  ef::sampling_options so;
  so.temperature = 0.5f;
  auto chain = ef::make_chain(so);
  o.beam_size = 2;
  o.sampler = &chain;
  EIGENFORMER_EXPECT_THROW_WITH(ef::generate(f.m, src, o), ef::invalid_argument, "beam_size: 2 with a sampler");
  o = {};
  o.end_tokens = {13};
  EIGENFORMER_EXPECT_THROW_WITH(ef::generate(f.m, src, o), ef::invalid_argument, "end_tokens: token id 13, expected 0 to 12");
  o = {};
  o.prefix = {{1}};
  EIGENFORMER_EXPECT_THROW_WITH(ef::generate(f.m, src, o), ef::invalid_argument, "prefix: 1 prefixes for 3 sequences");
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
