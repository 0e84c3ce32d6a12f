// Weight matrices in bfloat16, float16 and int8 (packed_weights.hpp, load_options::weights): the
// kernels against independent double-precision references built in this file, and whole models at
// each type against their own float32 run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <limits>
#include <random>
#include <vector>

#include <eigenformer/eigenformer.hpp>

#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using ef::weight_type;

namespace {

constexpr weight_type reduced[] = {weight_type::bfloat16, weight_type::float16, weight_type::int8};

ef::tensor<float> random_matrix(index_t rows, index_t cols, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  ef::tensor<float> t({rows, cols});
  for (index_t i = 0; i < t.size(); ++i) t.data()[i] = dist(gen);
  return t;
}

/// The test's own int8 quantisation of a row, as the header's comment defines it (scale 127 / max|x|,
/// round to nearest even), written independently of the library.
double quantize_reference(const float* x, index_t n, std::vector<int>& q) {
  double amax = 0;
  for (index_t k = 0; k < n; ++k) amax = std::max(amax, std::abs(static_cast<double>(x[k])));
  q.assign(static_cast<std::size_t>(n), 0);
  if (amax == 0) return 0;
  const float scale = 127.0f / static_cast<float>(amax);
  for (index_t k = 0; k < n; ++k) q[static_cast<std::size_t>(k)] = static_cast<int>(std::nearbyint(x[k] * scale));
  return scale;
}

/// y = x W^T + b in double from the packed matrix's own rounded values (16-bit types) or from
/// integer products of independently quantised inputs (int8).
std::vector<double> reference(const ef::packed_matrix<float>& p, const ef::tensor<float>& x, const ef::tensor<float>& bias) {
  const index_t n = x.dim(0), in = x.dim(1), out = p.rows();
  std::vector<double> y(static_cast<std::size_t>(n * out));
  std::vector<int> qx;
  for (index_t i = 0; i < n; ++i) {
    const double sx = p.type() == weight_type::int8 ? quantize_reference(x.data() + i * in, in, qx) : 0;
    for (index_t o = 0; o < out; ++o) {
      double s = 0;
      if (p.type() == weight_type::int8) {
        std::int64_t acc = 0;
        for (index_t k = 0; k < in; ++k) acc += std::int64_t{qx[static_cast<std::size_t>(k)]} * p.int8_data()[o * p.stride() + k];
        s = sx == 0 ? 0 : static_cast<double>(acc) / (sx * static_cast<double>(p.int8_scales()[o]));
      } else {
        for (index_t k = 0; k < in; ++k) s += static_cast<double>(x.data()[i * in + k]) * p.value(o, k);
      }
      y[static_cast<std::size_t>(i * out + o)] = s + (bias.size() ? bias.data()[o] : 0.0);
    }
  }
  return y;
}

}  // namespace

// Kernel against reference, for every type, at batch sizes on both sides of small_batch_rows (the
// streaming kernel and the tiled GEMM), with out = 67 (a partial block of 4 rows and of a 64-row
// tile) and in = 300 (not a multiple of the 64-byte padding nor of the 512-column widening chunk...
// and 1100, which is). Catches: the wrong bits widened (bfloat16 read as float16 or the shift
// missing), a row stride without the padding, the tail of a row or the last partial block dropped,
// the bias skipped or shifted, int8 scales inverted or per column, vpmaddubsw saturation (inputs and
// weights at +-127 are in every row: each row's largest element quantises to 127).
TEST(PackedWeights, KernelsMatchDoubleReference) {
  for (const index_t in : {300, 1100}) {
    const auto w = random_matrix(67, in, 1);
    const auto bias = random_matrix(1, 67, 2);
    for (const weight_type t : reduced) {
      const ef::packed_matrix<float> p(std::as_const(w).matrix(), t);
      for (const index_t n : {1, 2, 3, 8, 9, 20, 200}) {
        SCOPED_TRACE(std::string(ef::weight_type_name(t)) + " in " + std::to_string(in) + " n " + std::to_string(n));
        const auto x = random_matrix(n, in, 3 + static_cast<std::uint32_t>(n));
        ef::tensor<float> y({n, 67});
        p.apply(0, 67, x.data(), in, n, bias.values(), y.data(), 67);
        const auto ref = reference(p, x, ef::tensor<float>(bias));
        double worst = 0, scale = 0;
        for (std::size_t i = 0; i < ref.size(); ++i) {
          worst = std::max(worst, std::abs(y.data()[i] - ref[i]));
          scale = std::max(scale, std::abs(ref[i]));
        }
        // float accumulation of `in` products of magnitude ~1: ~1e-6 relative to the outputs (~sqrt(in)).
        EXPECT_LT(worst, 2e-6 * scale) << "worst " << worst << " of " << scale;
      }
    }
  }
}

