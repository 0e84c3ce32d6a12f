// Mixture-of-experts feed-forward layers (layers/moe.hpp, moe_runtime.hpp): hand-checkable routing,
// tie breaking, router statistics, padding never routed or counted, incremental decoding and beam
// reordering equal teacher forcing, sparse upcycling (E copies of a dense block equal the block),
// noisy_top_k without noise == top_k bit for bit, seeded and injected noise, no heap allocation in
// a decode step, and parity with the PyTorch reference (tests/fixtures/moe_*, tools/reference.py).
#include <eigenformer/io/model_loader.hpp>
#include <eigenformer/io/npy.hpp>
#include <eigenformer/layers/moe.hpp>
#include <eigenformer/model.hpp>
#include <eigenformer/threads.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <new>
#include <tuple>
#include <vector>

#include "support/counting_allocator.hpp"
#include "support/decode_check.hpp"
#include "support/random_model.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using ef::token_id;
using namespace ef::testing;

template <class Scalar>
class MoeTest : public ::testing::Test {
 protected:
  static double tol() { return std::is_same_v<Scalar, float> ? 1e-5 : 1e-12; }
  /// Golden parity: max abs error of log-probs against the float64 PyTorch reference.
  static double golden_tol() { return std::is_same_v<Scalar, float> ? 1e-5 : 1e-10; }
};
TYPED_TEST_SUITE(MoeTest, scalar_types);

namespace {

// ---------------------------------------------------------------------------------------------
// helpers

ef::model_config moe_model_config(ef::gate g, index_t n_experts, index_t k, std::vector<index_t> enc,
                                  std::vector<index_t> dec, bool pre_ln = false) {
  auto c = small_config();
  c.norm_first = pre_ln;
  if (pre_ln) c.activation_kind = ef::activation::gelu;
  ef::moe_config m;
  m.n_experts = n_experts;
  m.top_k = k;
  m.gate_kind = g;
  m.encoder_layers = std::move(enc);
  m.decoder_layers = std::move(dec);
  c.moe = m;
  return c;
}

std::vector<std::string> moe_scopes(const ef::model_config& c) {
  std::vector<std::string> out;
  for (index_t i : c.moe->encoder_layers) out.push_back("transformer.encoder.layers." + std::to_string(i));
  for (index_t i : c.moe->decoder_layers) out.push_back("transformer.decoder.layers." + std::to_string(i));
  return out;
}

/// Noise that depends only on the layer, the position and the expert: the same for a sequence
/// whether it runs alone or in a batch (the seeded source depends on the sequence id too).
class position_noise final : public ef::moe_noise_source {
 public:
  void fill(const ef::moe_layer_info& layer, const ef::moe_rows& rows, std::span<double> eps) override {
    for (index_t b = 0; b < rows.batch(); ++b)
      for (index_t r = rows.offsets[std::size_t(b)]; r < rows.offsets[std::size_t(b) + 1]; ++r) {
        const index_t pos = rows.first_position(b) + r - rows.offsets[std::size_t(b)];
        for (index_t e = 0; e < layer.n_experts; ++e)
          eps[std::size_t(r * layer.n_experts + e)] = 1.5 * std::sin(double(1 + 7 * pos + 3 * e + 11 * layer.id));
      }
  }
};

/// Records who it was asked about: (layer id, sequence, position) per row.
class recording_noise final : public ef::moe_noise_source {
 public:
  struct row {
    index_t layer, sequence, position;
  };
  std::vector<row> rows;
  void fill(const ef::moe_layer_info& layer, const ef::moe_rows& r, std::span<double> eps) override {
    for (index_t b = 0; b < r.batch(); ++b)
      for (index_t i = r.offsets[std::size_t(b)]; i < r.offsets[std::size_t(b) + 1]; ++i)
        rows.push_back({layer.id, r.sequence(b), r.first_position(b) + i - r.offsets[std::size_t(b)]});
    std::fill(eps.begin(), eps.end(), 0.0);
  }
};

template <class S>
ef::tensor<S> values(std::initializer_list<index_t> dims, std::initializer_list<double> v) {
  ef::tensor<S> t(dims);
  std::size_t i = 0;
  for (double x : v) t(index_t(i++)) = static_cast<S>(x);
  return t;
}

/// The hand-checkable layer: d_model 2, d_ff 2, relu, 3 experts. Gate rows (1,0), (0,1), (1,1):
/// h = (x0, x1, x0 + x1). Expert e: linear1 = I, linear2 = (e + 1) I, no bias: FF_e(x) = (e + 1) relu(x).
/// Noise weight zero: softplus(0) = ln 2 for every expert.
template <class S>
ef::moe_layer<S> hand_layer(ef::gate g, index_t k) {
  ef::model_config c;
  c.d_model = 2;
  c.d_ff = 2;
  ef::moe_config m;
  m.n_experts = 3;
  m.top_k = k;
  m.gate_kind = g;
  c.moe = m;
  ef::weight_map<S> w("hand");
  w.insert("hand.moe.gate.weight", values<S>({3, 2}, {1, 0, 0, 1, 1, 1}));
  if (g == ef::gate::noisy_top_k) w.insert("hand.moe.noise.weight", ef::tensor<S>({3, 2}));
  for (int e = 0; e < 3; ++e) {
    const std::string p = "hand.moe.experts." + std::to_string(e);
    w.insert(p + ".linear1.weight", values<S>({2, 2}, {1, 0, 0, 1}));
    w.insert(p + ".linear1.bias", ef::tensor<S>({2}));
    w.insert(p + ".linear2.weight", values<S>({2, 2}, {e + 1.0, 0, 0, e + 1.0}));
    w.insert(p + ".linear2.bias", ef::tensor<S>({2}));
  }
  auto layer = ef::moe_layer<S>::load(w, "hand", c, 0);
  w.expect_empty();
  return layer;
}

// The hand inputs: h = (1,2,3), (1,1,2), (2,-1,1), (-1,-2,-3).
const std::vector<std::array<double, 2>> hand_x{{1, 2}, {1, 1}, {2, -1}, {-1, -2}};

template <class S>
ef::tensor<S> hand_input() {
  ef::tensor<S> x({index_t(hand_x.size()), 2});
  for (std::size_t i = 0; i < hand_x.size(); ++i) {
    x(index_t(i), 0) = S(hand_x[i][0]);
    x(index_t(i), 1) = S(hand_x[i][1]);
  }
  return x;
}

template <class S>
ef::tensor<S> run_layer(const ef::moe_layer<S>& layer, const ef::tensor<S>& x, const ef::moe_runtime& rt) {
  ef::workspace<S> ws;
  ef::tensor<S> out({x.dim(0), x.dim(1)});
  const std::vector<index_t> offsets{0, x.dim(0)};
  layer(x.matrix(), out.matrix(), ef::forward_context{{offsets, {}, {}}, rt}, ws);
  return out;
}

/// A copy of every tensor of `w`.
template <class S>
ef::weight_map<S> copy(const ef::weight_map<S>& w) {
  return w;
}

template <class S>
void expect_bitwise_equal(const ef::tensor<S>& a, const ef::tensor<S>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(S)), 0) << what << ": not bit-identical";
}

