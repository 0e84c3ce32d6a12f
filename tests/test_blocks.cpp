// The building blocks of Llama-family decoders against transformers 4.46.3 (torch 1.13): rms_norm
// (LlamaRMSNorm), rotary_embedding (LlamaRotaryEmbedding + apply_rotary_pos_emb), silu_mul and
// gated_feed_forward (LlamaMLP), in float and double. Fixtures: tests/fixtures/blocks (README.md
// there: what each file is, how tools/blocks/make_block_fixtures.py made it, the measured deviations
// behind the tolerances below). EIGENFORMER_PRINT_DEVIATIONS=1 prints every measured deviation.
//
// Each test's comment names the wrong implementation it would catch.
#include <eigenformer/io/npy.hpp>
#include <eigenformer/layers/gated_feed_forward.hpp>
#include <eigenformer/ops.hpp>
#include <eigenformer/rotary.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support/counting_allocator.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using namespace ef::testing;

namespace {

/// Absolute tolerances per block, from the deviations measured over the fixtures (README.md there;
/// the largest of the -march=native and the portable build in the comments), about 3x rounded up; in double ~5x, since a build without FMA or
/// with other SIMD widths rounds a few sums differently. "ref64": the float64 reference; "hf":
/// transformers' own run in the same precision (float: its float32 run; double: its float64 run,
/// whose RoPE angles and cos/sin are float32 all the same); "table": cos/sin against its float32 run.
/// Outputs are O(1) (RMSNorm normalises; q, k ~ N(0, 1); the MLP's reach 12).
template <class S>
struct block_tolerance;
template <>
struct block_tolerance<float> {
  static constexpr double rms_ref64 = 1.5e-6, rms_hf = 7.5e-7;    // measured 4.4e-7, 2.4e-7 (1 ulp; d64: 0)
  static constexpr double rope_ref64 = 7.5e-7, rope_hf = 7.5e-7;  // measured 2.8e-7, 2.4e-7
  static constexpr double rope_table = 2e-7;                      // measured 6.0e-8: 1 ulp below 1
  static constexpr double mlp_ref64 = 1.2e-5, mlp_hf = 1.2e-5;    // measured 3.6e-6 (portable build), 3.8e-6
};
template <>
struct block_tolerance<double> {
  static constexpr double rms_ref64 = 5e-15;                     // measured 8.9e-16
  static constexpr double rope_ref64 = 5e-15, rope_hf = 5e-7;    // measured 4.4e-16, 1.0e-7 (float32 cos/sin)
  static constexpr double rope_table = 1.2e-7;                   // measured 4.6e-8 (half a float ulp, + torch's 1 ulp)
  static constexpr double mlp_ref64 = 5e-14;                     // measured 3.6e-15
};

const std::filesystem::path blocks_dir = std::filesystem::path(EIGENFORMER_TEST_DATA) / "blocks";

template <class S>
ef::tensor<S> load(const std::string& name) {
  return ef::io::read_npy<S>(blocks_dir / (name + ".npy"));
}

std::vector<index_t> load_positions(const std::string& name) {
  const auto v = ef::io::read_npy_ints(blocks_dir / (name + "_positions.npy"));
  return {v.begin(), v.end()};
}

/// Expects max |got - expected| <= tol; returns the deviation.
template <class S>
double expect_close(const std::string& what, const ef::tensor<S>& got, const ef::tensor<double>& expected, double tol) {
  EXPECT_EQ(got.shape(), expected.shape()) << what;
  if (!(got.shape() == expected.shape())) return INFINITY;
  const double dev = max_abs_diff(got.values(), expected.values());
  EXPECT_LE(dev, tol) << what << " (" << (std::is_same_v<S, float> ? "float" : "double") << ")";
  if (std::getenv("EIGENFORMER_PRINT_DEVIATIONS")) {
    std::printf("[deviation] %-6s %-40s %.3g (tolerance %.3g)\n", std::is_same_v<S, float> ? "float" : "double",
                what.c_str(), dev, tol);
  }
  return dev;
}

template <class S>
ef::rotary_embedding<S> rotary_from_fixture(const std::string& name) {
  const auto p = load<double>(name + "_params");  // [head_dim, theta, factor, max_positions]
  return ef::rotary_embedding<S>(ef::rotary_parameters{static_cast<index_t>(p(0)), p(1), p(2), static_cast<index_t>(p(3))});
}

const char* const rotary_cases[] = {"rope_d8_theta1e4", "rope_d64_theta5e5", "rope_d64_theta1e4_linear2"};

template <class S>
class BlocksTest : public ::testing::Test {};
TYPED_TEST_SUITE(BlocksTest, scalar_types);

// ---- rms_norm --------------------------------------------------------------------------------

// Catches: eps outside the sqrt (the 1e-3 row, where mean(x^2) ~ eps), the mean subtracted
// (LayerNorm), sum or d - 1 instead of the mean, weight applied before normalising or not at all.
TYPED_TEST(BlocksTest, RmsNormMatchesLlamaRMSNorm) {
  using S = TypeParam;
  using tol = block_tolerance<S>;
  for (const std::string name : {"rms_d64", "rms_d13"}) {
    const auto x = load<S>(name + "_x"), w = load<S>(name + "_weight");
    const S eps = static_cast<S>(load<double>(name + "_eps")(0));
    ef::tensor<S> y(x.shape());
    ef::rms_norm(x.matrix(), w.values(), eps, y.matrix());
    expect_close(name + " vs ref64", y, load<double>(name + "_ref64"), tol::rms_ref64);
    if constexpr (std::is_same_v<S, float>) expect_close(name + " vs LlamaRMSNorm f32", y, load<double>(name + "_hf32"), tol::rms_hf);
  }
}

// Catches: a row overwritten while it is still being read (y aliasing x), results differing in place.
TYPED_TEST(BlocksTest, RmsNormInPlaceEqualsOutOfPlace) {
  using S = TypeParam;
  const auto x = load<S>("rms_d64_x"), w = load<S>("rms_d64_weight");
  ef::tensor<S> y(x.shape()), z = x;
  ef::rms_norm(x.matrix(), w.values(), S(1e-6), y.matrix());
  ef::rms_norm(z.matrix(), w.values(), S(1e-6), z.matrix());
  EXPECT_EQ(max_abs_diff(y.values(), z.values()), 0.0);
}

// Catches: eps left out (0 / sqrt(0) = NaN on an all-zero row, e.g. a zero-padded token).
TYPED_TEST(BlocksTest, RmsNormOfZeroRowIsZero) {
  using S = TypeParam;
  ef::tensor<S> x({2, 5}, S(0)), y({2, 5}), w({5}, S(2));
  ef::rms_norm(x.matrix(), w.values(), S(1e-6), y.matrix());
  for (const S v : y.values()) EXPECT_EQ(v, S(0));
}

// Catches: a weight of the wrong length or an output of the wrong shape read or written past its end.
TYPED_TEST(BlocksTest, RmsNormRejectsMismatchedShapes) {
  using S = TypeParam;
  ef::tensor<S> x({2, 4}), y({2, 4}), w({5}), y_bad({3, 4}), w_ok({4});
  EIGENFORMER_EXPECT_THROW_WITH(ef::rms_norm(x.matrix(), w.values(), S(1e-6), y.matrix()), ef::shape_error,
                                "rms_norm: weight shape [5], expected [4]");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rms_norm(x.matrix(), w_ok.values(), S(1e-6), y_bad.matrix()), ef::shape_error,
                                "rms_norm: output shape [3, 4], expected [2, 4]");
}