// int8 with AVX512-VNNI: the GEMM (more than 8 inputs) gives every output equal to what each input
// alone gives through the decode kernel, bit for bit: both sum exact integers and scale them back by
// the same operations, so a prompt computes exactly what feeding it token by token computes. n covers
// a part-filled group of 16 (9, 20), a whole tile of 64 (64), a tile plus one (65) and, with in = 1100
// (256 KiB panels of 192 inputs), more than one panel (200); out = 67 leaves a last block of 6 rows
// with one row. Catches a packing that misplaces an input's bytes, a tail group read as real inputs, a
// block's repeated last row stored, rows or inputs of the tile crossed in the store, and a
// vectorised scale-back that rounds differently from the scalar one (a fused multiply-add, a
// reciprocal).
TEST(PackedWeights, Int8GemmEqualsEachInputAlone) {
#if !defined(EIGENFORMER_INT8_VNNI)
  GTEST_SKIP() << "without AVX512-VNNI more than 8 inputs go through Eigen's float GEMM (exact below 2^24 only)";
#else
  for (const index_t in : {300, 1100}) {
    const auto w = random_matrix(67, in, 13);
    const auto bias = random_matrix(1, 67, 14);
    const ef::packed_matrix<float> p(std::as_const(w).matrix(), weight_type::int8);
    for (const index_t n : {9, 20, 64, 65, 200}) {
      auto x = random_matrix(n, in, 15 + static_cast<std::uint32_t>(n));
      for (index_t k = 0; k < in; ++k) x.data()[in + k] = 0.0f;  // input 1: all zero (scale 0)
      ef::tensor<float> y({n, 67}), one({1, 67});
      p.apply(0, 67, x.data(), in, n, bias.values(), y.data(), 67);
      for (index_t i = 0; i < n; ++i) {
        p.apply(0, 67, x.data() + i * in, in, 1, bias.values(), one.data(), 67);
        for (index_t o = 0; o < 67; ++o) {
          ASSERT_EQ(y.data()[i * 67 + o], one.data()[o]) << "in " << in << " n " << n << " input " << i << " row " << o;
        }
      }
    }
  }
#endif
}

// Rows [first, first + count) alone give those columns of the full product (the query, or the
// keys and values, of a fused in_proj). Catches a row offset applied to the weights but not to the
// int8 scales or the bias.
TEST(PackedWeights, RowRangeEqualsColumnsOfFullProduct) {
  const auto w = random_matrix(48, 40, 5);
  const auto bias = random_matrix(1, 48, 6);
  for (const weight_type t : reduced) {
    const ef::packed_matrix<float> p(std::as_const(w).matrix(), t);
    for (const index_t n : {1, 12}) {
      const auto x = random_matrix(n, 40, 7);
      ef::tensor<float> full({n, 48}), part({n, 20});
      p.apply(0, 48, x.data(), 40, n, bias.values(), full.data(), 48);
      p.apply(16, 20, x.data(), 40, n, bias.values().subspan(16, 20), part.data(), 20);
      for (index_t i = 0; i < n; ++i) {
        for (index_t o = 0; o < 20; ++o) {
          // n <= 8: the same 4-row blocks, the same sums (equal); n = 12: GEMM tiles split differently
          // (summation order: 1e-6 relative).
          const float a = part.data()[i * 20 + o], b = full.data()[i * 48 + 16 + o];
          if (n <= 8) EXPECT_EQ(a, b) << ef::weight_type_name(t);
          else EXPECT_NEAR(a, b, 1e-6 * (1 + std::abs(b))) << ef::weight_type_name(t);
        }
      }
    }
  }
}