template <class S>
double max_diff(const ef::tensor<S>& a, const ef::tensor<S>& b) {
  double m = 0;
  for (index_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a(i)) - double(b(i))));
  return m;
}

const std::vector<std::vector<token_id>> sources{{3, 4, 5, 6, 7}, {8, 9}, {10}};
const std::vector<std::vector<token_id>> targets{{1, 5, 6, 7}, {1, 8}, {1, 2, 3, 4, 5, 6}};

}  // namespace

// ---------------------------------------------------------------------------------------------
// routing by hand

TEST(MoeRouting, TopKBreaksTiesByLowerExpertIndex) {
  index_t chosen[4];
  const float a[] = {1, 3, 3, 0, 3};
  ef::top_k_experts(a, 5, 2, chosen);
  EXPECT_EQ(chosen[0], 1);
  EXPECT_EQ(chosen[1], 2);
  ef::top_k_experts(a, 5, 3, chosen);
  EXPECT_EQ(chosen[2], 4);
  const double flat[] = {0.5, 0.5, 0.5, 0.5};
  ef::top_k_experts(flat, 4, 4, chosen);
  for (index_t j = 0; j < 4; ++j) EXPECT_EQ(chosen[j], j);
  const double desc[] = {-1, 4, 2, 9, 2, 7};
  ef::top_k_experts(desc, 6, 4, chosen);
  EXPECT_EQ((std::vector<index_t>(chosen, chosen + 4)), (std::vector<index_t>{3, 5, 1, 2}));
}

TYPED_TEST(MoeTest, HandCheckableTopOne) {
  using S = TypeParam;
  const auto layer = hand_layer<S>(ef::gate::top_k, 1);
  ef::moe_router_stats stats;
  stats.keep_choices = true;
  const auto y = run_layer(layer, hand_input<S>(), {.stats = &stats});
  // token 0: h (1,2,3) -> expert 2, y = 3 x; token 1: (1,1,2) -> 2; token 2: (2,-1,1) -> 0, y = relu(x) = (2,0);
  // token 3: (-1,-2,-3) -> 0, relu(x) = 0.
  const double expected[4][2] = {{3, 6}, {3, 3}, {2, 0}, {0, 0}};
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 2; ++j) EXPECT_NEAR(y(i, j), expected[i][j], tolerance<S>::value) << i << "," << j;
  ASSERT_EQ(stats.layers().size(), 1u);
  const auto& st = stats.layers()[0];
  EXPECT_EQ(st.scope, "hand");
  EXPECT_EQ(st.tokens, 4);
  EXPECT_EQ(st.k, 1);
  EXPECT_EQ(st.counts, (std::vector<index_t>{2, 0, 2}));
  EXPECT_EQ(st.choices, (std::vector<index_t>{2, 2, 0, 0}));
}

TYPED_TEST(MoeTest, HandCheckableTopTwo) {
  using S = TypeParam;
  const auto layer = hand_layer<S>(ef::gate::top_k, 2);
  ef::moe_router_stats stats;
  stats.keep_choices = true;
  const auto y = run_layer(layer, hand_input<S>(), {.stats = &stats});
  // The two chosen logits differ by 1 in tokens 0-2: weights e/(1+e) and 1/(1+e).
  const double hi = std::exp(1.0) / (1 + std::exp(1.0)), lo = 1 / (1 + std::exp(1.0));
  // token 0: experts (2, 1): (3 hi + 2 lo) (1, 2); token 1: (2, 0) -- 0 and 1 tie, 0 wins: (3 hi + lo) (1, 1);
  // token 2: (0, 2): (hi + 3 lo) (2, 0); token 3: h (-1,-2,-3): (0, 1), relu(x) = 0.
  const double expected[4][2] = {{3 * hi + 2 * lo, 2 * (3 * hi + 2 * lo)},
                                 {3 * hi + lo, 3 * hi + lo},
                                 {2 * (hi + 3 * lo), 0},
                                 {0, 0}};
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 2; ++j) EXPECT_NEAR(y(i, j), expected[i][j], 4 * tolerance<S>::value) << i << "," << j;
  const auto& st = stats.layers()[0];
  EXPECT_EQ(st.k, 2);
  EXPECT_EQ(st.choices, (std::vector<index_t>{2, 1, 2, 0, 0, 2, 0, 1}));
  EXPECT_EQ(st.counts, (std::vector<index_t>{3, 2, 3}));
  EXPECT_EQ(st.cumulative, (std::vector<std::int64_t>{3, 2, 3}));
  // a second call: counts are the last call's, cumulative adds up
  run_layer(layer, hand_input<S>(), {.stats = &stats});
  EXPECT_EQ(stats.layers()[0].counts, (std::vector<index_t>{3, 2, 3}));
  EXPECT_EQ(stats.layers()[0].cumulative, (std::vector<std::int64_t>{6, 4, 6}));
  stats.reset();
  EXPECT_EQ(stats.layers()[0].cumulative, (std::vector<std::int64_t>{0, 0, 0}));
}

TYPED_TEST(MoeTest, HandCheckableSoftmaxGate) {
  using S = TypeParam;
  const auto layer = hand_layer<S>(ef::gate::softmax, 1);  // top_k is ignored: every expert
  ef::moe_router_stats stats;
  stats.keep_choices = true;
  const auto y = run_layer(layer, hand_input<S>(), {.stats = &stats});
  for (std::size_t i = 0; i < hand_x.size(); ++i) {
    const double h[3] = {hand_x[i][0], hand_x[i][1], hand_x[i][0] + hand_x[i][1]};
    const double m = std::max({h[0], h[1], h[2]});
    double z = 0, mix = 0;
    for (int e = 0; e < 3; ++e) z += std::exp(h[e] - m);
    for (int e = 0; e < 3; ++e) mix += (e + 1) * std::exp(h[e] - m) / z;
    for (int j = 0; j < 2; ++j)
      EXPECT_NEAR(y(index_t(i), j), mix * std::max(0.0, hand_x[i][std::size_t(j)]), 4 * tolerance<S>::value);
  }
  const auto& st = stats.layers()[0];
  EXPECT_EQ(st.counts, (std::vector<index_t>{4, 4, 4}));  // every expert sees every token
  EXPECT_EQ(st.k, 0);
  EXPECT_TRUE(st.choices.empty());
}

