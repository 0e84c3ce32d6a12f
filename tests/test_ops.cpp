// ops.hpp against naive double-precision loops, on awkward sizes (1, odd, not a multiple of the
// SIMD width), for float and double. Tolerances: tolerance<Scalar> scaled by the reduction length.
#include <eigenformer/ops.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using namespace ef::testing;

template <class Scalar>
class OpsTest : public ::testing::Test {
 protected:
  static double tol(index_t reduction = 1) { return tolerance<Scalar>::value * std::max<index_t>(reduction, 4); }
};
TYPED_TEST_SUITE(OpsTest, scalar_types);

constexpr index_t sizes[] = {1, 3, 7, 8, 17, 33};  // n = 8: the largest few-row kernel (small_batch_rows)

TYPED_TEST(OpsTest, LinearMatchesNaiveLoops) {
  using S = TypeParam;
  filler f(1);
  for (index_t n : sizes)
    for (index_t in : sizes)
      for (index_t out : {1, 5, 19}) {
        auto x = f.make<S>({n, in}), w = f.make<S>({out, in}), b = f.make<S>({out});
        ef::tensor<S> y({n, out}), y_nobias({n, out});
        ef::linear(x.matrix(), w.matrix(), b.values(), y.matrix());
        ef::linear(x.matrix(), w.matrix(), std::span<const S>{}, y_nobias.matrix());
        for (index_t i = 0; i < n; ++i)
          for (index_t o = 0; o < out; ++o) {
            double acc = 0;
            for (index_t k = 0; k < in; ++k) acc += double(x(i, k)) * double(w(o, k));
            ASSERT_NEAR(y_nobias(i, o), acc, this->tol(in)) << n << "x" << in << "->" << out;
            ASSERT_NEAR(y(i, o), acc + double(b(o)), this->tol(in));
          }
      }
}

TYPED_TEST(OpsTest, LinearOnStridedViews) {
  using S = TypeParam;
  filler f(2);
  // x is a column block [3, 4] of a [3, 10] buffer; y a block [3, 5] of a [3, 8] buffer.
  auto big = f.make<S>({3, 10}), w = f.make<S>({5, 4});
  ef::tensor<S> out({3, 8}, S(42));
  ef::linear(ef::make_view(big.data() + 2, 3, 4, 10), w.matrix(), std::span<const S>{},
             ef::make_view(out.data() + 1, 3, 5, 8));
  for (index_t i = 0; i < 3; ++i) {
    EXPECT_EQ(out(i, 0), S(42));
    for (index_t o = 0; o < 5; ++o) {
      double acc = 0;
      for (index_t k = 0; k < 4; ++k) acc += double(big(i, 2 + k)) * double(w(o, k));
      EXPECT_NEAR(out(i, 1 + o), acc, this->tol(4));
    }
    EXPECT_EQ(out(i, 6), S(42));
  }
}

TYPED_TEST(OpsTest, LinearRejectsMismatchedShapes) {
  using S = TypeParam;
  ef::tensor<S> x({2, 3}), w({4, 5}), y({2, 4}), b({3});
  EIGENFORMER_EXPECT_THROW_WITH(ef::linear(x.matrix(), w.matrix(), std::span<const S>{}, y.matrix()),
                                ef::shape_error, "input shape [2, 3] does not match weight [4, 5]");
  ef::tensor<S> w2({4, 3}), y2({2, 5});
  EIGENFORMER_EXPECT_THROW_WITH(ef::linear(x.matrix(), w2.matrix(), std::span<const S>{}, y2.matrix()),
                                ef::shape_error, "output shape [2, 5], expected [2, 4]");
  EIGENFORMER_EXPECT_THROW_WITH(ef::linear(x.matrix(), w2.matrix(), b.values(), y.matrix()), ef::shape_error,
                                "bias shape [3], expected [4]");
}

