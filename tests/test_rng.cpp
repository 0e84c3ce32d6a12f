// detail/rng.hpp: the generator against published reference outputs, the stream derivation and
// the conversions against values computed independently (a separate Python implementation of
// PCG32 and SplitMix64, itself checked against the same published values), and the shapes of the
// uniform and normal distributions by chi-square tests (fixed seeds: deterministic).
#include <eigenformer/detail/rng.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <random>
#include <set>
#include <type_traits>
#include <vector>

namespace ef = eigenformer;
using ef::detail::pcg32;

namespace {

// Upper-tail chi-square critical values at false-alarm rate 1e-6 (exact quantiles, computed from
// the regularized incomplete gamma function). The seeds are fixed, so the tests are deterministic;
// the small rate only means a correct generator was not just lucky.
constexpr double chi2_crit_df39 = 96.13;
constexpr double chi2_crit_df63 = 131.37;

}  // namespace

static_assert(std::uniform_random_bit_generator<pcg32>);
static_assert(std::is_same_v<ef::detail::rng, pcg32>);
// Usable at compile time: the first reference output.
static_assert([] {
  pcg32 g(42, 54);
  return g.next_u32();
}() == 0xa15c02b7u);

TEST(Pcg32, MatchesTheReferenceDemo) {
  // pcg32-demo.c of pcg-c-basic: pcg32_srandom_r(&rng, 42u, 54u), "Round 1: 32bit:".
  pcg32 g(42, 54);
  const std::array<std::uint32_t, 6> expected = {0xa15c02b7u, 0x7b47f409u, 0xba1d3330u,
                                                 0x83d2f293u, 0xbfa4784bu, 0xcbed606eu};
  for (std::uint32_t e : expected) EXPECT_EQ(g.next_u32(), e);
}

TEST(Pcg32, SplitMix64MatchesItsReference) {
  // First output of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c).
  EXPECT_EQ(ef::detail::splitmix64_at(1234567, 1), 6457827717110365317ull);
}

TEST(Pcg32, StreamsArePinned) {
  // stream(seed, i) = pcg32(splitmix64_at(seed, 2i+1), splitmix64_at(seed, 2i+2)); values from the
  // independent Python implementation. A change here changes every sampled token of every user.
  struct pin {
    std::uint64_t seed, index;
    std::array<std::uint32_t, 4> out;
  };
  const pin pins[] = {
      {0, 0, {0x90644221u, 0x4618e85fu, 0x8f5bd9cdu, 0xaf2c0306u}},
      {42, 0, {0xd11dd51fu, 0xa9b04c45u, 0xb5d97aa9u, 0xa9eab6ceu}},
      {42, 1, {0xb061d6b6u, 0x6e1e0dd3u, 0xde471d42u, 0xc448ed9au}},
      {~0ull, 7, {0x481c7b6bu, 0xf6c3466cu, 0x38c16de8u, 0x8288fcdau}},
  };
  for (const auto& p : pins) {
    auto g = pcg32::stream(p.seed, p.index);
    for (std::uint32_t e : p.out) EXPECT_EQ(g.next_u32(), e) << "seed " << p.seed << " index " << p.index;
  }
  EXPECT_EQ(pcg32(), pcg32::stream(0, 0));
}

TEST(Pcg32, ConversionsArePinned) {
  pcg32 a(42, 54);
  EXPECT_EQ(a.uniform01(), static_cast<float>(0xa15c02b7u >> 8) * 0x1.0p-24f);
  EXPECT_EQ(a.uniform01(), 0x7b47f4 * 0x1.0p-24f);
  EXPECT_FLOAT_EQ(pcg32(42, 54).uniform01(), 0.6303101778030396f);
  EXPECT_EQ(pcg32(42, 54).uniform01_double(), 0.6303102205231708);
  // Box-Muller from stream (42, 0): libm's log and cos may differ in the last bits.
  EXPECT_NEAR(pcg32::stream(42, 0).normal(), -0.4543032148499092, 1e-14);
}