TYPED_TEST(MoeTest, InjectedNoiseByHand) {
  using S = TypeParam;
  // Noise weight 0: softplus(0) = ln 2, so h_e += eps_e ln 2. eps = +3 on expert 0 for token 0,
  // which lifts its logit 1 to 1 + 3 ln 2 = 3.08 above expert 2's 3: experts (0, 2).
  class one_push final : public ef::moe_noise_source {
   public:
    void fill(const ef::moe_layer_info& layer, const ef::moe_rows& rows, std::span<double> eps) override {
      EXPECT_EQ(layer.n_experts, 3);
      EXPECT_EQ(layer.scope, "hand");
      EXPECT_EQ(rows.rows(), 4);
      std::fill(eps.begin(), eps.end(), 0.0);
      eps[0] = 3.0;
    }
  } push;
  ef::moe_router_stats stats;
  stats.keep_choices = true;
  const auto noisy = hand_layer<S>(ef::gate::noisy_top_k, 2);
  const auto y = run_layer(noisy, hand_input<S>(), {.noise = &push, .stats = &stats});
  EXPECT_EQ(stats.layers()[0].choices, (std::vector<index_t>{0, 2, 2, 0, 0, 2, 0, 1}));
  const double h0 = 1 + 3 * std::log(2.0), z = std::exp(h0 - h0) + std::exp(3 - h0);
  const double mix = (1 * 1 + 3 * std::exp(3 - h0)) / z;
  EXPECT_NEAR(y(0, 0), mix * 1, 4 * tolerance<S>::value);
  EXPECT_NEAR(y(0, 1), mix * 2, 4 * tolerance<S>::value);
  // without a noise source, noisy_top_k is top_k
  const auto plain = run_layer(noisy, hand_input<S>(), {});
  const auto top_k = run_layer(hand_layer<S>(ef::gate::top_k, 2), hand_input<S>(), {});
  expect_bitwise_equal(plain, top_k, "noise off");
}

TYPED_TEST(MoeTest, EmptyInput) {
  using S = TypeParam;
  const auto layer = hand_layer<S>(ef::gate::top_k, 2);
  ef::moe_router_stats stats;
  const auto y = run_layer(layer, ef::tensor<S>({0, 2}), {.stats = &stats});
  EXPECT_EQ(y.size(), 0);
  EXPECT_EQ(stats.layers()[0].tokens, 0);
  EXPECT_EQ(stats.layers()[0].counts, (std::vector<index_t>{0, 0, 0}));
}

// ---------------------------------------------------------------------------------------------
// whole models

TYPED_TEST(MoeTest, PaddingIsNeverRoutedOrCounted) {
  using S = TypeParam;
  position_noise noise;
  struct variant {
    ef::model_config c;
    ef::moe_noise_source* noise;
  };
  const std::vector<variant> variants{
      {moe_model_config(ef::gate::softmax, 4, 4, {0}, {1}), nullptr},
      {moe_model_config(ef::gate::top_k, 4, 2, {0, 1}, {0}), nullptr},
      {moe_model_config(ef::gate::top_k, 5, 1, {1}, {0, 1}, true), nullptr},
      {moe_model_config(ef::gate::noisy_top_k, 5, 2, {0}, {0, 1}, true), &noise},
  };
  // Right-padded [3, 6] and [3, 7] arrays, pad_id 0.
  const index_t B = 3, S_len = 6, T_len = 7;
  std::vector<token_id> src(std::size_t(B * S_len), 0), tgt(std::size_t(B * T_len), 0);
  std::vector<index_t> src_len, tgt_len;
  for (index_t b = 0; b < B; ++b) {
    src_len.push_back(index_t(sources[std::size_t(b)].size()));
    tgt_len.push_back(index_t(targets[std::size_t(b)].size()));
    std::copy(sources[std::size_t(b)].begin(), sources[std::size_t(b)].end(), src.begin() + b * S_len);
    std::copy(targets[std::size_t(b)].begin(), targets[std::size_t(b)].end(), tgt.begin() + b * T_len);
  }
  const auto src_batch = ef::token_batch::from_padded(src, B, S_len, src_len);
  const auto tgt_batch = ef::token_batch::from_padded(tgt, B, T_len, tgt_len);
  for (const auto& v : variants) {
    random_weights<S> rw(v.c, 21);
    ef::model<S> m(v.c, rw.map());
    ef::moe_router_stats batch_stats;
    const auto batch = m.score(src_batch, tgt_batch, {.noise = v.noise, .stats = &batch_stats});
    const auto scopes = moe_scopes(v.c);
    ASSERT_EQ(batch_stats.layers().size(), scopes.size());
    std::vector<std::vector<index_t>> summed(scopes.size(), std::vector<index_t>(std::size_t(v.c.moe->n_experts), 0));
    for (index_t b = 0; b < B; ++b) {
      ef::moe_router_stats alone_stats;
      const auto alone = m.score(ef::token_batch::from_sequences({sources[std::size_t(b)]}),
                                 ef::token_batch::from_sequences({targets[std::size_t(b)]}),
                                 {.noise = v.noise, .stats = &alone_stats});
      for (index_t t = 0; t < batch.dim(1); ++t)
        for (index_t w = 0; w < batch.dim(2); ++w) {
          const double expected = t < tgt_len[std::size_t(b)] ? double(alone(0, t, w)) : 0.0;
          ASSERT_NEAR(batch(b, t, w), expected, this->tol()) << to_string(v.c.moe->gate_kind) << " b=" << b << " t=" << t;
        }
      for (std::size_t l = 0; l < scopes.size(); ++l)
        for (std::size_t e = 0; e < summed[l].size(); ++e) summed[l][e] += alone_stats.layers()[l].counts[e];
    }
    for (std::size_t l = 0; l < scopes.size(); ++l) {
      const auto& st = batch_stats.layers()[l];
      EXPECT_EQ(st.scope, scopes[l]);
      EXPECT_EQ(st.counts, summed[l]) << scopes[l];
      const bool enc = scopes[l].find(".encoder.") != std::string::npos;
      EXPECT_EQ(st.tokens, enc ? src_batch.total() : tgt_batch.total()) << scopes[l];  // real tokens only
      index_t routed = 0;
      for (index_t c : st.counts) routed += c;
      const index_t k = v.c.moe->gate_kind == ef::gate::softmax ? v.c.moe->n_experts : v.c.moe->top_k;
      EXPECT_EQ(routed, st.tokens * k) << scopes[l];
    }
  }
}