TYPED_TEST(OpsTest, SoftmaxAndLogSoftmaxMatchNaive) {
  using S = TypeParam;
  filler f(3);
  for (index_t cols : sizes) {
    for (index_t valid : {index_t(-1), index_t(1), cols}) {
      auto x = f.make<S>({4, cols}, -30, 30);  // wide range: stability matters
      auto p = x, lp = x;
      ef::softmax_rows(p.matrix(), valid);
      ef::log_softmax_rows(lp.matrix(), valid);
      const index_t v = valid < 0 ? cols : valid;
      for (index_t i = 0; i < 4; ++i) {
        double m = -1e300, sum = 0;
        for (index_t j = 0; j < v; ++j) m = std::max(m, double(x(i, j)));
        for (index_t j = 0; j < v; ++j) sum += std::exp(double(x(i, j)) - m);
        for (index_t j = 0; j < cols; ++j) {
          const double ref_p = j < v ? std::exp(double(x(i, j)) - m) / sum : 0.0;
          const double ref_lp = j < v ? double(x(i, j)) - m - std::log(sum) : 0.0;
          ASSERT_NEAR(p(i, j), ref_p, this->tol(cols));
          ASSERT_NEAR(lp(i, j), ref_lp, this->tol(cols) * 30);  // |log p| up to ~60
        }
      }
    }
  }
}

TYPED_TEST(OpsTest, SoftmaxIsStableForHugeLogits) {
  using S = TypeParam;
  ef::tensor<S> x({1, 3});
  x(0) = S(1000); x(1) = S(1000); x(2) = S(-1000);
  auto lp = x;
  ef::softmax_rows(x.matrix());
  EXPECT_NEAR(x(0), 0.5, this->tol());
  EXPECT_EQ(x(2), S(0));
  ef::log_softmax_rows(lp.matrix());
  EXPECT_NEAR(lp(0), -std::log(2.0), this->tol());
  EXPECT_NEAR(lp(2), -2000 - std::log(2.0), 1e-3);
  EXPECT_TRUE(std::isfinite(lp(2)));
}

TYPED_TEST(OpsTest, SoftmaxWithAdditiveMask) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity();
  ef::tensor<S> x({2, 3}), mask({2, 3});
  for (index_t i = 0; i < 6; ++i) x(i) = S(i % 3);
  mask(0, 2) = -inf;  // row 0: columns 0, 1 only
  mask(1, 0) = S(1);  // row 1: a bias, not a mask
  auto lx = x;
  ef::softmax_rows_masked(x.matrix(), mask.matrix());
  EXPECT_NEAR(x(0, 0), 1 / (1 + std::exp(1.0)), this->tol());
  EXPECT_EQ(x(0, 2), S(0));
  EXPECT_NEAR(x(1, 0), x(1, 1), this->tol());  // 0 + 1 == 1
  ef::log_softmax_rows_masked(lx.matrix(), mask.matrix());
  EXPECT_NEAR(lx(0, 1), -std::log(1 + std::exp(-1.0)), this->tol());
  EXPECT_EQ(lx(0, 2), -inf);
}

TYPED_TEST(OpsTest, FullyMaskedRowGivesZerosNotNaN) {
  using S = TypeParam;
  const S inf = std::numeric_limits<S>::infinity();
  ef::tensor<S> x({1, 4}, -inf);
  ef::softmax_rows(x.matrix());
  for (auto v : x.values()) EXPECT_EQ(v, S(0));
  ef::tensor<S> y({1, 4}, S(1));
  ef::softmax_rows(y.matrix(), 0);
  for (auto v : y.values()) EXPECT_EQ(v, S(0));
  EIGENFORMER_EXPECT_THROW_WITH(ef::softmax_rows(y.matrix(), 5), ef::shape_error, "valid length 5 exceeds row length 4");
}

TYPED_TEST(OpsTest, LayerNormMatchesNaive) {
  using S = TypeParam;
  filler f(4);
  for (index_t d : sizes) {
    auto x = f.make<S>({5, d}, -3, 5), g = f.make<S>({d}, 0.5, 1.5), b = f.make<S>({d});
    ef::tensor<S> y({5, d});
    ef::layer_norm(x.matrix(), g.values(), b.values(), S(1e-5), y.matrix());
    auto inplace = x;
    ef::layer_norm(inplace.matrix(), g.values(), b.values(), S(1e-5), inplace.matrix());
    for (index_t i = 0; i < 5; ++i) {
      double mean = 0, var = 0;
      for (index_t j = 0; j < d; ++j) mean += double(x(i, j));
      mean /= double(d);
      for (index_t j = 0; j < d; ++j) var += (double(x(i, j)) - mean) * (double(x(i, j)) - mean);
      var /= double(d);
      for (index_t j = 0; j < d; ++j) {
        const double ref = (double(x(i, j)) - mean) / std::sqrt(var + 1e-5) * double(g(j)) + double(b(j));
        ASSERT_NEAR(y(i, j), ref, this->tol(d) * 10) << "d=" << d;
        ASSERT_EQ(inplace(i, j), y(i, j));
      }
    }
  }
  ef::tensor<S> x({2, 3}), y({2, 3}), g({4}), b({3});
  EIGENFORMER_EXPECT_THROW_WITH(ef::layer_norm(x.matrix(), g.values(), b.values(), S(1e-5), y.matrix()),
                                ef::shape_error, "layer_norm: weight shape [4], expected [3]");
}

