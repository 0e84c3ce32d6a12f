// model<Scalar> self-consistency: padded batches equal sequences run alone, incremental decoding
// equals teacher forcing at every step, weight-map errors name the tensor, float agrees with
// double. Equality with PyTorch is test_golden's job.
#include <eigenformer/model.hpp>

#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include "support/decode_check.hpp"
#include "support/random_model.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using ef::token_id;
using namespace ef::testing;

template <class Scalar>
class ModelTest : public ::testing::Test {
 protected:
  static double tol() { return std::is_same_v<Scalar, float> ? 1e-5 : 1e-12; }
};
TYPED_TEST_SUITE(ModelTest, scalar_types);

namespace {
std::vector<ef::model_config> variants() {
  std::vector<ef::model_config> out;
  auto c = small_config();
  out.push_back(c);
  c.norm_first = true;
  c.activation_kind = ef::activation::gelu;
  out.push_back(c);
  c = small_config(12, 4);  // d_head 3
  c.positional = ef::positional_encoding::learned;
  c.position_offset = 2;
  c.share_embeddings = true;
  c.src_vocab_size = c.tgt_vocab_size;
  c.tie_output = true;
  c.decoder_final_norm = false;
  out.push_back(c);
  c = small_config();  // BART-like: embedding norms, learned positions with an offset, silu
  c.embedding_norm = true;
  c.activation_kind = ef::activation::silu;
  c.positional = ef::positional_encoding::learned;
  c.position_offset = 2;
  out.push_back(c);
  c = small_config();  // M2M100-like: pre-norm, tensor2tensor sinusoids from pad + 1, tanh gelu
  c.norm_first = true;
  c.activation_kind = ef::activation::gelu_tanh;
  c.sinusoidal = ef::sinusoidal_variant::tensor2tensor;
  c.position_offset = 2;
  out.push_back(c);
  return out;
}

const std::vector<std::vector<token_id>> sources{{3, 4, 5, 6, 7}, {8, 9}, {10}};
const std::vector<std::vector<token_id>> targets{{1, 5, 6, 7}, {1, 8}, {1, 2, 3, 4, 5, 6}};
}  // namespace

TYPED_TEST(ModelTest, PaddedBatchEqualsEachSequenceAlone) {
  using S = TypeParam;
  for (const auto& c : variants()) {
    random_weights<S> rw(c, 7);
    ef::model<S> m(c, rw.map());
    const auto batch = m.score(ef::token_batch::from_sequences(sources), ef::token_batch::from_sequences(targets));
    const index_t T = batch.dim(1), V = batch.dim(2);
    for (std::size_t b = 0; b < sources.size(); ++b) {
      const auto alone = m.score(ef::token_batch::from_sequences({sources[b]}), ef::token_batch::from_sequences({targets[b]}));
      for (index_t t = 0; t < T; ++t)
        for (index_t v = 0; v < V; ++v) {
          const double expected = t < index_t(targets[b].size()) ? double(alone(0, t, v)) : 0.0;
          ASSERT_NEAR(batch(index_t(b), t, v), expected, this->tol()) << "b=" << b << " t=" << t;
        }
    }
  }
}

TYPED_TEST(ModelTest, LogProbsAreNormalised) {
  using S = TypeParam;
  const auto c = small_config();
  random_weights<S> rw(c, 3);
  ef::model<S> m(c, rw.map());
  const auto lp = m.score(ef::token_batch::from_sequences(sources), ef::token_batch::from_sequences(targets));
  double sum = 0;
  for (index_t v = 0; v < lp.dim(2); ++v) sum += std::exp(double(lp(0, 1, v)));
  EXPECT_NEAR(sum, 1.0, this->tol());
}