TYPED_TEST(MoeTest, IncrementalDecodingEqualsTeacherForcing) {
  using S = TypeParam;
  ef::seeded_moe_noise seeded(77);
  struct variant {
    ef::model_config c;
    ef::moe_noise_source* noise;
  };
  const std::vector<variant> variants{
      {moe_model_config(ef::gate::softmax, 3, 3, {}, {0, 1}), nullptr},
      {moe_model_config(ef::gate::top_k, 4, 1, {1}, {1}, true), nullptr},
      {moe_model_config(ef::gate::top_k, 4, 2, {0}, {0, 1}), nullptr},
      {moe_model_config(ef::gate::noisy_top_k, 5, 2, {0, 1}, {0, 1}, true), nullptr},
      {moe_model_config(ef::gate::noisy_top_k, 5, 2, {0, 1}, {0, 1}, true), &seeded},
  };
  for (const auto& v : variants) {
    random_weights<S> rw(v.c, 11);
    ef::model<S> m(v.c, rw.map());
    const auto src = ef::token_batch::from_sequences(sources);
    ef::moe_router_stats forced_stats;
    const auto full = m.score(src, ef::token_batch::from_sequences(targets), {.noise = v.noise, .stats = &forced_stats});
    const auto memory = m.encode(src, {.noise = v.noise});
    ef::kv_cache<S> cache;
    ef::moe_router_stats step_stats;
    m.start_decoding(memory, 1, 8, cache);
    {
      SCOPED_TRACE(std::string(to_string(v.c.moe->gate_kind)) + (v.noise ? " noisy" : ""));
      ASSERT_NO_FATAL_FAILURE(
          expect_decode_steps_match_scores(m, cache, targets, full, this->tol(), {.noise = v.noise, .stats = &step_stats}));
    }
    // the steps together routed the decoder tokens exactly as teacher forcing did
    for (const auto& forced : forced_stats.layers()) {
      if (forced.scope.find(".decoder.") == std::string::npos) continue;
      const auto* steps = step_stats.find(forced.scope);
      ASSERT_NE(steps, nullptr) << forced.scope;
      ASSERT_EQ(steps->cumulative.size(), forced.counts.size());
      for (std::size_t e = 0; e < forced.counts.size(); ++e)
        EXPECT_EQ(steps->cumulative[e], forced.counts[e]) << forced.scope << " expert " << e;
    }
  }
}

TYPED_TEST(MoeTest, BeamReorderFollowsParents) {
  using S = TypeParam;
  const auto c = moe_model_config(ef::gate::top_k, 4, 2, {1}, {0, 1});
  random_weights<S> rw(c, 5);
  ef::model<S> m(c, rw.map());
  expect_reorder_follows_parents(m, sources[0], this->tol());
}

TYPED_TEST(MoeTest, SparseUpcyclingEqualsTheDenseModel) {
  using S = TypeParam;
  // Every layer MoE with E identical copies of one feed-forward block: any gate mixes copies of
  // the same output with weights summing to 1, so the model is the dense one.
  ef::seeded_moe_noise seeded(5);
  struct variant {
    ef::gate g;
    index_t k;
    ef::moe_noise_source* noise;
  };
  const std::vector<variant> variants{{ef::gate::softmax, 4, nullptr},
                                      {ef::gate::top_k, 1, nullptr},
                                      {ef::gate::top_k, 2, nullptr},
                                      {ef::gate::noisy_top_k, 2, nullptr},
                                      {ef::gate::noisy_top_k, 3, &seeded}};
  for (bool pre_ln : {false, true}) {
    for (const auto& v : variants) {
      const index_t E = 4;
      const auto c = moe_model_config(v.g, E, v.k, {0, 1}, {0, 1}, pre_ln);
      random_weights<S> rw(c, 31);
      ef::weight_map<S> moe_w = copy(rw.map()), dense_w = copy(rw.map());
      auto dense_c = c;
      dense_c.moe.reset();
      const index_t d = c.d_model, f = c.d_ff;
      for (const auto& scope : moe_scopes(c)) {
        const std::string e0 = scope + ".moe.experts.0";
        const std::pair<const char*, ef::tensor_shape> parts[] = {
            {".linear1.weight", {f, d}}, {".linear1.bias", {f}}, {".linear2.weight", {d, f}}, {".linear2.bias", {d}}};
        for (const auto& [suffix, shape] : parts) {
          const auto t = moe_w.take(e0 + suffix, shape);
          for (index_t e = 0; e < E; ++e) moe_w.insert(scope + ".moe.experts." + std::to_string(e) + suffix, t);
          for (index_t e = 0; e < E; ++e) dense_w.take(scope + ".moe.experts." + std::to_string(e) + suffix, shape);
          dense_w.insert(scope + suffix, t);
        }
        dense_w.take(scope + ".moe.gate.weight", {E, d});
        if (v.g == ef::gate::noisy_top_k) dense_w.take(scope + ".moe.noise.weight", {E, d});
      }
      ef::model<S> moe(c, moe_w), dense(dense_c, dense_w);
      const auto src = ef::token_batch::from_sequences(sources), tgt = ef::token_batch::from_sequences(targets);
      ef::moe_router_stats stats;
      const auto a = moe.score(src, tgt, {.noise = v.noise, .stats = &stats});
      const auto b = dense.score(src, tgt);
      EXPECT_LT(max_diff(a, b), this->tol()) << to_string(v.g) << " k=" << v.k << (pre_ln ? " pre-LN" : " post-LN");
      EXPECT_EQ(stats.layers().size(), 4u);
      EXPECT_EQ(moe.parameter_count(),
                dense.parameter_count() + 4 * ((E - 1) * (2 * d * f + d + f) + E * d * (v.g == ef::gate::noisy_top_k ? 2 : 1)));
    }
  }
}

TYPED_TEST(MoeTest, NoisyTopKWithoutNoiseIsTopKBitForBit) {
  using S = TypeParam;
  for (bool pre_ln : {false, true}) {
    const auto noisy_c = moe_model_config(ef::gate::noisy_top_k, 5, 2, {0, 1}, {1}, pre_ln);
    auto top_c = noisy_c;
    top_c.moe->gate_kind = ef::gate::top_k;
    random_weights<S> rw(noisy_c, 3);
    ef::weight_map<S> top_w = copy(rw.map());
    for (const auto& scope : moe_scopes(noisy_c)) top_w.take(scope + ".moe.noise.weight", {5, noisy_c.d_model});
    ef::model<S> noisy(noisy_c, rw.map()), top(top_c, top_w);
    const auto src = ef::token_batch::from_sequences(sources), tgt = ef::token_batch::from_sequences(targets);
    ef::moe_router_stats s1, s2;
    s1.keep_choices = s2.keep_choices = true;
    expect_bitwise_equal(noisy.score(src, tgt, {.stats = &s1}), top.score(src, tgt, {.stats = &s2}), "score");
    for (std::size_t l = 0; l < s1.layers().size(); ++l) {
      EXPECT_EQ(s1.layers()[l].choices, s2.layers()[l].choices);
      EXPECT_EQ(s1.layers()[l].counts, s2.layers()[l].counts);
    }
    // a noise source given to a top_k model is ignored
    ef::seeded_moe_noise seeded(1);
    expect_bitwise_equal(top.score(src, tgt, {.noise = &seeded}), top.score(src, tgt), "top_k ignores noise");
    // and in decode steps
    const auto memory = noisy.encode(src);
    ef::kv_cache<S> c1, c2;
    noisy.start_decoding(memory, 1, 4, c1);
    top.start_decoding(top.encode(src), 1, 4, c2);
    ef::tensor<S> l1({3, noisy_c.tgt_vocab_size}), l2({3, noisy_c.tgt_vocab_size});
    const std::vector<index_t> slots{0, 1, 2};
    for (token_id tok : {1, 5, 9}) {
      const std::vector<token_id> tokens(3, tok);
      noisy.decode_step(c1, slots, tokens, l1.matrix());
      top.decode_step(c2, slots, tokens, l2.matrix());
      expect_bitwise_equal(l1, l2, "decode_step");
    }
  }
}