// The rounding of each type stays within its bound: |w - value| <= 2^-8 |w| (bfloat16: 8 significant
// bits, half an ulp), 2^-11 |w| (float16: 11 bits, for these normal values), and half a step of the row's scale
// (int8). Catches truncation instead of rounding (twice the bound), and a scale per matrix.
TEST(PackedWeights, RoundingWithinEachTypesBound) {
  const auto w = random_matrix(16, 100, 8);
  for (const weight_type t : reduced) {
    const ef::packed_matrix<float> p(std::as_const(w).matrix(), t);
    for (index_t o = 0; o < 16; ++o) {
      double amax = 0;
      for (index_t k = 0; k < 100; ++k) amax = std::max(amax, std::abs(double(w.data()[o * 100 + k])));
      for (index_t k = 0; k < 100; ++k) {
        const double v = w.data()[o * 100 + k], err = std::abs(v - p.value(o, k));
        const double bound = t == weight_type::bfloat16 ? std::ldexp(std::abs(v), -8)
                             : t == weight_type::float16 ? std::ldexp(std::abs(v), -11) + 1e-7
                                                         : 0.5 * amax / 127 * (1 + 1e-6);
        ASSERT_LE(err, bound) << ef::weight_type_name(t) << " row " << o << " col " << k;
      }
    }
  }
}

// int8: an input row with a NaN or an infinity gives NaN outputs (the model's finite check then
// names the step) instead of a finite number computed from the other entries; an all-zero row gives
// the bias. Catches a max|x| that skips NaN (std::max drops it) and a division by a zero scale.
TEST(PackedWeights, Int8NonFiniteAndZeroRows) {
  const auto w = random_matrix(8, 64, 9);
  const auto bias = random_matrix(1, 8, 10);
  const ef::packed_matrix<float> p(std::as_const(w).matrix(), weight_type::int8);
  for (const index_t n : {3, 10}) {
    auto x = random_matrix(n, 64, 11);
    x.data()[5] = std::numeric_limits<float>::quiet_NaN();            // row 0
    x.data()[64 + 7] = std::numeric_limits<float>::infinity();        // row 1
    for (index_t k = 0; k < 64; ++k) x.data()[2 * 64 + k] = 0.0f;     // row 2
    ef::tensor<float> y({n, 8});
    p.apply(0, 8, x.data(), 64, n, bias.values(), y.data(), 8);
    for (index_t o = 0; o < 8; ++o) {
      EXPECT_TRUE(std::isnan(y.data()[o])) << "n " << n;
      EXPECT_TRUE(std::isnan(y.data()[8 + o])) << "n " << n;
      EXPECT_EQ(y.data()[16 + o], bias.data()[o]) << "n " << n;
    }
  }
}

// The widest int8 rows whose sums stay exact in int32: at 65536 columns with every weight and input
// at +-127 (w = +-1, x = 1: the VNNI kernel's raw sum of (x + 128) w is +-2^31 x 0.99) the product is
// exactly +-65536, through the few-row kernel (n = 1) and the block kernel (n = 9); a row of 65537 is
// refused by name. Catches an overflowing accumulation (a wrapped sum) and the limit missing.
TEST(PackedWeights, Int8WidestRowsStayExact) {
  constexpr index_t cols = 65536;
  ef::tensor<float> w({2, cols});
  for (index_t k = 0; k < cols; ++k) w.data()[k] = 1.0f, w.data()[cols + k] = -1.0f;
  const ef::packed_matrix<float> p(std::as_const(w).matrix(), weight_type::int8);
#if defined(EIGENFORMER_INT8_VNNI)
  constexpr bool integer_gemm = true;
#else
  constexpr bool integer_gemm = false;  // n = 9: Eigen's float GEMM on the integers (exact below 2^24)
#endif
  for (const index_t n : {1, 9}) {
    ef::tensor<float> x({n, cols}, 1.0f), y({n, 2});
    p.apply(0, 2, x.data(), cols, n, {}, y.data(), 2);
    const float tol = n == 1 || integer_gemm ? 0.0f : 65536.0f * 1e-6f;
    for (index_t i = 0; i < n; ++i) {
      EXPECT_NEAR(y.data()[2 * i], 65536.0f, tol) << "n " << n;
      EXPECT_NEAR(y.data()[2 * i + 1], -65536.0f, tol) << "n " << n;
    }
  }
  const auto wide = random_matrix(1, cols + 1, 12);
  EIGENFORMER_EXPECT_THROW_WITH(ef::packed_matrix<float>(std::as_const(wide).matrix(), weight_type::int8),
                                ef::invalid_argument, "65536");
}