TYPED_TEST(ModelTest, IncrementalDecodingEqualsTeacherForcing) {
  using S = TypeParam;
  for (const auto& c : variants()) {
    random_weights<S> rw(c, 11);
    ef::model<S> m(c, rw.map());
    const auto src = ef::token_batch::from_sequences(sources);
    const auto full = m.score(src, ef::token_batch::from_sequences(targets));
    const auto memory = m.encode(src);
    ef::kv_cache<S> cache;
    m.start_decoding(memory, 1, 8, cache);
    ASSERT_NO_FATAL_FAILURE(expect_decode_steps_match_scores(m, cache, targets, full, this->tol()));
  }
}

TYPED_TEST(ModelTest, LongIncrementalDecodeEqualsRecomputation) {
  // 60 steps, post-LN and pre-LN, batch 1 and a padded batch of 3 (lengths 60, 17, 41): every
  // cached step equals full recomputation within 1e-5 (float) / 1e-12 (double).
  using S = TypeParam;
  for (bool pre_ln : {false, true}) {
    auto c = small_config(32, 4);
    c.norm_first = pre_ln;
    c.max_positions = 128;
    random_weights<S> rw(c, 17);
    ef::model<S> m(c, rw.map());
    filler f(23);
    auto random_sequence = [&](std::size_t n, index_t vocab) {
      std::vector<token_id> s{1};
      while (s.size() < n) s.push_back(token_id(3 + f.next(0, 1) * double(vocab - 3)));
      return s;
    };
    const std::vector<std::vector<token_id>> src{random_sequence(30, c.src_vocab_size), random_sequence(9, c.src_vocab_size),
                                                 random_sequence(21, c.src_vocab_size)};
    const std::vector<std::vector<token_id>> tgt{random_sequence(60, c.tgt_vocab_size), random_sequence(17, c.tgt_vocab_size),
                                                 random_sequence(41, c.tgt_vocab_size)};
    for (std::size_t batch : {std::size_t(1), std::size_t(3)}) {
      const std::vector<std::vector<token_id>> s(src.begin(), src.begin() + long(batch)), t(tgt.begin(), tgt.begin() + long(batch));
      const auto full = m.score(ef::token_batch::from_sequences(s), ef::token_batch::from_sequences(t));
      ef::kv_cache<S> cache;
      m.start_decoding(m.encode(ef::token_batch::from_sequences(s)), 1, 60, cache);
      SCOPED_TRACE(std::string(pre_ln ? "pre-LN" : "post-LN") + ", batch " + std::to_string(batch));
      ASSERT_NO_FATAL_FAILURE(expect_decode_steps_match_scores(m, cache, t, full, this->tol()));
    }
  }
}

TYPED_TEST(ModelTest, ReorderFollowsParents) {
  using S = TypeParam;
  const auto c = small_config();
  random_weights<S> rw(c, 5);
  ef::model<S> m(c, rw.map());
  expect_reorder_follows_parents(m, sources[0], this->tol());
}