TYPED_TEST(MoeTest, SeededNoiseIsReproducible) {
  using S = TypeParam;
  const auto c = moe_model_config(ef::gate::noisy_top_k, 6, 2, {0, 1}, {0, 1});
  random_weights<S> rw(c, 8);
  ef::model<S> m(c, rw.map());
  const auto src = ef::token_batch::from_sequences(sources), tgt = ef::token_batch::from_sequences(targets);
  ef::seeded_moe_noise n1(42), n2(42), other(43);
  ef::moe_router_stats s1, s2, s_off, s_other;
  s1.keep_choices = s2.keep_choices = s_off.keep_choices = s_other.keep_choices = true;
  const auto a = m.score(src, tgt, {.noise = &n1, .stats = &s1});
  const auto b = m.score(src, tgt, {.noise = &n2, .stats = &s2});
  const auto a_again = m.score(src, tgt, {.noise = &n1});
  const auto off = m.score(src, tgt, {.stats = &s_off});
  const auto c43 = m.score(src, tgt, {.noise = &other, .stats = &s_other});
  expect_bitwise_equal(a, b, "same seed");
  expect_bitwise_equal(a, a_again, "same source, second call");
  EXPECT_GT(max_diff(a, off), 1e-3) << "noise on must change the output";
  EXPECT_GT(max_diff(a, c43), 1e-3) << "another seed must change the output";
  index_t rerouted = 0;
  for (std::size_t l = 0; l < s1.layers().size(); ++l) {
    EXPECT_EQ(s1.layers()[l].choices, s2.layers()[l].choices);
    for (std::size_t i = 0; i < s1.layers()[l].choices.size(); ++i)
      rerouted += s1.layers()[l].choices[i] != s_off.layers()[l].choices[i];
  }
  EXPECT_GT(rerouted, 0) << "noise should change some routing decisions";
  // the noise of a sequence does not depend on its batch: sequence 0 alone gets the same numbers
  ef::seeded_moe_noise n3(42);
  const auto alone = m.score(ef::token_batch::from_sequences({sources[0]}), ef::token_batch::from_sequences({targets[0]}),
                             {.noise = &n3});
  for (index_t t = 0; t < index_t(targets[0].size()); ++t)
    for (index_t w = 0; w < c.tgt_vocab_size; ++w) ASSERT_NEAR(alone(0, t, w), a(0, t, w), this->tol());
}

TYPED_TEST(MoeTest, NoiseSourceSeesSequencesAndPositions) {
  using S = TypeParam;
  const auto c = moe_model_config(ef::gate::noisy_top_k, 3, 1, {1}, {0});
  random_weights<S> rw(c, 4);
  ef::model<S> m(c, rw.map());
  recording_noise rec;
  const auto src = ef::token_batch::from_sequences({{3, 4, 5}, {6}}), tgt = ef::token_batch::from_sequences({{1, 2}, {1, 3, 4}});
  m.score(src, tgt, {.noise = &rec});
  using row = recording_noise::row;
  auto key = [](const row& r) { return std::make_tuple(r.layer, r.sequence, r.position); };
  std::vector<std::tuple<index_t, index_t, index_t>> got, expected{
      {0, 0, 0}, {0, 0, 1}, {0, 0, 2}, {0, 1, 0}, {1, 0, 0}, {1, 0, 1}, {1, 1, 0}, {1, 1, 1}, {1, 1, 2}};
  for (const auto& r : rec.rows) got.push_back(key(r));
  EXPECT_EQ(got, expected);
  // decode steps: one row per slot, sequence = slot, position = the slot's step
  rec.rows.clear();
  ef::kv_cache<S> cache;
  m.start_decoding(m.encode(src), 2, 4, cache);  // slots 0..3
  ef::tensor<S> lp({2, c.tgt_vocab_size});
  const auto step = [&](std::vector<index_t> slots, std::vector<token_id> tokens, std::vector<index_t> counts = {}) {
    lp.resize({index_t(tokens.size()), c.tgt_vocab_size});
    m.decode_step(cache, {.slots = slots, .tokens = tokens, .counts = counts, .moe = {.noise = &rec}}, lp.matrix());
  };
  step({3, 1}, {1, 1});
  step({1, 3}, {2, 2});
  got.clear();
  for (const auto& r : rec.rows) got.push_back(key(r));
  EXPECT_EQ(got, (std::vector<std::tuple<index_t, index_t, index_t>>{{1, 3, 0}, {1, 1, 0}, {1, 1, 1}, {1, 3, 1}}));
  // several tokens of one slot in one call: consecutive positions from the slot's step
  rec.rows.clear();
  step({0, 1}, {1, 2, 3, 4}, {3, 1});
  got.clear();
  for (const auto& r : rec.rows) got.push_back(key(r));
  EXPECT_EQ(got, (std::vector<std::tuple<index_t, index_t, index_t>>{{1, 0, 0}, {1, 0, 1}, {1, 0, 2}, {1, 1, 2}}));
}

TYPED_TEST(MoeTest, ResultsDoNotDependOnThreadTiming) {
  using S = TypeParam;
  // Big enough that, with more than one thread, experts with few rows each run on their own thread.
  auto c = moe_model_config(ef::gate::top_k, 8, 2, {0}, {0, 1});
  c.d_model = 64;
  c.d_ff = 512;
  random_weights<S> rw(c, 12);
  ef::model<S> m(c, rw.map());
  const auto src = ef::token_batch::from_sequences(sources), tgt = ef::token_batch::from_sequences(targets);
  const auto first = m.score(src, tgt);
  for (int i = 0; i < 5; ++i) expect_bitwise_equal(m.score(src, tgt), first, "repeat " + std::to_string(i));
  const int threads = ef::num_threads();
  ef::set_num_threads(1);
  const auto one = m.score(src, tgt);
  ef::set_num_threads(threads);
  EXPECT_LT(max_diff(one, first), this->tol()) << "1 thread against " << threads;
}