// ---- rotary_embedding ------------------------------------------------------------------------

// Catches: exact (double) angles instead of transformers' float32 ones (~2e-4 off at position 4000
// with theta 5e5), inv_freq from i / d instead of 2i / d, linear scaling multiplying inv_freq or
// dividing theta, the table indexed by row instead of by position.
TYPED_TEST(BlocksTest, RotaryTableMatchesLlamaRotaryEmbedding) {
  using S = TypeParam;
  for (const std::string name : rotary_cases) {
    const auto rope = rotary_from_fixture<S>(name);
    const auto positions = load_positions(name);
    const index_t h = rope.head_dim() / 2;
    ef::tensor<S> cos({static_cast<index_t>(positions.size()), h}), sin(cos.shape());
    for (std::size_t r = 0; r < positions.size(); ++r)
      for (index_t i = 0; i < h; ++i) {
        cos(static_cast<index_t>(r), i) = rope.cos_table()(positions[r], i);
        sin(static_cast<index_t>(r), i) = rope.sin_table()(positions[r], i);
      }
    expect_close(name + " cos table", cos, load<double>(name + "_cos_hf32"), block_tolerance<S>::rope_table);
    expect_close(name + " sin table", sin, load<double>(name + "_sin_hf32"), block_tolerance<S>::rope_table);
  }
}