TYPED_TEST(OpsTest, ReluAndExactGelu) {
  using S = TypeParam;
  filler f(5);
  for (index_t d : sizes) {
    auto x = f.make<S>({3, d}, -6, 6);
    auto r = x, g = x;
    ef::relu(r.matrix());
    ef::gelu(g.matrix());
    for (index_t i = 0; i < x.size(); ++i) {
      const double v = double(x(i));
      ASSERT_EQ(r(i), S(std::max(v, 0.0)));
      ASSERT_NEAR(g(i), 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))), this->tol() * 4) << v;
    }
  }
}

// The tanh GELU and SiLU against their formulas in long double with the C library's tanh and exp
// (independent of Eigen's vectorised ones), over [-30, 30], where exp(-x) overflows float for
// the largest |x|. Catches the exact GELU used for "gelu_new" (1e-4 apart at x = 2: checked on its own, as the loop's float tolerance is wider),
// a wrong constant (0.0447 or sqrt(pi/2)), sigmoid(x) alone for SiLU, and NaN from inf/inf.
TYPED_TEST(OpsTest, TanhGeluAndSilu) {
  using S = TypeParam;
  filler f(6);
  for (index_t d : sizes) {
    auto x = f.make<S>({3, d}, -30, 30);
    x(0) = S(-30);
    x(1) = S(0);
    auto t = x, s = x;
    ef::gelu_tanh(t.matrix());
    ef::silu(s.matrix());
    for (index_t i = 0; i < x.size(); ++i) {
      const long double v = x(i);
      const long double k = std::sqrt(2.0L / 3.14159265358979323846264338327950288L);
      const long double gt = 0.5L * v * (1 + std::tanh(k * (v + 0.044715L * v * v * v)));
      const long double si = v / (1 + std::exp(-v));
      ASSERT_NEAR(t(i), double(gt), this->tol() * 4 * std::max(1.0, std::abs(double(v)))) << double(v);
      ASSERT_NEAR(s(i), double(si), this->tol() * 4 * std::max(1.0, std::abs(double(v)))) << double(v);
    }
  }
  // Where the two GELUs differ (the tanh form is not the exact one): x = 2.
  ef::tensor<S> two({1, 1});
  two(0) = S(2);
  ef::gelu_tanh(two.matrix());
  EXPECT_GT(std::abs(double(two(0)) - 2 * 0.5 * (1 + std::erf(2 / std::sqrt(2.0)))), 5e-5);  // 9.8e-5
}

TYPED_TEST(OpsTest, EmbeddingGatherAndScale) {
  using S = TypeParam;
  filler f(6);
  auto table = f.make<S>({7, 5});
  const std::vector<ef::token_id> ids{6, 0, 3, 3};
  ef::tensor<S> out({4, 5});
  ef::embedding(table.matrix(), ids, S(2), out.matrix());
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 5; ++j) EXPECT_EQ(out(i, j), table(ids[std::size_t(i)], j) * S(2));
  const std::vector<ef::token_id> bad{1, 7};
  ef::tensor<S> out2({2, 5});
  EIGENFORMER_EXPECT_THROW_WITH(ef::embedding(table.matrix(), bad, S(1), out2.matrix(), "src_embed.weight"),
                                ef::invalid_argument, "src_embed.weight: token id 7 at position 1, expected 0 to 6");
  const std::vector<ef::token_id> neg{-1};
  ef::tensor<S> out3({1, 5});
  EXPECT_THROW(ef::embedding(table.matrix(), neg, S(1), out3.matrix()), ef::invalid_argument);
}

TYPED_TEST(OpsTest, ResidualAdd) {
  using S = TypeParam;
  filler f(7);
  auto y = f.make<S>({3, 7}), x = f.make<S>({3, 7});
  auto ref = y;
  ef::residual_add(y.matrix(), x.matrix());
  for (index_t i = 0; i < y.size(); ++i) EXPECT_EQ(y(i), ref(i) + x(i));
  ef::tensor<S> z({3, 6});
  EXPECT_THROW(ef::residual_add(y.matrix(), z.matrix()), ef::shape_error);
}