// Gated (SwiGLU) experts, as Mixtral's, against the formula by hand: y = sum over the top k of
// w_e down_e(silu(gate_e x) * up_e x), w = softmax over all E, kept k renormalised to sum 1 (the
// top_k gate's softmax over the kept logits, moe.hpp). Big enough that with 2 threads the experts run
// one per thread (the per-thread path), and then on 1 thread. Catches: gate and up swapped, silu
// on the up projection, weights not renormalised, the gated hidden block shared between threads
// (each expert must write its own rows of the scratch), router logits not recorded as computed.
TYPED_TEST(MoeTest, GatedExpertsAreSoftmaxTopKRenormalised) {
  using S = TypeParam;
  ef::model_config c;
  c.d_model = 64;
  c.d_ff = 256;
  c.ff = ef::feed_forward_kind::gated;
  ef::moe_config m;
  m.n_experts = 4;
  m.top_k = 2;
  m.gate_kind = ef::gate::top_k;
  c.moe = m;
  const index_t d = c.d_model, f = c.d_ff, E = 4, k = 2, n = 40;
  ef::detail::rng g = ef::detail::rng::stream(7, 1);
  auto random = [&](ef::tensor_shape shape, double scale) {
    ef::tensor<S> t(shape);
    for (index_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<S>(scale * g.normal());
    return t;
  };
  ef::weight_map<S> w("gated");
  w.insert("l.moe.gate.weight", random({E, d}, 0.5));
  for (index_t e = 0; e < E; ++e) {
    const std::string p = "l.moe.experts." + std::to_string(e);
    w.insert(p + ".gate_proj.weight", random({f, d}, 1 / std::sqrt(double(d))));
    w.insert(p + ".up_proj.weight", random({f, d}, 1 / std::sqrt(double(d))));
    w.insert(p + ".down_proj.weight", random({d, f}, 1 / std::sqrt(double(f))));
  }
  const auto gate_w = *w.find("l.moe.gate.weight");  // [E, d_model], kept for the reference
  const auto layer = ef::moe_layer<S>::load(w, "l", c, 0);
  w.expect_empty();
  ASSERT_TRUE(layer.gated());
  EXPECT_EQ(layer.d_ff(), f);
  EXPECT_EQ(layer.parameter_count(), E * d + E * 3 * d * f);
  const auto x = random({n, d}, 1.0);  // [n, d_model]
  // The reference, in double: Mixtral's routing and experts.
  std::vector<double> ref(std::size_t(n * d), 0.0), ref_logits(std::size_t(n * E), 0.0);
  for (index_t i = 0; i < n; ++i) {
    double* h = ref_logits.data() + i * E;
    for (index_t e = 0; e < E; ++e)
      for (index_t j = 0; j < d; ++j) h[e] += double(gate_w(e, j)) * double(x(i, j));
    const double mx = *std::max_element(h, h + E);
    std::vector<double> p(static_cast<std::size_t>(E));
    double z = 0;
    for (index_t e = 0; e < E; ++e) z += (p[std::size_t(e)] = std::exp(h[e] - mx));
    for (auto& v : p) v /= z;  // softmax over all E
    std::vector<index_t> order{0, 1, 2, 3};
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return p[std::size_t(a)] > p[std::size_t(b)]; });
    const double kept = p[std::size_t(order[0])] + p[std::size_t(order[1])];
    for (index_t j = 0; j < k; ++j) {
      const index_t e = order[std::size_t(j)];
      const auto& ex = layer.gated_expert(e);
      std::vector<double> a(static_cast<std::size_t>(f));
      for (index_t r = 0; r < f; ++r) {
        double gv = 0, uv = 0;
        for (index_t q = 0; q < d; ++q) {
          gv += double(ex.gate.weight(r, q)) * double(x(i, q));
          uv += double(ex.up.weight(r, q)) * double(x(i, q));
        }
        a[std::size_t(r)] = gv / (1 + std::exp(-gv)) * uv;  // silu(gate x) * up x
      }
      for (index_t o = 0; o < d; ++o) {
        double v = 0;
        for (index_t r = 0; r < f; ++r) v += double(ex.down.weight(o, r)) * a[std::size_t(r)];
        ref[std::size_t(i * d + o)] += p[std::size_t(e)] / kept * v;  // renormalised to sum 1
      }
    }
  }
  for (const int threads : {ef::num_threads(), 1}) {
    const int before = ef::num_threads();
    ef::set_num_threads(threads);
    ef::moe_router_stats stats;
    stats.keep_logits = true;
    const auto y = run_layer(layer, x, {.stats = &stats});
    ef::set_num_threads(before);
    double dev = 0, logit_dev = 0;
    for (index_t i = 0; i < n * d; ++i) dev = std::max(dev, std::fabs(double(y.data()[i]) - ref[std::size_t(i)]));
    ASSERT_EQ(stats.layers()[0].logits.size(), std::size_t(n * E));
    for (index_t i = 0; i < n * E; ++i)
      logit_dev = std::max(logit_dev, std::fabs(stats.layers()[0].logits[std::size_t(i)] - ref_logits[std::size_t(i)]));
    EXPECT_LT(dev, this->tol()) << threads << " thread(s)";
    EXPECT_LT(logit_dev, this->tol()) << threads << " thread(s)";
    index_t sum = 0;
    for (index_t cnt : stats.layers()[0].counts) sum += cnt;
    EXPECT_EQ(sum, n * k);
  }
}

TYPED_TEST(MoeTest, NoHeapAllocationInADecodeStep) {
  using S = TypeParam;
  auto c = moe_model_config(ef::gate::noisy_top_k, 4, 2, {0}, {0, 1}, true);
  c.d_model = 64;
  c.d_ff = 128;
  random_weights<S> rw(c, 2);
  ef::model<S> m(c, rw.map());
  ef::seeded_moe_noise noise(9);
  ef::moe_router_stats stats;
  for (bool keep : {false, true}) {
    stats.keep_choices = keep;
    const auto memory = m.encode(ef::token_batch::from_sequences(sources));
    ef::kv_cache<S> cache;
    m.start_decoding(memory, 2, 32, cache);
    const std::vector<index_t> slots{0, 1, 2, 3, 4, 5};
    const std::vector<token_id> tokens(slots.size(), 1);
    const std::vector<index_t> parents{1, 0, 3, 2, 5, 4};
    ef::tensor<S> out({6, c.tgt_vocab_size});
    const ef::moe_runtime rt{.noise = &noise, .stats = &stats};
    m.decode_step(cache, {.slots = slots, .tokens = tokens, .moe = rt}, out.matrix());  // the first step may allocate
    cache.reorder(parents);
    const long before = ef::testing::allocations();
    for (int step = 0; step < 8; ++step) {
      m.decode_step(cache, {.slots = slots, .tokens = tokens, .moe = rt}, out.matrix());
      cache.reorder(parents);
      m.decode_step(cache,
                    {.slots = std::span<const index_t>(slots).first(2), .tokens = std::span<const token_id>(tokens).first(2),
                     .moe = rt},
                    ef::make_view(out.data(), 2, c.tgt_vocab_size));
    }
    EXPECT_EQ(ef::testing::allocations() - before, 0) << "keep_choices " << keep;
  }
}