TEST(PackedWeights, ParseNamesTheOption) {
  EXPECT_EQ(ef::parse_weight_type("bfloat16"), weight_type::bfloat16);
  EXPECT_EQ(ef::parse_weight_type("int8"), weight_type::int8);
  try {
    (void)ef::parse_weight_type("int4", "--weights");
    ADD_FAILURE() << "no error";
  } catch (const ef::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--weights"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("int4"), std::string::npos) << e.what();
  }
}

namespace {

struct model_case {
  std::string name;
  std::filesystem::path path;
  double bound[3];  // largest |log-prob - float32's| allowed for bfloat16, float16, int8
};

std::filesystem::path source_dir() { return EIGENFORMER_SOURCE_DIR; }
std::filesystem::path data_dir() { return EIGENFORMER_TEST_DATA; }

/// 16 seeded sources of 4-9 ids in [4, vocab) (every fixture's ids 0-3 are specials), or, for a
/// decoder-only model, prompts that start with its bos.
std::vector<std::vector<ef::token_id>> sources_for(const ef::model<float>& m) {
  std::mt19937 gen(42);
  const auto vocab = m.config().decoder_only() ? m.config().tgt_vocab_size : m.config().src_vocab_size;
  std::uniform_int_distribution<ef::token_id> id(4, static_cast<ef::token_id>(vocab - 1));
  std::uniform_int_distribution<int> len(4, 9);
  std::vector<std::vector<ef::token_id>> src(16);
  for (auto& s : src) {
    if (m.config().decoder_only()) s.push_back(m.config().bos_id);
    for (int i = len(gen); i > 0; --i) s.push_back(id(gen));
  }
  return src;
}

/// Teacher-forced log-probs [B, T, V] of `targets` (decoder-only: prompt + continuation).
ef::tensor<float> scores(const ef::model<float>& m, const std::vector<std::vector<ef::token_id>>& src,
                         const std::vector<std::vector<ef::token_id>>& targets) {
  if (m.config().decoder_only()) return m.score(ef::token_batch::from_sequences(targets));
  return m.score(ef::token_batch::from_sequences(src), ef::token_batch::from_sequences(targets));
}

}  // namespace