// Catches: interleaved pairs (2i, 2i+1) instead of halves (i, i + d/2), rotate_half's sign flipped
// (rotating by -angle), one position for all rows (the packed second sequence restarts at 0), heads
// laid out wrongly (q has 2-3 heads, k one: grouped-query attention's shapes).
TYPED_TEST(BlocksTest, RotaryMatchesApplyRotaryPosEmb) {
  using S = TypeParam;
  using tol = block_tolerance<S>;
  for (const std::string name : rotary_cases) {
    const auto rope = rotary_from_fixture<S>(name);
    const auto positions = load_positions(name);
    auto q = load<S>(name + "_q"), k = load<S>(name + "_k");
    rope.apply(q.matrix(), positions);
    rope.apply(k.matrix(), positions);
    expect_close(name + " q vs ref64", q, load<double>(name + "_q_ref64"), tol::rope_ref64);
    expect_close(name + " k vs ref64", k, load<double>(name + "_k_ref64"), tol::rope_ref64);
    if constexpr (std::is_same_v<S, float>) {
      expect_close(name + " q vs transformers f32", q, load<double>(name + "_q_hf32"), tol::rope_hf);
      expect_close(name + " k vs transformers f32", k, load<double>(name + "_k_hf32"), tol::rope_hf);
    } else {
      expect_close(name + " q vs transformers f64", q, load<double>(name + "_q_hf64"), tol::rope_hf);
    }
  }
}

// Catches: positions divided by the factor after rounding differently, or the factor applied to
// theta: with factor 2 position 2p must equal unscaled position p bit for bit (halving is exact).
TYPED_TEST(BlocksTest, RotaryLinearScalingHalvesPositions) {
  using S = TypeParam;
  const ef::rotary_embedding<S> plain({64, 10000.0, 1.0, 4096}), scaled({64, 10000.0, 2.0, 8192});
  for (const index_t p : {0, 1, 7, 1000, 4095})
    for (index_t i = 0; i < 32; ++i) {
      ASSERT_EQ(scaled.cos_table()(2 * p, i), plain.cos_table()(p, i)) << p << ", " << i;
      ASSERT_EQ(scaled.sin_table()(2 * p, i), plain.sin_table()(p, i)) << p << ", " << i;
    }
}

// Catches: assuming rows of stride heads * head_dim (Q and K are column blocks of the fused QKV
// projection), and writing outside the view.
TYPED_TEST(BlocksTest, RotaryOnStridedViewTouchesOnlyTheView) {
  using S = TypeParam;
  const std::string name = "rope_d8_theta1e4";
  const auto rope = rotary_from_fixture<S>(name);
  const auto positions = load_positions(name);
  const auto q = load<S>(name + "_q");  // [T, 24]
  const index_t T = q.dim(0), w = q.dim(1), stride = w + 5;
  ef::tensor<S> buffer({T, stride}, S(7));  // [T, 5 | q | ...]: q at column 3
  ef::make_view(buffer.data() + 3, T, w, stride) = q.matrix();
  rope.apply(ef::make_view(buffer.data() + 3, T, w, stride), positions);
  ef::tensor<S> got({T, w});
  got.matrix() = ef::make_view(static_cast<const S*>(buffer.data()) + 3, T, w, stride);
  expect_close(name + " strided q vs ref64", got, load<double>(name + "_q_ref64"), block_tolerance<S>::rope_ref64);
  for (index_t r = 0; r < T; ++r)
    for (const index_t c : {index_t(0), index_t(1), index_t(2), w + 3, w + 4}) EXPECT_EQ(buffer(r, c), S(7));
}