// The decoder-only families of tests/fixtures/lm whose layers are new to the decode step: Mixtral's
// gated experts (router logits and choices recorded) and GPT-2's learned positions. Catches: a
// per-step vector in the gated expert path or in the router statistics, a position table copied per
// step.
TYPED_TEST(MoeTest, NoHeapAllocationInADecodeStepDecoderOnly) {
  using S = TypeParam;
  for (const char* name : {"mixtral", "gpt2"}) {
    const auto m = ef::load_model<S>(std::filesystem::path(EIGENFORMER_TEST_DATA) / "lm" / name);
    ef::moe_router_stats stats;
    stats.keep_choices = true;
    stats.keep_logits = true;
    const std::vector<std::vector<token_id>> prompts{{1, 5, 9, 12}, {1, 7}};
    const auto memory = m.encode(ef::token_batch::from_sequences(prompts));
    ef::kv_cache<S> cache;
    m.start_decoding(memory, 2, 24, cache);
    const std::vector<index_t> slots{0, 1, 2, 3};
    const std::vector<index_t> counts{4, 4, 2, 2};
    const std::vector<token_id> prompt_tokens{1, 5, 9, 12, 1, 5, 9, 12, 1, 7, 1, 7};
    const std::vector<token_id> tokens(slots.size(), 3);
    const std::vector<index_t> parents{1, 0, 3, 2};
    ef::tensor<S> first({12, m.config().tgt_vocab_size}), out({4, m.config().tgt_vocab_size});
    const ef::moe_runtime rt{.stats = &stats};
    m.decode_step(cache, {.slots = slots, .tokens = prompt_tokens, .counts = counts, .moe = rt}, first.matrix());
    m.decode_step(cache, {.slots = slots, .tokens = tokens, .moe = rt}, out.matrix());  // the first one-token step may allocate
    cache.reorder(parents);
    const long before = ef::testing::allocations();
    for (int step = 0; step < 8; ++step) {
      m.decode_step(cache, {.slots = slots, .tokens = tokens, .moe = rt}, out.matrix());
      cache.reorder(parents);
    }
    EXPECT_EQ(ef::testing::allocations() - before, 0) << name;
    if (std::string(name) == "mixtral") {
      ASSERT_EQ(stats.layers().size(), 2u);
      EXPECT_EQ(stats.layers()[0].tokens, 4);
      EXPECT_EQ(stats.layers()[0].logits.size(), 4u * 4u);
    }
  }
}

TYPED_TEST(MoeTest, WeightErrorsNameTheTensor) {
  using S = TypeParam;
  const auto c = moe_model_config(ef::gate::top_k, 3, 2, {1}, {0});
  {
    random_weights<S> rw(c, 1);
    rw.map().take("transformer.encoder.layers.1.moe.gate.weight", {3, c.d_model});
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::format_error,
                                  "tensor 'transformer.encoder.layers.1.moe.gate.weight' is missing");
  }
  {
    random_weights<S> rw(c, 1);
    rw.map().take("transformer.decoder.layers.0.moe.experts.2.linear2.bias", {c.d_model});
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::format_error,
                                  "tensor 'transformer.decoder.layers.0.moe.experts.2.linear2.bias' is missing");
  }
  {
    random_weights<S> rw(c, 1);  // a noise projection under the top_k gate
    rw.map().insert("transformer.decoder.layers.0.moe.noise.weight", ef::tensor<S>({3, c.d_model}));
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::format_error,
                                  "unexpected tensor 'transformer.decoder.layers.0.moe.noise.weight'");
  }
  {
    random_weights<S> rw(c, 1);
    rw.map().insert("transformer.encoder.layers.1.moe.gate.weight", ef::tensor<S>({4, c.d_model}));
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::shape_error,
                                  "'transformer.encoder.layers.1.moe.gate.weight': shape [4, 16], expected [3, 16]");
  }
  {
    auto noisy = c;
    noisy.moe->gate_kind = ef::gate::noisy_top_k;
    random_weights<S> rw(c, 1);  // top_k weights: no noise projection
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(noisy, rw.map())), ef::format_error,
                                  "tensor 'transformer.encoder.layers.1.moe.noise.weight' is missing");
  }
  {
    random_weights<S> rw(c, 1);  // dense feed-forward tensors left in an MoE layer
    rw.map().insert("transformer.encoder.layers.1.linear1.weight", ef::tensor<S>({c.d_ff, c.d_model}));
    EIGENFORMER_EXPECT_THROW_WITH((ef::model<S>(c, rw.map())), ef::format_error,
                                  "unexpected tensor 'transformer.encoder.layers.1.linear1.weight'");
  }
}

// ---------------------------------------------------------------------------------------------
// parity with the PyTorch reference (tools/make_fixtures.py, tools/reference.py class MoE)

namespace {

const std::filesystem::path fixtures_dir = EIGENFORMER_TEST_DATA;

struct golden_case {
  std::filesystem::path dir;
  index_t B = 0, S = 0, T = 0;
  std::vector<index_t> src_len, tgt_len;
  ef::token_batch src, tgt;

  explicit golden_case(const std::string& name) : dir(fixtures_dir / name) {
    src = read_tokens("src", S, src_len);
    tgt = read_tokens("tgt", T, tgt_len);
  }