// Whole models at each weight type against their own float32 run: teacher-forced log-probabilities
// of float32's greedy outputs (24 new tokens at most) within a bound set at about twice the deviation
// measured here (printed), and how many greedy outputs stay identical (printed; an output may flip
// only at a step whose float32 margin is below twice the deviation, so it is not asserted). Models:
// the bundled G2P model (trained, post-norm, our format), its mixture-of-experts twin (experts
// converted, gates not), the Llama fixture (RMSNorm, RoPE, GQA, SwiGLU, untied head) and the Marian
// Hugging Face fixture (tied head: the converted copy of the embedding). Catches a layer left
// unconverted that should be (no change at all: the deviation is printed and a zero for a reduced
// type fails), a converted layer multiplied wrongly (deviations of order 1 or more), a tied head
// left reading a released weight.
TEST(PackedWeights, ModelsAtEachTypeStayNearFloat32) {
  const std::vector<model_case> cases = {
      // Measured (native build): g2p 3.2e-2 / 3.7e-6 / 0.34, g2p-moe 2.0e-2 / 4.4e-6 / 0.28,
      // llama 4.1e-2 / 5.3e-3 / 0.51, marian 0.14 / 1.1e-2 / 0.28 (bfloat16 / float16 / int8).
      {"g2p", source_dir() / "examples/models/g2p.safetensors", {0.07, 1e-5, 0.7}},
      {"g2p-moe", source_dir() / "examples/models/g2p-moe.safetensors", {0.05, 1e-5, 0.6}},
      {"llama", data_dir() / "lm/llama", {0.1, 0.011, 1.0}},
      {"marian", data_dir() / "hf/marian", {0.3, 0.025, 0.6}},
  };
  for (const auto& c : cases) {
    const auto reference_model = ef::load_model<float>(c.path);
    const auto src = sources_for(reference_model);
    ef::generation_options o;
    o.max_new_tokens = 24;
    const auto results = ef::generate(reference_model, ef::token_batch::from_sequences(src), o);
    std::vector<std::vector<ef::token_id>> targets, outputs;
    for (std::size_t b = 0; b < src.size(); ++b) {
      std::vector<ef::token_id> t = reference_model.config().decoder_only() ? src[b] : std::vector<ef::token_id>{reference_model.config().bos_id};
      const auto& out = results[b].best().tokens;
      t.insert(t.end(), out.begin(), out.end());
      targets.push_back(t);
      outputs.push_back(out);
    }
    const auto expected = scores(reference_model, src, targets);
    for (int ti = 0; ti < 3; ++ti) {
      const weight_type t = reduced[ti];
      SCOPED_TRACE(c.name + " " + ef::weight_type_name(t));
      ef::load_options lo;
      lo.weights = t;
      const auto m = ef::load_model<float>(c.path, lo);
      ASSERT_EQ(m.weights(), t);
      // (The tiny fixtures are mostly embeddings and rows padded to 64 bytes: only the G2P models, of
      // real width, show the saving.)
      if (c.name.rfind("g2p", 0) == 0) {
        EXPECT_LT(m.weight_bytes(), reference_model.weight_bytes());
      }
      const auto got = scores(m, src, targets);
      // The log-probabilities of the scored tokens (decoder-only: those after the prompt), as
      // CTranslate2's score_batch reports them; the far tail of the distribution (log-probs of -30)
      // moves more and matters to nobody.
      double worst = 0;
      const index_t T = got.shape()[1], V = got.shape()[2];
      const bool lm = reference_model.config().decoder_only();
      for (std::size_t b = 0; b < targets.size(); ++b) {
        const index_t first = lm ? static_cast<index_t>(src[b].size()) - 1 : 0;
        const index_t last = static_cast<index_t>(targets[b].size()) - (lm ? 1 : 0);  // rows predicting
        for (index_t p = first; p < last; ++p) {
          const bool has_next = p + 1 < static_cast<index_t>(targets[b].size());
          const ef::token_id next = has_next ? targets[b][static_cast<std::size_t>(p) + 1] : reference_model.config().eos_id;
          const index_t i = (static_cast<index_t>(b) * T + p) * V + next;
          worst = std::max(worst, std::abs(double(got.data()[i]) - double(expected.data()[i])));
        }
      }
      const auto greedy = ef::generate(m, ef::token_batch::from_sequences(src), o);
      int same = 0;
      for (std::size_t b = 0; b < src.size(); ++b) same += greedy[b].best().tokens == outputs[b];
      std::printf("[ measured ] %s %s: largest |log-prob - float32| %.3e, greedy outputs identical %d/%zu, weights %.1f%% of float32's bytes\n",
                  c.name.c_str(), ef::weight_type_name(t), worst, same, src.size(),
                  100.0 * double(m.weight_bytes()) / double(reference_model.weight_bytes()));
      // A reduced type must change something (a layer left unconverted changes nothing) -- except
      // float16 on the G2P models, whose file stores F16 weights: converting them to float16 is exact,
      // and the portable build (same summation order as float32) then measures 0.
      if (t != weight_type::float16 || c.name.rfind("g2p", 0) != 0) {
        EXPECT_GT(worst, 0.0);
      }
      EXPECT_LT(worst, c.bound[ti]);
    }
  }
}