TYPED_TEST(ModelTest, SeveralTokensOfASlotInOneCallEqualOneAtATime) {
  // Catches: a causal mask that is missing or off by one in cached self-attention (a token would
  // see the tokens after it), keys written at the wrong rows, positions restarting at 0 for the
  // second token, steps advanced by one instead of by the count. Slots take 4, 1 and 3 tokens in
  // one call, then one more token each, against the same tokens fed one call per token.
  using S = TypeParam;
  for (const auto& c : variants()) {
    random_weights<S> rw(c, 13);
    ef::model<S> m(c, rw.map());
    const auto memory = m.encode(ef::token_batch::from_sequences(sources));
    const std::vector<std::vector<token_id>> blocks{{1, 5, 6, 7}, {1}, {1, 2, 3}};
    const std::vector<token_id> next{8, 9, 4};
    const index_t V = c.tgt_vocab_size;
    // one call per token
    ef::kv_cache<S> one;
    m.start_decoding(memory, 1, 8, one);
    std::vector<std::vector<std::vector<double>>> expected(3);  // [slot][token][vocab]
    ef::tensor<S> row({1, V});
    for (index_t b = 0; b < 3; ++b) {
      auto tokens = blocks[std::size_t(b)];
      tokens.push_back(next[std::size_t(b)]);
      for (token_id t : tokens) {
        m.decode_step(one, std::vector<index_t>{b}, std::vector<token_id>{t}, row.matrix());
        expected[std::size_t(b)].emplace_back(row.data(), row.data() + V);
      }
    }
    // the blocks in one call (slot order 2, 0, 1), then one token each
    ef::kv_cache<S> many;
    m.start_decoding(memory, 1, 8, many);
    std::vector<token_id> packed;
    for (index_t b : {2, 0, 1}) packed.insert(packed.end(), blocks[std::size_t(b)].begin(), blocks[std::size_t(b)].end());
    ef::tensor<S> out({index_t(packed.size()), V});
    m.decode_step(many, {.slots = std::vector<index_t>{2, 0, 1}, .tokens = packed, .counts = std::vector<index_t>{3, 4, 1}},
                  out.matrix());
    index_t r = 0;
    for (index_t b : {2, 0, 1}) {
      EXPECT_EQ(many.steps(b), index_t(blocks[std::size_t(b)].size()));
      for (std::size_t j = 0; j < blocks[std::size_t(b)].size(); ++j, ++r)
        for (index_t v = 0; v < V; ++v) ASSERT_NEAR(out(r, v), expected[std::size_t(b)][j][std::size_t(v)], this->tol()) << "slot " << b << " token " << j;
    }
    ef::tensor<S> last({3, V});
    m.decode_step(many, std::vector<index_t>{0, 1, 2}, next, last.matrix());
    for (index_t b = 0; b < 3; ++b)
      for (index_t v = 0; v < V; ++v) ASSERT_NEAR(last(b, v), expected[std::size_t(b)].back()[std::size_t(v)], this->tol()) << "slot " << b;
  }
}

