// model<Scalar> self-consistency: padded batches equal sequences run alone, incremental decoding
// equals teacher forcing at every step, weight-map errors name the tensor, float agrees with
// double. Equality with PyTorch is test_golden's job.
#include <eigenformer/model.hpp>

#include <vector>

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