// Catches: an odd head_dim accepted (its last value would pair with nothing), theta <= 0 or NaN
// (inv_freq infinite or NaN), a zero or negative scaling factor, an empty or absurd table.
TYPED_TEST(BlocksTest, RotaryRejectsBadParameters) {
  using S = TypeParam;
  using P = ef::rotary_parameters;
  using E = ef::invalid_argument;
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{7, 1e4, 1.0, 16}), E, "rotary_embedding: head_dim: 7, expected an even");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{0, 1e4, 1.0, 16}), E, "head_dim: 0");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, 0.0, 1.0, 16}), E, "rotary_embedding: theta: 0");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, -1.0, 1.0, 16}), E, "theta: -1");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, std::nan(""), 1.0, 16}), E, "theta: nan");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, 1e4, 0.0, 16}), E, "rotary_embedding: scaling_factor: 0");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, 1e4, INFINITY, 16}), E, "scaling_factor: inf");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, 1e4, 1.0, 0}), E, "rotary_embedding: max_positions: 0");
  EIGENFORMER_EXPECT_THROW_WITH(ef::rotary_embedding<S>(P{8, 1e4, 1.0, (index_t(1) << 24) + 1}), E,
                                "max_positions: 16777217, expected 1 to 16777216");
  try {
    ef::rotary_embedding<S>(P{9, 1e4, 1.0, 16});
    ADD_FAILURE() << "odd head_dim accepted";
  } catch (const E& e) {
    EXPECT_EQ(e.subject(), "rotary_embedding: head_dim");
  }
}

// Catches: a position at or past max_positions read past the table's end, a negative position,
// rows changed before a later row's position is found invalid, a width not made of whole heads.
TYPED_TEST(BlocksTest, RotaryRejectsBadInputsBeforeWriting) {
  using S = TypeParam;
  const ef::rotary_embedding<S> rope({8, 1e4, 1.0, 4096});
  auto x = filler(5).make<S>({3, 16});
  const auto before = x;
  const std::vector<index_t> past_end{0, 4000, 4096}, negative{0, -1, 2}, two{0, 1};
  EIGENFORMER_EXPECT_THROW_WITH(rope.apply(x.matrix(), past_end), ef::invalid_argument,
                                "rotary_embedding: position: 4096 at row 2, expected 0 to 4095");
  EIGENFORMER_EXPECT_THROW_WITH(rope.apply(x.matrix(), negative), ef::invalid_argument, "position: -1 at row 1");
  EIGENFORMER_EXPECT_THROW_WITH(rope.apply(x.matrix(), two), ef::shape_error,
                                "rotary_embedding: positions shape [2], expected [3]");
  EXPECT_EQ(max_abs_diff(x.values(), before.values()), 0.0);
  ef::tensor<S> ragged({3, 12});
  const std::vector<index_t> three{0, 1, 2};
  EIGENFORMER_EXPECT_THROW_WITH(rope.apply(ragged.matrix(), three), ef::shape_error,
                                "rotary_embedding: input shape [3, 12], expected [rows, heads * 8]");
}

// ---- silu_mul and gated_feed_forward ----------------------------------------------------------

// Catches: sigmoid(g) * u (silu's factor g missing), silu applied to u instead of g, exp(g) / (1 +
// exp(g)) overflowing to NaN for large g, NaN instead of -0 for very negative g.
TYPED_TEST(BlocksTest, SiluMulMatchesFormula) {
  using S = TypeParam;
  const std::vector<double> gs{-1000, -80, -20, -1.5, -1e-3, 0, 1e-3, 0.5, 3, 20, 80, 1000};
  ef::tensor<S> g({2, static_cast<index_t>(gs.size())}), u(g.shape());
  for (index_t r = 0; r < 2; ++r)
    for (index_t c = 0; c < g.dim(1); ++c) {
      g(r, c) = static_cast<S>(gs[static_cast<std::size_t>(c)]);
      u(r, c) = static_cast<S>(r == 0 ? 1.5 : -0.25 * double(c + 1));
    }
  const auto g0 = g;
  ef::silu_mul(g.matrix(), u.matrix());
  for (index_t r = 0; r < 2; ++r)
    for (index_t c = 0; c < g.dim(1); ++c) {
      const double gv = double(g0(r, c)), expected = gv / (1 + std::exp(-gv)) * double(u(r, c));
      ASSERT_FALSE(std::isnan(double(g(r, c)))) << gv;
      EXPECT_NEAR(double(g(r, c)), expected, tolerance<S>::value * std::max(1.0, std::fabs(expected))) << gv;
    }
  ef::tensor<S> u_bad({2, 3});
  EIGENFORMER_EXPECT_THROW_WITH(ef::silu_mul(g.matrix(), u_bad.matrix()), ef::shape_error,
                                "silu_mul: up shape [2, 3], expected [2, 12]");
}

template <class S>
ef::weight_map<S> mlp_weights() {
  ef::weight_map<S> w("mlp.safetensors");
  w.insert("layers.0.mlp.gate_proj.weight", load<S>("mlp_gate_proj"));
  w.insert("layers.0.mlp.up_proj.weight", load<S>("mlp_up_proj"));
  w.insert("layers.0.mlp.down_proj.weight", load<S>("mlp_down_proj"));
  return w;
}