  ef::token_batch read_tokens(const std::string& side, index_t& len, std::vector<index_t>& lengths) {
    std::vector<index_t> shape;
    const auto ids = ef::io::read_npy_ints(dir / (side + ".npy"), &shape);
    const auto lens = ef::io::read_npy_ints(dir / (side + "_lengths.npy"));
    B = shape[0];
    len = shape[1];
    lengths.assign(lens.begin(), lens.end());
    std::vector<token_id> tokens(ids.begin(), ids.end());
    return ef::token_batch::from_padded(tokens, B, len, lengths);
  }
};

/// Noise read from the fixture's noise.<scope>.npy [B, T_side, E].
class fixture_noise final : public ef::moe_noise_source {
 public:
  fixture_noise(const std::filesystem::path& dir, const std::vector<std::string>& scopes) {
    for (const auto& s : scopes) {
      auto& a = arrays_[s];
      a.values = ef::io::read_npy<double>(dir / ("noise." + s + ".npy"));
    }
  }
  void fill(const ef::moe_layer_info& layer, const ef::moe_rows& rows, std::span<double> eps) override {
    const auto& a = arrays_.at(std::string(layer.scope)).values;  // [B, T_side, E]
    const index_t T = a.dim(1), E = a.dim(2);
    if (E != layer.n_experts) throw std::runtime_error("fixture noise: expert count");
    for (index_t b = 0; b < rows.batch(); ++b)
      for (index_t r = rows.offsets[std::size_t(b)]; r < rows.offsets[std::size_t(b) + 1]; ++r) {
        const index_t seq = rows.sequence(b), pos = rows.first_position(b) + r - rows.offsets[std::size_t(b)];
        if (seq >= a.dim(0) || pos >= T) throw std::runtime_error("fixture noise: position outside the array");
        for (index_t e = 0; e < E; ++e) eps[std::size_t(r * E + e)] = a(seq, pos, e);
      }
  }

 private:
  struct array {
    ef::tensor<double> values;
  };
  std::map<std::string, array> arrays_;
};

template <class S>
double logprob_error(const ef::tensor<S>& got, const ef::tensor<double>& expected, const std::vector<index_t>& lengths) {
  EXPECT_EQ(got.shape(), expected.shape());
  double worst = 0;
  for (index_t b = 0; b < expected.dim(0); ++b)
    for (index_t t = 0; t < expected.dim(1); ++t)
      for (index_t v = 0; v < expected.dim(2); ++v) {
        const double e = t < lengths[std::size_t(b)] ? expected(b, t, v) : 0.0;
        worst = std::max(worst, std::fabs(double(got(b, t, v)) - e));
      }
  return worst;
}

/// Chosen experts of `scope` (packed rows, k per row) against choice file [B, T_side, k]; returns mismatches.
index_t choice_mismatches(const ef::moe_layer_stats& st, const std::filesystem::path& file, const ef::token_batch& side) {
  std::vector<index_t> shape;
  const auto expected = ef::io::read_npy_ints(file, &shape);
  const index_t T = shape[1], k = shape[2];
  EXPECT_EQ(st.k, k) << file;
  EXPECT_EQ(index_t(st.choices.size()), side.total() * k) << file;
  index_t bad = 0;
  for (index_t b = 0; b < side.size(); ++b)
    for (index_t t = 0; t < T; ++t)
      for (index_t j = 0; j < k; ++j) {
        const auto want = expected[std::size_t((b * T + t) * k + j)];
        if (t >= side.length(b)) {
          bad += want != -1;  // padded positions hold -1
          continue;
        }
        bad += st.choices[std::size_t((side.offsets[std::size_t(b)] + t) * k + j)] != want;
      }
  return bad;
}

template <class S>
void check_golden(const std::string& name, double tol) {
  SCOPED_TRACE(name);
  const golden_case g(name);
  const auto m = ef::load_model<S>(g.dir / "model.safetensors");
  const auto& c = m.config();
  ASSERT_TRUE(c.moe.has_value());
  const auto scopes = moe_scopes(c);
  const bool sparse = c.moe->gate_kind != ef::gate::softmax;
  const char* type = std::is_same_v<S, float> ? "float" : "double";

  auto check_run = [&](const char* label, ef::moe_noise_source* noise, const std::string& logprobs_file,
                       const std::string& choice_prefix) {
    ef::moe_router_stats stats;
    stats.keep_choices = true;
    const auto lp = m.score(g.src, g.tgt, {.noise = noise, .stats = &stats});
    const auto expected = ef::io::read_npy<double>(g.dir / logprobs_file);
    const double err = logprob_error(lp, expected, g.tgt_len);
    EXPECT_LT(err, tol) << label;
    std::cout << "[ golden   ] " << name << " " << label << " " << type << ": max abs error of log-probs " << err;
    // incremental decoding reproduces the reference too
    const auto memory = m.encode(g.src, {.noise = noise});
    ef::kv_cache<S> cache;
    m.start_decoding(memory, 1, g.T, cache);
    ef::tensor<S> step_lp({g.B, c.tgt_vocab_size});
    double step_err = 0;
    for (index_t t = 0; t < g.T; ++t) {
      std::vector<index_t> slots;
      std::vector<token_id> tokens;
      for (index_t b = 0; b < g.B; ++b)
        if (t < g.tgt_len[std::size_t(b)]) {
          slots.push_back(b);
          tokens.push_back(g.tgt.sequence(b)[std::size_t(t)]);
        }
      step_lp.resize({index_t(slots.size()), c.tgt_vocab_size});
      m.decode_step(cache, {.slots = slots, .tokens = tokens, .moe = {.noise = noise}}, step_lp.matrix());
      for (std::size_t i = 0; i < slots.size(); ++i)
        for (index_t v = 0; v < c.tgt_vocab_size; ++v)
          step_err = std::max(step_err, std::fabs(double(step_lp(index_t(i), v)) - expected(slots[i], t, v)));
    }
    EXPECT_LT(step_err, tol) << label << " (decode_step)";
    std::cout << ", decode_step " << step_err;
    if (sparse) {
      index_t bad = 0;
      for (const auto& s : scopes) {
        const auto* st = stats.find(s);
        if (st == nullptr) {
          ADD_FAILURE() << "no statistics for " << s;
          continue;
        }
        const bool enc = s.find(".encoder.") != std::string::npos;
        const index_t mismatches = choice_mismatches(*st, g.dir / (choice_prefix + "." + s + ".npy"), enc ? g.src : g.tgt);
        EXPECT_EQ(mismatches, 0) << label << " " << s;
        bad += mismatches;
      }
      std::cout << ", expert choices " << (bad == 0 ? "all equal" : std::to_string(bad) + " differ");
    }
    std::cout << "\n";
  };
  check_run("noise off", nullptr, "logprobs.npy", "choice");
  if (c.moe->gate_kind == ef::gate::noisy_top_k) {
    fixture_noise noise(g.dir, scopes);
    check_run("injected noise", &noise, "logprobs_noisy.npy", "choice_noisy");
  }
}

}  // namespace

TYPED_TEST(MoeTest, GoldenSoftmaxGate) { check_golden<TypeParam>("moe_softmax_f32", this->golden_tol()); }
TYPED_TEST(MoeTest, GoldenTopOnePreLnGelu) { check_golden<TypeParam>("moe_top1_preln_gelu_bf16", this->golden_tol()); }
TYPED_TEST(MoeTest, GoldenTopTwoLearned) { check_golden<TypeParam>("moe_top2_learned_f16", this->golden_tol()); }
TYPED_TEST(MoeTest, GoldenNoisyTopTwoPreLn) { check_golden<TypeParam>("moe_noisy_top2_preln_f32", this->golden_tol()); }