TYPED_TEST(ModelTest, DecodeStepRejectsEveryMalformedCallAndKeepsTheCache) {
  // Catches: duplicate slots accepted (a slot's step advancing by two with one K/V row written),
  // slots or counts out of range, a full slot overwritten, a cache from another model read with
  // the wrong width, and a rejected call that advanced or wrote state: after every rejected call
  // the next valid step must give exactly what a cache that never saw it gives.
  using S = TypeParam;
  const auto c = small_config();
  random_weights<S> rw(c, 3);
  ef::model<S> m(c, rw.map());
  const index_t V = c.tgt_vocab_size;
  const auto memory = m.encode(ef::token_batch::from_sequences(sources));
  ef::kv_cache<S> cache, clean;
  m.start_decoding(memory, 1, 3, cache);  // slots 0, 1, 2; 3 steps each
  m.start_decoding(memory, 1, 3, clean);
  ef::tensor<S> out({2, V});
  const std::vector<token_id> two{1, 1};
  m.decode_step(cache, std::vector<index_t>{0, 1}, two, out.matrix());
  m.decode_step(clean, std::vector<index_t>{0, 1}, two, out.matrix());
  using ids = std::vector<index_t>;
  using toks = std::vector<token_id>;
  auto bad = [&](const ef::decode_request& r, index_t rows, const std::string& needle) {
    ef::tensor<S> o({rows, V});
    EIGENFORMER_EXPECT_THROW_WITH(m.decode_step(cache, r, o.matrix()), ef::invalid_argument, needle);
  };
  bad({.slots = ids{0, 0}, .tokens = two}, 2, "decode_step: slots: slot 0 given twice, expected distinct slots");
  bad({.slots = ids{3}, .tokens = toks{1}}, 1, "decode_step: slots: slot 3, expected 0 to 2");
  bad({.slots = ids{-1}, .tokens = toks{1}}, 1, "slot -1, expected 0 to 2");
  bad({.slots = ids{0}, .tokens = toks{1, 2, 3}, .counts = ids{3}}, 3, "slot 0 has consumed 1 of its 3 steps, no room for 3 more");
  bad({.slots = ids{0}, .tokens = toks{}, .counts = ids{0}}, 0, "decode_step: counts: 0 tokens for slot 0, expected >= 1");
  bad({.slots = ids{0, 1}, .tokens = two, .counts = ids{2}}, 2, "decode_step: counts: 1 counts for 2 slots");
  bad({.slots = ids{0, 1}, .tokens = toks{1}}, 1, "decode_step: tokens: 1 tokens, expected 2");
  bad({.slots = ids{0}, .tokens = toks{19}}, 1, "decode_step: tokens: token id 19, expected 0 to 18");
  EIGENFORMER_EXPECT_THROW_WITH(m.decode_step(cache, ids{0, 1}, two, ef::make_view(out.data(), 1, V)), ef::shape_error,
                                "decode_step: out shape [1, 19], expected [2, 19]");
  {
    auto other_c = small_config(24, 4);
    random_weights<S> other_w(other_c, 3);
    ef::model<S> other(other_c, other_w.map());
    ef::kv_cache<S> foreign;
    other.start_decoding(other.encode(ef::token_batch::from_sequences(sources)), 1, 3, foreign);
    EIGENFORMER_EXPECT_THROW_WITH(m.decode_step(foreign, ids{0}, toks{1}, ef::make_view(out.data(), 1, V)),
                                  ef::invalid_argument, "decode_step: cache: not prepared by start_decoding for this model");
    ef::kv_cache<S> unstarted;
    EIGENFORMER_EXPECT_THROW_WITH(m.decode_step(unstarted, ids{0}, toks{1}, ef::make_view(out.data(), 1, V)),
                                  ef::invalid_argument, "decode_step: cache: not prepared");
  }
  try {
    m.decode_step(cache, ids{0, 0}, two, out.matrix());
  } catch (const ef::error& e) {
    EXPECT_EQ(e.subject(), "decode_step: slots");
  }
  // Nothing changed: the same valid step on both caches gives the same numbers, bit for bit.
  EXPECT_EQ(cache.steps(0), 1);
  EXPECT_EQ(cache.steps(1), 1);
  EXPECT_EQ(cache.steps(2), 0);
  ef::tensor<S> a({3, V}), b({3, V});
  m.decode_step(cache, ids{0, 1, 2}, toks{5, 6, 1}, a.matrix());
  m.decode_step(clean, ids{0, 1, 2}, toks{5, 6, 1}, b.matrix());
  for (index_t r = 0; r < 3; ++r)
    for (index_t v = 0; v < V; ++v) ASSERT_EQ(a(r, v), b(r, v)) << "row " << r;
  // A full slot is refused: slot 0 has taken 2 of 3 steps; one more fits, then none.
  m.decode_step(cache, ids{0}, toks{7}, ef::make_view(out.data(), 1, V));
  EIGENFORMER_EXPECT_THROW_WITH(m.decode_step(cache, ids{0}, toks{7}, ef::make_view(out.data(), 1, V)), ef::invalid_argument,
                                "slot 0 has consumed 3 of its 3 steps, no room for 1 more");
  EIGENFORMER_EXPECT_THROW_WITH(cache.reorder(ids{0, 1}), ef::invalid_argument, "kv_cache::reorder: 2 parents, expected 3");
  EIGENFORMER_EXPECT_THROW_WITH(cache.reorder(ids{0, 1, 5}), ef::invalid_argument, "kv_cache::reorder: parent: 5");
}

TYPED_TEST(ModelTest, MissingUnexpectedAndMisshapenTensorsAreNamed) {
  using S = TypeParam;
  const auto c = small_config();
  {
    random_weights<S> rw(c, 1);
    rw.map().take("transformer.decoder.layers.1.norm3.bias", {c.d_model});
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::format_error,
                                  "random: tensor 'transformer.decoder.layers.1.norm3.bias' is missing");
  }
  {
    random_weights<S> rw(c, 1);
    rw.map().insert("transformer.encoder.layers.0.extra", ef::tensor<S>({2}));
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::format_error,
                                  "unexpected tensor 'transformer.encoder.layers.0.extra'");
  }
  {
    random_weights<S> rw(c, 1);
    rw.map().insert("transformer.encoder.layers.0.linear1.weight", ef::tensor<S>({c.d_model, c.d_ff}));
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::shape_error,
                                  "'transformer.encoder.layers.0.linear1.weight': shape [16, 35], expected [35, 16]");
  }
}