// Catches: gate and up swapped (silu on the up projection), a missing transpose of the [out, in]
// weights, the gate and up halves of the scratch overlapping, a bias added where Llama has none.
TYPED_TEST(BlocksTest, GatedFeedForwardMatchesLlamaMLP) {
  using S = TypeParam;
  using tol = block_tolerance<S>;
  auto w = mlp_weights<S>();
  const auto ff = ef::gated_feed_forward<S>::load(w, "layers.0.mlp", 16, 40);
  w.expect_empty();
  EXPECT_EQ(ff.parameter_count(), 3 * 16 * 40);
  const auto x = load<S>("mlp_x");
  ef::tensor<S> out({x.dim(0), 16});
  ef::workspace<S> ws;
  ff(x.matrix(), out.matrix(), ws);
  expect_close("LlamaMLP vs out64", out, load<double>("mlp_out64"), tol::mlp_ref64);
  if constexpr (std::is_same_v<S, float>) expect_close("LlamaMLP vs transformers f32", out, load<double>("mlp_out32"), tol::mlp_hf);
  // A single row (a decode step) takes linear()'s small-batch path: the same numbers.
  ef::tensor<S> one({1, 16});
  ff(x.matrix().topRows(1), one.matrix(), ws);
  ef::tensor<S> first({1, 16});
  first.matrix() = out.matrix().topRows(1);
  EXPECT_LE(max_abs_diff(one.values(), first.values()), tol::mlp_ref64);
}

// Catches: a weight of the wrong shape accepted, a bias (mlp_bias) silently ignored instead of left
// over for weight_map::expect_empty() to name.
TYPED_TEST(BlocksTest, GatedFeedForwardLoadChecksNamesAndShapes) {
  using S = TypeParam;
  auto w = mlp_weights<S>();
  EIGENFORMER_EXPECT_THROW_WITH(ef::gated_feed_forward<S>::load(w, "layers.0.mlp", 16, 41), ef::shape_error,
                                "mlp.safetensors: tensor 'layers.0.mlp.gate_proj.weight': shape [40, 16], expected [41, 16]");
  auto w2 = mlp_weights<S>();
  w2.insert("layers.0.mlp.up_proj.bias", ef::tensor<S>({40}));
  (void)ef::gated_feed_forward<S>::load(w2, "layers.0.mlp", 16, 40);
  EIGENFORMER_EXPECT_THROW_WITH(w2.expect_empty(), ef::format_error, "unexpected tensor 'layers.0.mlp.up_proj.bias'");
  auto w3 = mlp_weights<S>();
  EIGENFORMER_EXPECT_THROW_WITH(ef::gated_feed_forward<S>::load(w3, "layers.1.mlp", 16, 40), ef::format_error,
                                "tensor 'layers.1.mlp.gate_proj.weight' is missing");
}

// Catches: a heap allocation per call in rms_norm, rotary_embedding::apply, silu_mul or the gated
// feed-forward once its workspace has grown (decode steps must not allocate).
TYPED_TEST(BlocksTest, PerCallFunctionsAllocateNothing) {
  using S = TypeParam;
  const auto x = load<S>("mlp_x"), nw = load<S>("rms_d64_weight");
  auto w = mlp_weights<S>();
  const auto ff = ef::gated_feed_forward<S>::load(w, "layers.0.mlp", 16, 40);
  const auto rope = rotary_from_fixture<S>("rope_d64_theta5e5");
  const auto positions = load_positions("rope_d64_theta5e5");
  auto q = load<S>("rope_d64_theta5e5_q");
  auto n = load<S>("rms_d64_x");
  ef::tensor<S> out({x.dim(0), 16}), g({4, 8}, S(1)), u({4, 8}, S(2));
  ef::workspace<S> ws;
  ff(x.matrix(), out.matrix(), ws);  // grows ws.hidden once
  const long before = allocations();
  ff(x.matrix(), out.matrix(), ws);
  ff(x.matrix().topRows(1), out.matrix().topRows(1), ws);
  rope.apply(q.matrix(), positions);
  ef::rms_norm(n.matrix(), nw.values(), S(1e-6), n.matrix());
  ef::silu_mul(g.matrix(), u.matrix());
  EXPECT_EQ(allocations() - before, 0);
}

}  // namespace