TEST(Pcg32, DistinctStreamsDiffer) {
  std::set<std::uint64_t> firsts;
  for (std::uint64_t i = 0; i < 1000; ++i) {
    auto g = pcg32::stream(7, i);
    const std::uint64_t hi = g.next_u32();
    firsts.insert(hi << 32 | g.next_u32());
  }
  EXPECT_EQ(firsts.size(), 1000u);
  // Neighbouring seeds, same index.
  EXPECT_NE(pcg32::stream(1, 0), pcg32::stream(2, 0));
  auto a = pcg32::stream(1, 0), b = pcg32::stream(2, 0);
  int equal = 0;
  for (int i = 0; i < 64; ++i) equal += a.next_u32() == b.next_u32();
  EXPECT_EQ(equal, 0);
}

TEST(Pcg32, CopiesContinueIdentically) {
  auto a = pcg32::stream(3, 4);
  a.next_u32();
  auto b = a;
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next_u32(), b.next_u32());
  EXPECT_EQ(a, b);
}

TEST(Pcg32, UniformIsUniform) {
  constexpr int bins = 64;
  constexpr int n = 1'000'000;
  std::vector<double> count_f(bins, 0), count_d(bins, 0);
  auto g = pcg32::stream(11, 0);
  double lo = 1, hi = 0;
  for (int i = 0; i < n; ++i) {
    const float u = g.uniform01();
    const double v = g.uniform01_double();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ASSERT_GE(v, 0.0);
    ASSERT_LT(v, 1.0);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    count_f[static_cast<int>(u * bins)] += 1;
    count_d[static_cast<int>(v * bins)] += 1;
  }
  double chi_f = 0, chi_d = 0;
  const double e = double(n) / bins;
  for (int b = 0; b < bins; ++b) {
    chi_f += (count_f[b] - e) * (count_f[b] - e) / e;
    chi_d += (count_d[b] - e) * (count_d[b] - e) / e;
  }
  static_assert(bins - 1 == 63);
  EXPECT_LT(chi_f, chi2_crit_df63);
  EXPECT_LT(chi_d, chi2_crit_df63);
  EXPECT_LT(lo, 1e-5);
  EXPECT_GT(hi, 1 - 1e-5);
}

TEST(Pcg32, NormalIsStandardNormal) {
  constexpr int n = 1'000'000;
  // 40 equiprobable bins of N(0, 1), edges by bisection on the CDF.
  constexpr int bins = 40;
  auto cdf = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  std::vector<double> edges;
  for (int b = 1; b < bins; ++b) {
    double lo = -10, hi = 10;
    for (int it = 0; it < 200; ++it) {
      const double mid = 0.5 * (lo + hi);
      (cdf(mid) < double(b) / bins ? lo : hi) = mid;
    }
    edges.push_back(0.5 * (lo + hi));
  }
  std::vector<double> count(bins, 0);
  auto g = pcg32::stream(5, 2);
  double sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const double x = g.normal();
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += x * x;
    count[std::upper_bound(edges.begin(), edges.end(), x) - edges.begin()] += 1;
  }
  EXPECT_NEAR(sum / n, 0.0, 5 * 1.0 / std::sqrt(double(n)));
  EXPECT_NEAR(sum2 / n, 1.0, 5 * std::sqrt(2.0 / n));
  double chi = 0;
  const double e = double(n) / bins;
  for (double c : count) chi += (c - e) * (c - e) / e;
  static_assert(bins - 1 == 39);
  EXPECT_LT(chi, chi2_crit_df39);
}

TEST(Pcg32, NormalConsumesFourOutputs) {
  auto a = pcg32::stream(9, 9), b = a;
  a.normal();
  for (int i = 0; i < 4; ++i) b.next_u32();
  EXPECT_EQ(a, b);
}
