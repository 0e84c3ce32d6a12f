// Golden tests: eigenformer against PyTorch on every committed fixture (tests/fixtures, written by
// tools/make_fixtures.py from tools/reference.py). The reference is PyTorch in float64 on the
// stored weights. Tolerances (max abs error): log-probabilities 1e-5 in float, 1e-10 in double;
// encoder output 1e-5 / 1e-10.
#include <eigenformer/io/model_loader.hpp>
#include <eigenformer/io/npy.hpp>

#include <cstdio>

#include "fixture_util.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using namespace ef::testing;

template <class Scalar>
class GoldenTest : public ::testing::Test {
 protected:
  static constexpr double tol = std::is_same_v<Scalar, float> ? 1e-5 : 1e-10;
};
TYPED_TEST_SUITE(GoldenTest, scalar_types);

TEST(Golden, FixturesArePresent) { EXPECT_GE(fixture_cases().size(), 10u); }

TYPED_TEST(GoldenTest, LogProbsMatchPyTorch) {
  using S = TypeParam;
  for (const auto& name : fixture_cases()) {
    SCOPED_TRACE(name);
    const auto dir = fixture_root() / name;
    const auto m = ef::load_model<S>(dir / "model.safetensors");
    const auto src = fixture_batch(dir, "src"), tgt = fixture_batch(dir, "tgt");
    const auto expected = ef::io::read_npy<double>(dir / "logprobs.npy");
    const auto got = m.score(src, tgt);
    ASSERT_EQ(got.shape(), expected.shape());
    const double err = max_abs_diff(got.values(), expected.values());
    EXPECT_LT(err, this->tol);
    std::printf("%-40s %-6s max abs error %.3g\n", name.c_str(), std::is_same_v<S, float> ? "float" : "double", err);
  }
}

TYPED_TEST(GoldenTest, EncoderOutputMatchesPyTorch) {
  using S = TypeParam;
  for (const auto& name : fixture_cases()) {
    SCOPED_TRACE(name);
    const auto dir = fixture_root() / name;
    const auto m = ef::load_model<S>(dir / "model.safetensors");
    const auto src = fixture_batch(dir, "src");
    const auto expected = ef::io::read_npy<double>(dir / "memory.npy");  // [B, S, d], 0 past lengths
    const auto memory = m.encode(src);
    const index_t d = m.config().d_model;
    double err = 0;
    for (index_t b = 0; b < src.size(); ++b)
      for (index_t t = 0; t < src.length(b); ++t)
        for (index_t j = 0; j < d; ++j)
          err = std::max(err, std::fabs(double(memory.memory(src.offsets[std::size_t(b)] + t, j)) - expected(b, t, j)));
    EXPECT_LT(err, this->tol);
  }
}