// embedding_norm normalises each side's embedded rows before the first layer. With the encoder's
// norm weight 0 and bias b every embedded source row is b, so the memory cannot depend on the
// source's tokens (only on its length); with the norm off, or the norm applied to the decoder side
// only, it does (the BART-like entry of variants() checks cached decode steps, which embed through
// the same function, against teacher forcing). Catches a norm that is loaded and not applied,
// applied to the wrong side, or a tensor the model does not ask for.
TYPED_TEST(ModelTest, EmbeddingNormIsAppliedToEachSide) {
  using S = TypeParam;
  auto c = small_config();
  c.embedding_norm = true;
  random_weights<S> rw(c, 3);
  rw.map().insert("transformer.encoder.embed_norm.weight", ef::tensor<S>({c.d_model}));  // zeros
  ef::model<S> m(c, rw.map());
  const auto a = m.encode(ef::token_batch::from_sequences({{3, 4, 5}}));
  const auto b = m.encode(ef::token_batch::from_sequences({{9, 10, 11}}));
  EXPECT_EQ(max_abs_diff(a.memory.values(), b.memory.values()), 0.0);
  random_weights<S> plain_w(c, 3);
  ef::model<S> plain(c, plain_w.map());
  EXPECT_GT(max_abs_diff(plain.encode(ef::token_batch::from_sequences({{3, 4, 5}})).memory.values(),
                         plain.encode(ef::token_batch::from_sequences({{9, 10, 11}})).memory.values()),
            1e-3);
  {
    random_weights<S> rw2(c, 1);
    rw2.map().take("transformer.decoder.embed_norm.bias", {c.d_model});
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw2.map())), ef::format_error,
                                  "random: tensor 'transformer.decoder.embed_norm.bias' is missing");
  }
  // The config keeps the key only when it is on, and reads it back.
  EXPECT_EQ(ef::model_config::from_json(c.to_json()).embedding_norm, true);
  EXPECT_FALSE(small_config().to_json().contains("embedding_norm"));
}

TYPED_TEST(ModelTest, BadInputsAreNamed) {
  using S = TypeParam;
  const auto c = small_config();
  random_weights<S> rw(c, 1);
  ef::model<S> m(c, rw.map());
  EIGENFORMER_EXPECT_THROW_WITH(m.score(ef::token_batch::from_sequences({{3, 99}}), ef::token_batch::from_sequences({{1}})),
                                ef::invalid_argument, "source sequence 0, position 1: token id 99, expected 0 to 22");
  EIGENFORMER_EXPECT_THROW_WITH(m.score(ef::token_batch::from_sequences({{3}}), ef::token_batch::from_sequences({{1, -1}})),
                                ef::invalid_argument, "target sequence 0, position 1: token id -1");
  std::vector<token_id> too_long(65, 3);
  EIGENFORMER_EXPECT_THROW_WITH(m.score(ef::token_batch::from_sequences({too_long}), ef::token_batch::from_sequences({{1}})),
                                ef::invalid_argument, "source sequence 0: length 65, expected at most 64 (max_positions)");
  EIGENFORMER_EXPECT_THROW_WITH(m.score(ef::token_batch::from_sequences({{3}, {4}}), ef::token_batch::from_sequences({{1}})),
                                ef::invalid_argument, "2 source and 1 target sequences");
}

TEST(ModelPrecision, FloatAgreesWithDoubleAtTransformerBaseWidth) {
  // d_model 512, 8 heads, d_ff 2048 (Transformer-base widths), 2+2 layers to keep the test quick.
  // Same weights in both (rounded to float). Tolerance 2e-4 on log-probabilities: float carries
  // ~6e-8 relative error per operation; reductions of length 512-2048 and six residual
  // sublayers with LayerNorm amplify it to ~1e-5..1e-4 on log-probs of magnitude ~10.
  auto c = small_config(512, 8);
  c.d_ff = 2048;
  c.src_vocab_size = 1000;
  c.tgt_vocab_size = 1000;
  random_weights<float> wf(c, 2024);
  random_weights<double> wd(c, 2024);
  ef::model<float> mf(c, wf.map());
  ef::model<double> md(c, wd.map());
  std::vector<token_id> s, t{1};
  for (int i = 0; i < 24; ++i) s.push_back(token_id(3 + (i * 37) % 990));
  for (int i = 0; i < 15; ++i) t.push_back(token_id(3 + (i * 53) % 990));
  const auto src = ef::token_batch::from_sequences({s}), tgt = ef::token_batch::from_sequences({t});
  const auto lf = mf.score(src, tgt);
  const auto ld = md.score(src, tgt);
  double worst = 0;
  for (index_t i = 0; i < lf.size(); ++i) worst = std::max(worst, std::fabs(double(lf(i)) - ld(i)));
  EXPECT_LT(worst, 2e-4);
  RecordProperty("max_abs_diff", std::to_string(worst));
}

// ---- Positions computed where a token is embedded (no max_positions table) ----

namespace {
/// The table exactly as model.hpp built it at load before positions were computed on the fly
/// (frozen here as the reference: same formula, same double arithmetic, same order).
template <class Scalar>
std::vector<Scalar> reference_sinusoidal_row(index_t pos, index_t d_model, ef::sinusoidal_variant variant, index_t offset) {
  std::vector<Scalar> row(static_cast<std::size_t>(d_model), Scalar(0));
  const index_t h = d_model / 2;
  const double log_base = std::log(10000.0);
  const double p = static_cast<double>(pos + offset);
  for (index_t i = 0; i < (variant == ef::sinusoidal_variant::paper ? (d_model + 1) / 2 : h); ++i) {
    double angle = 0;
    switch (variant) {
      case ef::sinusoidal_variant::paper:
      case ef::sinusoidal_variant::marian:
        angle = p / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(d_model));
        break;
      case ef::sinusoidal_variant::tensor2tensor:
        angle = p * std::exp(-static_cast<double>(i) * log_base / static_cast<double>(h - 1));
        break;
    }
    if (variant == ef::sinusoidal_variant::paper) {
      row[static_cast<std::size_t>(2 * i)] = static_cast<Scalar>(std::sin(angle));
      if (2 * i + 1 < d_model) row[static_cast<std::size_t>(2 * i + 1)] = static_cast<Scalar>(std::cos(angle));
    } else {
      row[static_cast<std::size_t>(i)] = static_cast<Scalar>(std::sin(angle));
      row[static_cast<std::size_t>(h + i)] = static_cast<Scalar>(std::cos(angle));
    }
  }
  return row;
}
}  // namespace

// A row computed on the fly is bit-identical to the table the model used to build, for every
// variant, even and odd widths, offsets, and positions up to 10^8. Written over garbage, so it
// also catches a row function that leaves a column unwritten (the 0 of an odd d_model in the
// marian and tensor2tensor variants); and catches a formula evaluated in another order or
// precision (float angles, exp(log) for pow, timescales from a running product), a sin/cos swap,
// halves interleaved, or the offset forgotten: all differ in some bit.
TYPED_TEST(ModelTest, SinusoidalRowsEqualTheTableBitForBit) {
  using S = TypeParam;
  for (const auto variant : {ef::sinusoidal_variant::paper, ef::sinusoidal_variant::marian, ef::sinusoidal_variant::tensor2tensor}) {
    for (const index_t d : {4, 15, 16, 512}) {
      for (const index_t offset : {0, 2}) {
        const ef::sinusoidal_positions<S> rows(d, variant, offset);
        const auto table = ef::sinusoidal_table<S>(40, d, variant, offset);
        std::vector<S> got(static_cast<std::size_t>(d));
        for (const index_t pos : {0, 1, 2, 7, 39, 1000, 65535, 99999999}) {
          SCOPED_TRACE("variant " + std::to_string(int(variant)) + ", d " + std::to_string(d) + ", offset " +
                       std::to_string(offset) + ", position " + std::to_string(pos));
          std::fill(got.begin(), got.end(), S(12345));
          rows.row(pos, got.data());
          const auto expected = reference_sinusoidal_row<S>(pos, d, variant, offset);
          ASSERT_EQ(std::memcmp(got.data(), expected.data(), got.size() * sizeof(S)), 0);
          if (pos < 40) {
            ASSERT_EQ(std::memcmp(&table(pos, 0), expected.data(), got.size() * sizeof(S)), 0);
          }
        }
      }
    }
  }
}

// max_positions is a limit, not a size: a sinusoidal model whose file says 10^8 (or 2^31 - 1)
// positions loads in milliseconds and a few kilobytes, and computes what the same weights compute
// with max_positions 64. Catches a model that builds the [max_positions, d_model] table at load
// (10^8 x 16 floats: 6.4 GB and tens of seconds; 2^31 - 1: std::bad_alloc), and positions
// computed from the wrong index on the fly (the scores would differ).
TYPED_TEST(ModelTest, HugeMaxPositionsCostsNothingAtLoad) {
  using S = TypeParam;
  auto c = small_config();
  c.sinusoidal = ef::sinusoidal_variant::marian;
  c.position_offset = 1;
  random_weights<S> small_w(c, 4);
  const ef::model<S> small(c, small_w.map());
  for (const index_t n : {index_t{100000000}, index_t{2147483647}}) {
    c.max_positions = n;
    random_weights<S> rw(c, 4);
    rusage before{};
    getrusage(RUSAGE_SELF, &before);
    const ef::model<S> m(c, rw.map());
    rusage after{};
    getrusage(RUSAGE_SELF, &after);
    // Memory, not time (timing belongs in benchmarks): a table would be 6.4 GB at 10^8 positions.
    EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 * 1024) << "KB of peak memory grown, max_positions " << n;
    const auto src = ef::token_batch::from_sequences(sources), tgt = ef::token_batch::from_sequences(targets);
    const auto a = m.score(src, tgt), b = small.score(src, tgt);
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(S)), 0);
  }
}

// ---- Thread counts ----

#if defined(_OPENMP)
// set_num_threads() is process-wide: a count set on one thread holds on another (omp_set_num_threads
// alone is per calling thread: a second thread would still see OMP_NUM_THREADS or all cores), and
// counts above the machine's cores are capped (catches --threads 10000 starting 10,000 threads).
TEST(Threads, CountIsProcessWideAndCapped) {
  const int cores = ef::hardware_threads();
  ef::set_num_threads(1);
  int seen = -1;
  std::thread([&] { seen = ef::num_threads(); }).join();
  EXPECT_EQ(seen, 1);
  std::thread([cores] { ef::set_num_threads(cores); }).join();
  EXPECT_EQ(ef::num_threads(), cores);  // set on another thread, seen here
  ef::set_num_threads(10000);
  EXPECT_EQ(ef::num_threads(), cores);
  std::thread([&] { seen = ef::num_threads(); }).join();
  EXPECT_EQ(seen, cores);
  ef::set_num_threads(1);  // the other way round: this thread sets 1, a pool thread decodes with it
  int in_region = -1;
  std::thread([&] {
#pragma omp parallel num_threads(ef::num_threads())
    {
#pragma omp single
      in_region = omp_get_num_threads();
    }
  }).join();
  EXPECT_EQ(in_region, 1);
  ef::set_num_threads(0);
  EXPECT_EQ(ef::num_threads(), cores);
  EIGENFORMER_EXPECT_THROW_WITH(ef::set_num_threads(-1), ef::invalid_argument, "threads: -1");
}
#endif
