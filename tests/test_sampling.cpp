// sampling/: every sampler on hand-checkable distributions first (the {0.1, 0.2, 0.3, 0.4} family
// of llama.cpp's tests/test-sampling.cpp), then against reference filters written here
// independently (double precision, full sort), then chi-square goodness-of-fit of the draws
// against the truncated, renormalised distribution the reference computes, then edge cases,
// errors, reproducibility, composition with a user-defined sampler, and the absence of heap
// allocation per step (a counting global operator new, this binary only).
#include <eigenformer/sampling/sampling.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <new>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "support/counting_allocator.hpp"
#include "support/sampling_inputs.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
namespace efs = eigenformer::sampling;
using efs::candidate;
using efs::candidates;
using ef::index_t;
using ef::token_id;
using ef::testing::default_chain;
using ef::testing::realistic_logits;

namespace {

constexpr float minus_inf = -std::numeric_limits<float>::infinity();

std::vector<float> logits_of(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(p > 0 ? static_cast<float>(std::log(p)) : minus_inf);
  return l;
}

efs::sampling_context ctx_for(std::uint64_t seed = 1, std::uint64_t index = 0) {
  return efs::sampling_context::for_sequence(seed, index);
}

/// Fills `c` with `logits` and applies `s` once.
void run(efs::sampler& s, const std::vector<float>& logits, candidates& c, efs::sampling_context& ctx) {
  c.fill(logits);
  s.apply(c, ctx);
}

/// id -> probability of the kept set (softmax first if needed).
std::map<token_id, double> kept(candidates& c) {
  c.ensure_normalized();
  std::map<token_id, double> m;
  for (const candidate& x : c) m[x.id] = x.p;
  return m;
}

void expect_kept(candidates& c, const std::map<token_id, double>& expected, double tol = 2e-6) {
  const auto got = kept(c);
  ASSERT_EQ(got.size(), expected.size());
  for (const auto& [id, p] : expected) {
    ASSERT_TRUE(got.count(id)) << "token " << id << " missing";
    EXPECT_NEAR(got.at(id), p, tol) << "token " << id;
  }
}

// ---- Independent reference filters, in double, with a full sort --------------------------------
using dist = std::vector<double>;  // probability per token id; 0 = removed

dist ref_softmax(const std::vector<float>& logits, double t = 1.0) {
  double m = -std::numeric_limits<double>::infinity();
  for (float l : logits) m = std::max(m, double(l));
  dist p(logits.size());
  double s = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) s += p[i] = std::exp((double(logits[i]) - m) / t);
  for (double& x : p) x /= s;
  return p;
}

void renormalize(dist& p) {
  const double s = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= s;
}

/// Token ids by probability, descending, ties to the lower id.
std::vector<std::size_t> ranked(const dist& p) {
  std::vector<std::size_t> idx(p.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return p[a] > p[b]; });
  return idx;
}

dist ref_top_k(dist p, std::size_t k) {
  const auto r = ranked(p);
  for (std::size_t i = k; i < r.size(); ++i) p[r[i]] = 0;
  renormalize(p);
  return p;
}

/// Number of ranked tokens top-p keeps (crossing kept, or dropped when `drop`), at least 1.
std::size_t ref_top_p_count(const dist& p, double top, bool drop = false) {
  const auto r = ranked(p);
  double cum = 0;
  for (std::size_t i = 0; i < r.size(); ++i) {
    cum += p[r[i]];
    if (cum >= top) return drop && cum > top ? std::max<std::size_t>(i, 1) : i + 1;
  }
  return r.size();
}

dist ref_top_p(dist p, double top, bool drop = false) {
  const auto r = ranked(p);
  const std::size_t n = ref_top_p_count(p, top, drop);
  for (std::size_t i = n; i < r.size(); ++i) p[r[i]] = 0;
  renormalize(p);
  return p;
}

dist ref_min_p(dist p, double m) {
  const double mx = *std::max_element(p.begin(), p.end());
  for (double& x : p)
    if (x < m * mx) x = 0;
  renormalize(p);
  return p;
}

// Upper-tail chi-square critical values at false-alarm rate 1e-6, df = 1..40 (exact quantiles from
// the regularized incomplete gamma function). Seeds are fixed, so every test is deterministic; the
// small rate says a correct sampler passes with a wide margin rather than by luck of the seed.
constexpr double chi2_crit_1e6[41] = {
    0,     23.93, 27.63, 30.66, 33.38, 35.89, 38.26, 40.52, 42.70, 44.81, 46.86, 48.87, 50.83, 52.75,
    54.64, 56.49, 58.32, 60.13, 61.91, 63.68, 65.42, 67.15, 68.86, 70.55, 72.23, 73.89, 75.55, 77.19,
    78.82, 80.44, 82.04, 83.64, 85.23, 86.81, 88.38, 89.95, 91.50, 93.05, 94.59, 96.13, 97.65};

/// Draws `n` tokens with `s` (fresh fill each step) and checks the counts against `expected`:
/// tokens of probability 0 must never appear; the others pass a chi-square test at 1e-6.
void expect_draws_follow(efs::sampler& s, const std::vector<float>& logits, const dist& expected, int n = 200'000,
                         std::uint64_t seed = 12345) {
  candidates c(static_cast<index_t>(logits.size()));
  auto ctx = ctx_for(seed);
  std::vector<double> count(logits.size(), 0);
  for (int i = 0; i < n; ++i) count[static_cast<std::size_t>(efs::sample(s, logits, c, ctx))] += 1;
  double chi = 0;
  int categories = 0;
  for (std::size_t t = 0; t < logits.size(); ++t) {
    if (expected[t] == 0) {
      EXPECT_EQ(count[t], 0) << s.name() << ": token " << t << " is outside the kept set";
      continue;
    }
    const double e = expected[t] * n;
    ASSERT_GE(e, 5) << "test design: too few expected draws for token " << t;
    chi += (count[t] - e) * (count[t] - e) / e;
    ++categories;
  }
  if (categories <= 1) {
    EXPECT_EQ(categories, 1);
    return;
  }
  const int df = categories - 1;
  ASSERT_LE(df, 40);
  if (std::getenv("EIGENFORMER_TEST_VERBOSE")) {
    std::printf("  %s: chi-square %.2f, df %d, critical %.2f\n", s.name().c_str(), chi, df, chi2_crit_1e6[df]);
  }
  EXPECT_LT(chi, chi2_crit_1e6[df]) << s.name() << ": chi-square " << chi << " with " << df << " degrees of freedom";
}

/// A sampler written the way a user would, outside the library: removes one token.
struct ban_token final : efs::cloneable_sampler<ban_token> {
  token_id banned;
  explicit ban_token(token_id t) : banned(t) {}
  void apply(candidates& c, efs::sampling_context&) override {
    c.keep_if([this](const candidate& x) { return x.id != banned; });
  }
  std::string name() const override { return "ban_token(" + std::to_string(banned) + ")"; }
};

/// A stateful user sampler: counts accepted tokens (for clone independence).
struct accept_counter final : efs::cloneable_sampler<accept_counter> {
  int accepted = 0;
  void apply(candidates&, efs::sampling_context&) override {}
  void accept(token_id) override { ++accepted; }
  void reset() override { accepted = 0; }
  std::string name() const override { return "accept_counter"; }
};

}  // namespace

// ================================================================================================
// candidates
// ================================================================================================

TEST(Candidates, FillCopiesLogitsInVocabularyOrder) {
  candidates c(8);
  const std::vector<float> l = {0.5f, -1.0f, minus_inf, 3.0f};
  c.fill(l);
  ASSERT_EQ(c.size(), 4);
  EXPECT_EQ(c.vocab_size(), 4);
  EXPECT_EQ(c.capacity(), 8);
  for (index_t i = 0; i < 4; ++i) {
    EXPECT_EQ(c[i].id, i);
    EXPECT_EQ(c[i].logit, l[static_cast<std::size_t>(i)]);
  }
  EXPECT_FALSE(c.sorted());
  EXPECT_FALSE(c.normalized());
  EXPECT_FALSE(c.selected());

  const std::vector<double> d = {0.25, -2.0};
  c.fill(d);
  ASSERT_EQ(c.size(), 2);
  EXPECT_EQ(c[0].logit, 0.25f);
  EXPECT_EQ(c[1].logit, -2.0f);
}

TEST(Candidates, ViewsACallerOwnedBuffer) {
  std::vector<candidate> storage(5);
  candidates c{std::span<candidate>(storage)};
  c.fill(std::vector<float>{1, 2, 3});
  EXPECT_EQ(storage[2].id, 2);
  EXPECT_EQ(storage[2].logit, 3.0f);
  EXPECT_EQ(c.capacity(), 5);
}

TEST(Candidates, NaNLogitIsAnErrorNamingTheToken) {
  candidates c(4);
  EIGENFORMER_EXPECT_THROW_WITH(c.fill(std::vector<float>{0, 1, std::nanf(""), 2}), ef::invalid_argument,
                                "logits: NaN at token 2");
  EIGENFORMER_EXPECT_THROW_WITH(c.fill(std::vector<double>{std::nan(""), 1}), ef::invalid_argument,
                                "logits: NaN at token 0");
}

TEST(Candidates, PlusInfAndOutOfRangeAreErrors) {
  candidates c(4);
  EIGENFORMER_EXPECT_THROW_WITH(c.fill(std::vector<float>{0, std::numeric_limits<float>::infinity()}),
                                ef::invalid_argument, "+inf at token 1");
  EIGENFORMER_EXPECT_THROW_WITH(c.fill(std::vector<double>{1e300, 0}), ef::invalid_argument,
                                "beyond float's range at token 0");
  c.fill(std::vector<double>{-1e300, 0});  // rounds to -inf: legal
  EXPECT_EQ(c[0].logit, minus_inf);
}

TEST(Candidates, EmptyOrTooLongLogitsAreErrors) {
  candidates c(2);
  EIGENFORMER_EXPECT_THROW_WITH(c.fill(std::vector<float>{}), ef::invalid_argument, "logits: shape [0]");
  EIGENFORMER_EXPECT_THROW_WITH(c.fill(std::vector<float>{1, 2, 3}), ef::invalid_argument,
                                "exceeds the candidate buffer's capacity 2");
}

TEST(Candidates, SoftmaxMatchesReferenceAndGivesZeroToMinusInf) {
  const auto l = realistic_logits(1000, 3);
  std::vector<float> with_inf = l;
  with_inf[7] = minus_inf;
  with_inf[999] = minus_inf;
  candidates c(1000);
  c.fill(with_inf);
  c.softmax();
  EXPECT_TRUE(c.normalized());
  const dist ref = ref_softmax(with_inf);
  double sum = 0;
  for (const candidate& x : c) {
    EXPECT_NEAR(x.p, ref[static_cast<std::size_t>(x.id)], 1e-6 * std::max(1.0, ref[static_cast<std::size_t>(x.id)] * 10));
    sum += x.p;
  }
  EXPECT_EQ(c[7].p, 0.0f);
  EXPECT_EQ(c[999].p, 0.0f);
  EXPECT_NEAR(sum, 1.0, 1e-5);
}

TEST(Candidates, AllMinusInfIsAClearError) {
  candidates c(3);
  c.fill(std::vector<float>{minus_inf, minus_inf, minus_inf});
  EIGENFORMER_EXPECT_THROW_WITH(c.softmax(), ef::invalid_argument, "every candidate's logit is -inf");
  EIGENFORMER_EXPECT_THROW_WITH(c.argmax(), ef::invalid_argument, "every candidate's logit is -inf");
}

TEST(Candidates, TruncateAndKeepIfRescaleAndKeepOrder) {
  candidates c(4);
  c.fill(logits_of({0.1, 0.2, 0.3, 0.4}));
  c.softmax();
  c.keep_if([](const candidate& x) { return x.id != 1; });
  ASSERT_EQ(c.size(), 3);
  EXPECT_EQ(c[0].id, 0);
  EXPECT_EQ(c[1].id, 2);
  EXPECT_EQ(c[2].id, 3);
  EXPECT_TRUE(c.normalized());
  EXPECT_NEAR(c[0].p, 0.1 / 0.8, 1e-6);
  EIGENFORMER_EXPECT_THROW_WITH(c.truncate(4), ef::invalid_argument, "candidates::truncate: 4");
}

// ================================================================================================
// greedy
// ================================================================================================

TEST(Greedy, PicksTheHighestLogitWithoutSoftmax) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::greedy g;
  run(g, {0.1f, 2.5f, -1.0f, 2.0f}, c, ctx);
  EXPECT_EQ(c.selected(), 1);
  EXPECT_FALSE(c.normalized());
  for (const candidate& x : c) EXPECT_EQ(x.p, 0.0f);  // p never computed
  EXPECT_EQ(g.name(), "greedy");
}

TEST(Greedy, TiesGoToTheLowerIdInAnyOrder) {
  candidates c(5);
  auto ctx = ctx_for();
  efs::greedy g;
  run(g, {1, 3, 0, 3, 3}, c, ctx);
  EXPECT_EQ(c.selected(), 1);
  // Reordered candidates: the tie still goes to id 1.
  c.fill(std::vector<float>{1, 3, 0, 3, 3});
  std::reverse(c.begin(), c.end());
  g.apply(c, ctx);
  EXPECT_EQ(c.selected(), 1);
}

TEST(Greedy, SkipsMinusInfAndRejectsAllMinusInf) {
  candidates c(3);
  auto ctx = ctx_for();
  efs::greedy g;
  run(g, {minus_inf, -50.0f, minus_inf}, c, ctx);
  EXPECT_EQ(c.selected(), 1);
  c.fill(std::vector<float>{minus_inf, minus_inf});
  EIGENFORMER_EXPECT_THROW_WITH(g.apply(c, ctx), ef::invalid_argument, "every candidate's logit is -inf");
}

// ================================================================================================
// temperature
// ================================================================================================

TEST(Temperature, DividesTheLogits) {
  candidates c(3);
  auto ctx = ctx_for();
  efs::temperature t(0.5f);
  run(t, {1, 2, 3}, c, ctx);
  EXPECT_EQ(c[0].logit, 2.0f);
  EXPECT_EQ(c[2].logit, 6.0f);
  const dist ref = ref_softmax({1, 2, 3}, 0.5);
  expect_kept(c, {{0, ref[0]}, {1, ref[1]}, {2, ref[2]}});
  EXPECT_EQ(t.name(), "temperature(0.5)");
}

TEST(Temperature, OneChangesNothingAndOrderSurvives) {
  candidates c(3);
  auto ctx = ctx_for();
  efs::temperature one(1.0f);
  run(one, {1, 2, 3}, c, ctx);
  EXPECT_EQ(c[1].logit, 2.0f);
  efs::top_k k(2);
  c.fill(std::vector<float>{1, 2, 3});
  k.apply(c, ctx);
  efs::temperature(2.0f).apply(c, ctx);
  EXPECT_TRUE(c.sorted());
  EXPECT_FALSE(c.normalized());
}

TEST(Temperature, ZeroKeepsOnlyTheArgmax) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::temperature t(0.0f);
  run(t, {1, 5, 2, 5}, c, ctx);
  ASSERT_EQ(c.size(), 1);
  EXPECT_EQ(c[0].id, 1);  // tie to the lower id
  EXPECT_EQ(c[0].p, 1.0f);
  EXPECT_TRUE(c.normalized());
}

TEST(Temperature, NearZeroIsGreedyWithoutOverflow) {
  candidates c(3);
  auto ctx = ctx_for();
  efs::temperature t(1e-30f);  // 3 / 1e-30 overflows float: logits are shifted first
  run(t, {1, 3, 2}, c, ctx);
  c.softmax();
  EXPECT_EQ(c[1].p, 1.0f);
  EXPECT_EQ(c[0].p, 0.0f);
  EXPECT_EQ(c[2].p, 0.0f);
  // Tied maxima share the mass.
  run(t, {3, 3, 2}, c, ctx);
  c.softmax();
  EXPECT_EQ(c[0].p, 0.5f);
  EXPECT_EQ(c[1].p, 0.5f);
  for (const candidate& x : c) EXPECT_FALSE(std::isnan(x.p));
  efs::chain ch;
  ch.add(efs::temperature(1e-6f)).add(efs::distribution());
  expect_draws_follow(ch, {3, 3, 2, minus_inf}, {0.5, 0.5, 0, 0}, 20'000);
}

TEST(Temperature, InvalidValuesAreErrors) {
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::temperature(-1.0f), ef::invalid_argument,
                                "temperature: -1, expected a finite value >= 0");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::temperature(std::nanf("")), ef::invalid_argument, "temperature: nan");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::temperature(std::numeric_limits<float>::infinity()), ef::invalid_argument,
                                "temperature: inf");
}

// ================================================================================================
// top-k
// ================================================================================================

TEST(TopK, KeepsTheKMostProbableRenormalised) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::top_k k(2);
  run(k, logits_of({0.1, 0.2, 0.3, 0.4}), c, ctx);
  expect_kept(c, {{3, 0.4 / 0.7}, {2, 0.3 / 0.7}});
  EXPECT_TRUE(c.sorted());
  EXPECT_EQ(c[0].id, 3);
  EXPECT_EQ(k.name(), "top_k(2)");
}

TEST(TopK, OneIsTheArgmax) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::top_k k(1);
  run(k, logits_of({0.1, 0.2, 0.4, 0.3}), c, ctx);
  expect_kept(c, {{2, 1.0}});
}

TEST(TopK, KAtLeastVKeepsAllAndZeroDisables) {
  candidates c(4);
  auto ctx = ctx_for();
  for (index_t k : {0, 4, 5, 1000}) {
    efs::top_k f(k);
    run(f, logits_of({0.1, 0.2, 0.3, 0.4}), c, ctx);
    expect_kept(c, {{0, 0.1}, {1, 0.2}, {2, 0.3}, {3, 0.4}});
  }
}

TEST(TopK, TiesAreBrokenByLowerTokenId) {
  candidates c(6);
  auto ctx = ctx_for();
  efs::top_k k(3);
  run(k, {1, 2, 1, 2, 1, 2}, c, ctx);  // three 2s: ids 1, 3, 5
  ASSERT_EQ(c.size(), 3);
  EXPECT_EQ(c[0].id, 1);
  EXPECT_EQ(c[1].id, 3);
  EXPECT_EQ(c[2].id, 5);
  efs::top_k k4(4);  // then the lowest-id 1
  run(k4, {1, 2, 1, 2, 1, 2}, c, ctx);
  EXPECT_EQ(c[3].id, 0);
}

TEST(TopK, MatchesFullSortOnLargeInputsWithTies) {
  // Both code paths (heap for small k, nth_element for large k), logits quantised to force ties.
  auto g = ef::detail::rng::stream(77, 0);
  for (index_t v : {100, 5000}) {
    std::vector<float> l(static_cast<std::size_t>(v));
    for (float& x : l) x = std::round(static_cast<float>(g.normal()) * 4.0f) / 4.0f;
    l[3] = minus_inf;
    std::vector<candidate> ref(l.size());
    for (std::size_t i = 0; i < l.size(); ++i) ref[i] = {static_cast<token_id>(i), l[i], 0};
    std::sort(ref.begin(), ref.end(), efs::ranks_before{});
    for (index_t k : {index_t{1}, index_t{7}, v / 20, v / 2, v - 1}) {
      candidates c(v);
      auto ctx = ctx_for();
      efs::top_k f(k);
      run(f, l, c, ctx);
      ASSERT_EQ(c.size(), k);
      for (index_t i = 0; i < k; ++i) ASSERT_EQ(c[i].id, ref[static_cast<std::size_t>(i)].id) << "v " << v << " k " << k;
    }
  }
}

TEST(TopK, NegativeKIsAnError) {
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::top_k(-1), ef::invalid_argument, "top_k: -1, expected k >= 0");
}

// ================================================================================================
// top-p
// ================================================================================================

TEST(TopP, HandCheckedCases) {
  candidates c(4);
  auto ctx = ctx_for();
  const auto l = logits_of({0.1, 0.2, 0.3, 0.4});
  efs::top_p p07(0.7f);
  run(p07, l, c, ctx);  // 0.4 + 0.3 reaches 0.7 exactly
  expect_kept(c, {{3, 0.4 / 0.7}, {2, 0.3 / 0.7}});
  efs::top_p p075(0.75f);
  run(p075, l, c, ctx);  // crossing token (0.2) kept
  expect_kept(c, {{3, 0.4 / 0.9}, {2, 0.3 / 0.9}, {1, 0.2 / 0.9}});
  efs::top_p p1(1.0f);
  run(p1, l, c, ctx);
  EXPECT_EQ(c.size(), 4);
  efs::top_p tiny(0.05f);  // smaller than every probability: the best token alone
  run(tiny, l, c, ctx);
  expect_kept(c, {{3, 1.0}});
  EXPECT_EQ(p07.name(), "top_p(0.7)");
}

TEST(TopP, StopBeforeExceedingVariant) {
  candidates c(4);
  auto ctx = ctx_for();
  const auto l = logits_of({0.1, 0.2, 0.3, 0.4});
  using cr = efs::top_p::crossing;
  efs::top_p p075(0.75f, cr::drop);
  run(p075, l, c, ctx);  // 0.4 + 0.3 + 0.2 would exceed 0.75
  expect_kept(c, {{3, 0.4 / 0.7}, {2, 0.3 / 0.7}});
  efs::top_p p07(0.7f, cr::drop);
  run(p07, l, c, ctx);  // reaching exactly p is not exceeding it
  expect_kept(c, {{3, 0.4 / 0.7}, {2, 0.3 / 0.7}});
  efs::top_p tiny(0.05f, cr::drop);  // would keep nothing: the best token stays
  run(tiny, l, c, ctx);
  expect_kept(c, {{3, 1.0}});
  EXPECT_EQ(p075.name(), "top_p(0.75, drop crossing)");
}

TEST(TopP, FlatDistributionWithPBelowOneOverVKeepsOneToken) {
  // llama2.c's sample_topp reads index -1 here; we keep the lower-id token of the tie.
  candidates c(1000);
  auto ctx = ctx_for();
  efs::top_p p(0.0005f);
  run(p, std::vector<float>(1000, 0.25f), c, ctx);
  ASSERT_EQ(c.size(), 1);
  EXPECT_EQ(c[0].id, 0);
  efs::top_p half(0.5f);  // flat: exactly the 500 lowest ids
  run(half, std::vector<float>(1000, 0.25f), c, ctx);
  ASSERT_EQ(c.size(), 500);
  for (const candidate& x : c) EXPECT_LT(x.id, 500);
}

TEST(TopP, MinKeep) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::top_p p(0.05f, efs::top_p::crossing::keep, 3);
  run(p, logits_of({0.1, 0.2, 0.3, 0.4}), c, ctx);
  expect_kept(c, {{3, 0.4 / 0.9}, {2, 0.3 / 0.9}, {1, 0.2 / 0.9}});
}

TEST(TopP, MatchesFullSortReferenceOnManyShapes) {
  // Peaked, normal, flat-ish and tied distributions, V from 2 to 20000, both variants, sorted
  // and unsorted input: the kept set is always the top-n by (p desc, id asc), and n agrees with
  // the reference up to masses within 1e-5 of p.
  auto g = ef::detail::rng::stream(2024, 0);
  int cases = 0;
  for (index_t v : {2, 3, 17, 300, 4000, 20000}) {
    for (double sigma : {0.01, 0.5, 2.0, 6.0}) {
      std::vector<float> l(static_cast<std::size_t>(v));
      for (float& x : l) x = static_cast<float>(sigma * g.normal());
      if (v > 10) {
        l[1] = minus_inf;
        l[5] = l[6];  // a tie
      }
      const dist ref = ref_softmax(l);
      const auto r = ranked(ref);
      for (float top : {0.05f, 0.3f, 0.5f, 0.9f, 0.95f, 0.999f, 0.99999f}) {
        for (bool drop : {false, true}) {
          for (bool presorted : {false, true}) {
            candidates c(v);
            auto ctx = ctx_for();
            c.fill(l);
            if (presorted) {
              std::sort(c.begin(), c.end(), efs::ranks_before{});
              c.set_sorted(true);
            }
            efs::top_p f(top, drop ? efs::top_p::crossing::drop : efs::top_p::crossing::keep);
            f.apply(c, ctx);
            const auto n = static_cast<std::size_t>(c.size());
            const std::size_t lo = ref_top_p_count(ref, top - 1e-5, drop), hi = ref_top_p_count(ref, top + 1e-5, drop);
            ASSERT_GE(n, lo) << "v " << v << " sigma " << sigma << " p " << top << " drop " << drop;
            ASSERT_LE(n, hi) << "v " << v << " sigma " << sigma << " p " << top << " drop " << drop;
            std::set<token_id> got, want;
            for (const candidate& x : c) got.insert(x.id);
            for (std::size_t i = 0; i < n; ++i) want.insert(static_cast<token_id>(r[i]));
            ASSERT_EQ(got, want) << "v " << v << " sigma " << sigma << " p " << top;
            ASSERT_TRUE(c.normalized());
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 6 * 4 * 7 * 2 * 2);
}

TEST(TopP, InvalidValuesAreErrors) {
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::top_p(1.5f), ef::invalid_argument, "top_p: 1.5, expected a value in (0, 1]");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::top_p(0.0f), ef::invalid_argument, "top_p: 0, expected a value in (0, 1]");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::top_p(-0.1f), ef::invalid_argument, "top_p: -0.1");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::top_p(std::nanf("")), ef::invalid_argument, "top_p: nan");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::top_p(0.5f, efs::top_p::crossing::keep, 0), ef::invalid_argument,
                                "top_p: min_keep 0, expected a value >= 1");
}

// ================================================================================================
// min-p
// ================================================================================================

TEST(MinP, HandCheckedCases) {
  candidates c(4);
  auto ctx = ctx_for();
  const auto l = logits_of({0.1, 0.2, 0.3, 0.4});
  efs::min_p m06(0.6f);  // threshold 0.24
  run(m06, l, c, ctx);
  expect_kept(c, {{3, 0.4 / 0.7}, {2, 0.3 / 0.7}});
  efs::min_p m02(0.2f);  // threshold 0.08: everything
  run(m02, l, c, ctx);
  EXPECT_EQ(c.size(), 4);
  efs::min_p m1(1.0f);
  run(m1, l, c, ctx);
  expect_kept(c, {{3, 1.0}});
  run(m1, {2, 5, 5, 1}, c, ctx);  // tied maxima both survive min_p = 1
  expect_kept(c, {{1, 0.5}, {2, 0.5}});
  efs::min_p off(0.0f);
  run(off, l, c, ctx);
  EXPECT_EQ(c.size(), 4);
  EXPECT_EQ(m06.name(), "min_p(0.6)");
}

TEST(MinP, SortedAndUnsortedAgreeAndOrderIsKept) {
  const auto l = realistic_logits(3000, 8);
  candidates a(3000), b(3000);
  auto ctx = ctx_for();
  efs::min_p m(0.01f);
  run(m, l, a, ctx);
  b.fill(l);
  efs::top_k(2999).apply(b, ctx);  // sorted
  m.apply(b, ctx);
  ASSERT_TRUE(b.sorted());
  ASSERT_EQ(a.size(), b.size());
  for (index_t i = 1; i < a.size(); ++i) EXPECT_LT(a[i - 1].id, a[i].id);  // vocabulary order kept
  const dist ref = ref_min_p(ref_softmax(l), 0.01);
  std::size_t n = 0;
  for (double x : ref) n += x > 0;
  EXPECT_EQ(static_cast<std::size_t>(a.size()), n);
}

TEST(MinP, MinKeep) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::min_p m(1.0f, 3);
  run(m, logits_of({0.1, 0.2, 0.3, 0.4}), c, ctx);
  expect_kept(c, {{3, 0.4 / 0.9}, {2, 0.3 / 0.9}, {1, 0.2 / 0.9}});
}

TEST(MinP, InvalidValuesAreErrors) {
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::min_p(-0.1f), ef::invalid_argument, "min_p: -0.1, expected a value in [0, 1]");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::min_p(1.5f), ef::invalid_argument, "min_p: 1.5");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::min_p(std::nanf("")), ef::invalid_argument, "min_p: nan");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::min_p(0.1f, 0), ef::invalid_argument, "min_p: min_keep 0");
}

// ================================================================================================
// distribution (the draw)
// ================================================================================================

TEST(Distribution, InverseCdfByHand) {
  candidates c(5);
  c.fill(logits_of({0.1, 0.2, 0.0, 0.3, 0.4}));  // token 2 has p = 0 (-inf logit)
  c.softmax();
  using d = efs::distribution;
  EXPECT_EQ(d::draw_index(c, 0.0), 0);
  EXPECT_EQ(d::draw_index(c, 0.0999), 0);
  EXPECT_EQ(d::draw_index(c, 0.1001), 1);
  EXPECT_EQ(d::draw_index(c, 0.2999), 1);
  EXPECT_EQ(d::draw_index(c, 0.3001), 3);  // never token 2
  EXPECT_EQ(d::draw_index(c, 0.5999), 3);
  EXPECT_EQ(d::draw_index(c, 0.6001), 4);
  EXPECT_EQ(d::draw_index(c, 1.0 - 0x1.0p-53), 4);
  c.fill(logits_of({0.0, 1.0}));  // u = 0 never picks a zero-probability first token
  c.softmax();
  EXPECT_EQ(d::draw_index(c, 0.0), 1);
}

TEST(Distribution, ConsumesExactlyOneUniformPerDraw) {
  candidates c(4);
  auto ctx = ctx_for(99);
  auto expected = ctx.rng;
  efs::distribution d;
  for (int i = 0; i < 10; ++i) {
    run(d, logits_of({0.1, 0.2, 0.3, 0.4}), c, ctx);
    expected.uniform01_double();
  }
  EXPECT_EQ(ctx.rng, expected);
}

TEST(Distribution, AllMinusInfIsAClearError) {
  candidates c(2);
  auto ctx = ctx_for();
  efs::distribution d;
  EIGENFORMER_EXPECT_THROW_WITH(run(d, {minus_inf, minus_inf}, c, ctx), ef::invalid_argument,
                                "every candidate's logit is -inf");
}

// ================================================================================================
// penalties
// ================================================================================================

TEST(RepetitionPenalty, CtrlAsHuggingFaceAppliesIt) {
  candidates c(5);
  efs::sampling_context ctx = ctx_for();
  const std::vector<token_id> history = {0, 1, 1, 3};  // token 1 twice: penalised once
  ctx.history = history;
  efs::repetition_penalty rp(2.0f);
  run(rp, {2.0f, -2.0f, 0.5f, 0.0f, 1.0f}, c, ctx);
  EXPECT_EQ(c[0].logit, 1.0f);   // positive: divided
  EXPECT_EQ(c[1].logit, -4.0f);  // negative: multiplied
  EXPECT_EQ(c[2].logit, 0.5f);   // not in history
  EXPECT_EQ(c[3].logit, 0.0f);   // zero: 0 * penalty
  EXPECT_EQ(c[4].logit, 1.0f);
  EXPECT_EQ(rp.name(), "repetition_penalty(2)");
}

TEST(RepetitionPenalty, LastNWindowAndReorderedCandidates) {
  candidates c(5);
  efs::sampling_context ctx = ctx_for();
  const std::vector<token_id> history = {0, 1, 2};
  ctx.history = history;
  efs::repetition_penalty rp(2.0f, 2);  // only tokens 1 and 2
  run(rp, {2, 2, 2, 2, 2}, c, ctx);
  EXPECT_EQ(c[0].logit, 2.0f);
  EXPECT_EQ(c[1].logit, 1.0f);
  EXPECT_EQ(c[2].logit, 1.0f);
  // After a reordering filter the tokens are found by a scan; filtered-out tokens are skipped.
  c.fill(std::vector<float>{5, 4, 3, 2, 1});
  efs::top_k(4).apply(c, ctx);  // drops token 4
  std::reverse(c.begin(), c.end());
  c.set_sorted(false);
  efs::repetition_penalty(2.0f).apply(c, ctx);
  std::map<token_id, float> got;
  for (const candidate& x : c) got[x.id] = x.logit;
  EXPECT_EQ(got, (std::map<token_id, float>{{0, 2.5f}, {1, 2.0f}, {2, 1.5f}, {3, 2.0f}}));
  EXPECT_FALSE(c.sorted());
}

TEST(RepetitionPenalty, InvalidValuesAndHistoryAreErrors) {
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::repetition_penalty(0.0f), ef::invalid_argument,
                                "repetition_penalty: 0, expected a finite value > 0");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::repetition_penalty(-1.2f), ef::invalid_argument, "repetition_penalty: -1.2");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::repetition_penalty(1.2f, -1), ef::invalid_argument, "repetition_penalty: last_n -1");
  candidates c(3);
  efs::sampling_context ctx = ctx_for();
  const std::vector<token_id> bad = {0, 7};
  ctx.history = bad;
  efs::repetition_penalty rp(1.5f);
  EIGENFORMER_EXPECT_THROW_WITH(run(rp, {1, 2, 3}, c, ctx), ef::invalid_argument,
                                "repetition_penalty: history: token id 7 at position 1, expected an id in [0, 3)");
  // The failed call left no marks behind: a valid history works afterwards.
  const std::vector<token_id> good = {2};
  ctx.history = good;
  run(rp, {1, 2, 3}, c, ctx);
  EXPECT_EQ(c[2].logit, 2.0f);
  EXPECT_EQ(c[0].logit, 1.0f);
}

TEST(NoRepeatNgram, BansTheTokenThatWouldRepeatAnNgram) {
  candidates c(6);
  efs::sampling_context ctx = ctx_for();
  const std::vector<float> flat(6, 0.0f);
  const std::vector<token_id> h3 = {1, 2, 3, 1, 2};  // prefix (1, 2) was followed by 3
  ctx.history = h3;
  efs::no_repeat_ngram n3(3);
  run(n3, flat, c, ctx);
  for (const candidate& x : c) EXPECT_EQ(x.logit, x.id == 3 ? minus_inf : 0.0f) << x.id;
  const std::vector<token_id> h2 = {5, 4, 5, 0, 5};  // (5, 4) and (5, 0): ban 4 and 0
  ctx.history = h2;
  efs::no_repeat_ngram n2(2);
  run(n2, flat, c, ctx);
  for (const candidate& x : c) EXPECT_EQ(x.logit, (x.id == 4 || x.id == 0) ? minus_inf : 0.0f) << x.id;
  efs::no_repeat_ngram n1(1);  // every token of the history
  run(n1, flat, c, ctx);
  for (const candidate& x : c) EXPECT_EQ(x.logit, (x.id == 4 || x.id == 0 || x.id == 5) ? minus_inf : 0.0f);
  efs::no_repeat_ngram n9(9);  // longer than the history: nothing
  run(n9, flat, c, ctx);
  for (const candidate& x : c) EXPECT_EQ(x.logit, 0.0f);
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::no_repeat_ngram(0), ef::invalid_argument, "no_repeat_ngram: 0, expected n >= 1");
}

TEST(LogitBias, AddsAndBans) {
  candidates c(4);
  auto ctx = ctx_for();
  efs::logit_bias b({{1, 2.0f}, {3, minus_inf}});
  run(b, {0, 0, 0, 0}, c, ctx);
  EXPECT_EQ(c[1].logit, 2.0f);
  EXPECT_EQ(c[3].logit, minus_inf);
  EXPECT_EQ(c[0].logit, 0.0f);
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::logit_bias({{1, 1.0f}, {1, 2.0f}}), ef::invalid_argument,
                                "logit_bias: token 1 listed twice");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::logit_bias({{2, std::nanf("")}}), ef::invalid_argument,
                                "logit_bias: token 2 bias nan, expected a finite value or -inf");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::logit_bias({{2, std::numeric_limits<float>::infinity()}}), ef::invalid_argument,
                                "logit_bias: token 2 bias inf");
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::logit_bias({{-1, 1.0f}}), ef::invalid_argument, "logit_bias: token -1");
  efs::logit_bias far({{9, 1.0f}});
  EIGENFORMER_EXPECT_THROW_WITH(run(far, {0, 0, 0, 0}, c, ctx), ef::invalid_argument,
                                "logit_bias: token id 9 at position 0, expected an id in [0, 4)");
}

// ================================================================================================
// chi-square: each sampler and chains draw from exactly the truncated, renormalised distribution
// ================================================================================================

namespace {
// Ten tokens, one with a -inf logit (never drawable), probabilities spread over two decades.
const std::vector<float> chi_logits = {0.3f, -1.2f, 1.7f, 0.9f, minus_inf, -0.4f, 2.2f, 0.0f, -2.5f, 1.1f};
}  // namespace

TEST(ChiSquare, DistributionAlone) {
  efs::distribution d;
  expect_draws_follow(d, chi_logits, ref_softmax(chi_logits));
}

TEST(ChiSquare, Temperature) {
  for (float t : {0.5f, 1.7f}) {
    efs::chain ch;
    ch.add(efs::temperature(t)).add(efs::distribution());
    expect_draws_follow(ch, chi_logits, ref_softmax(chi_logits, t));
  }
}

TEST(ChiSquare, TopK) {
  efs::chain ch;
  ch.add(efs::top_k(4)).add(efs::distribution());
  expect_draws_follow(ch, chi_logits, ref_top_k(ref_softmax(chi_logits), 4));
}

TEST(ChiSquare, TopP) {
  for (bool drop : {false, true}) {
    efs::chain ch;
    ch.add(efs::top_p(0.8f, drop ? efs::top_p::crossing::drop : efs::top_p::crossing::keep)).add(efs::distribution());
    expect_draws_follow(ch, chi_logits, ref_top_p(ref_softmax(chi_logits), 0.8, drop));
  }
}

TEST(ChiSquare, MinP) {
  efs::chain ch;
  ch.add(efs::min_p(0.15f)).add(efs::distribution());
  expect_draws_follow(ch, chi_logits, ref_min_p(ref_softmax(chi_logits), 0.15));
}

TEST(ChiSquare, Penalties) {
  // History {3, 9, 6, 6, 3}: repetition penalty 1.5 on tokens 3, 9 and 6 (CTRL: divide a positive
  // logit, multiply a negative one), no-repeat bigram bans 9 (the bigram (3, 9) would repeat), and
  // a bias of +1 on token 8.
  efs::chain ch;
  ch.add(efs::repetition_penalty(1.5f))
      .add(efs::no_repeat_ngram(2))
      .add(efs::logit_bias({{8, 1.0f}}))
      .add(efs::distribution());
  std::vector<float> l = chi_logits;
  for (std::size_t t : {3u, 6u}) l[t] = l[t] > 0 ? l[t] / 1.5f : l[t] * 1.5f;
  l[9] = minus_inf;
  l[8] += 1.0f;
  const dist expected = ref_softmax(l);
  candidates c(10);
  auto ctx = ctx_for(31);
  const std::vector<token_id> history = {3, 9, 6, 6, 3};
  ctx.history = history;
  std::vector<double> count(10, 0);
  const int n = 200'000;
  for (int i = 0; i < n; ++i) count[static_cast<std::size_t>(efs::sample(ch, chi_logits, c, ctx))] += 1;
  double chi = 0;
  int categories = 0;
  for (std::size_t t = 0; t < 10; ++t) {
    if (expected[t] == 0) {
      EXPECT_EQ(count[t], 0) << "token " << t;
      continue;
    }
    chi += (count[t] - expected[t] * n) * (count[t] - expected[t] * n) / (expected[t] * n);
    ++categories;
  }
  ASSERT_EQ(categories, 8);  // tokens 4 (-inf) and 9 (banned) never drawn
  EXPECT_LT(chi, chi2_crit_1e6[categories - 1]);
}

TEST(ChiSquare, UserSamplerInAChain) {
  efs::chain ch;
  ch.add(ban_token(6)).add(efs::top_k(5)).add(efs::distribution());
  dist p = ref_softmax(chi_logits);
  p[6] = 0;
  renormalize(p);
  expect_draws_follow(ch, chi_logits, ref_top_k(p, 5));
}

TEST(ChiSquare, CommandLineChain) {
  efs::sampling_options o;
  o.temperature = 0.8f;
  o.top_k = 6;
  o.top_p = 0.9f;
  o.min_p = 0.1f;
  efs::chain ch = efs::make_chain(o);
  const dist expected = ref_min_p(ref_top_p(ref_top_k(ref_softmax(chi_logits, 0.8), 6), 0.9), 0.1);
  expect_draws_follow(ch, chi_logits, expected);
  // The default command-line chain on a 32000-token row (a normal body, no peak, so that several
  // tokens survive every filter).
  efs::sampling_options d;
  d.temperature = 0.8f;
  d.top_k = 40;
  d.top_p = 0.95f;
  d.min_p = 0.05f;
  ch = efs::make_chain(d);
  const auto big = realistic_logits(32000, 4, 1.5, 0);
  const dist big_expected = ref_min_p(ref_top_p(ref_top_k(ref_softmax(big, 0.8), 40), 0.95), 0.05);
  expect_draws_follow(ch, big, big_expected, 20'000);
}

// ================================================================================================
// chain, sample(), presets
// ================================================================================================

TEST(Chain, OrderMattersTemperatureFirstVersusLast) {
  // Probabilities {0.5, 0.3, 0.2}. Ours (as Hugging Face): T = 0.5 first sharpens them to
  // {0.658, 0.237, 0.105}, so top-p 0.6 keeps token 0 alone. llama.cpp's default order (top-p on
  // the untempered {0.5, 0.3}, temperature last) keeps tokens 0 and 1 and draws them 0.735 / 0.265.
  const auto l = logits_of({0.5, 0.3, 0.2});
  candidates c(3);
  auto ctx = ctx_for();
  efs::chain ours;
  ours.add(efs::temperature(0.5f)).add(efs::top_p(0.6f));
  run(ours, l, c, ctx);
  expect_kept(c, {{0, 1.0}});
  efs::chain llama_order;
  llama_order.add(efs::top_p(0.6f)).add(efs::temperature(0.5f));
  run(llama_order, l, c, ctx);
  expect_kept(c, {{0, 0.25 / 0.34}, {1, 0.09 / 0.34}});
}

TEST(Chain, SampleWithoutAFinalStageIsAnError) {
  efs::chain ch;
  ch.add(efs::top_k(2));
  candidates c(3);
  auto ctx = ctx_for();
  EIGENFORMER_EXPECT_THROW_WITH(efs::sample(ch, std::vector<float>{1, 2, 3}, c, ctx), ef::invalid_argument,
                                "sampler chain(top_k(2)): no stage selected a token");
  EIGENFORMER_EXPECT_THROW_WITH(ch.add(std::unique_ptr<efs::sampler>()), ef::invalid_argument, "chain: null sampler");
}

TEST(Chain, StopsAtTheFirstSelectingStage) {
  efs::chain ch;
  ch.add(efs::greedy()).add(efs::distribution());
  candidates c(3);
  auto ctx = ctx_for();
  const auto before = ctx.rng;
  EXPECT_EQ(efs::sample(ch, std::vector<float>{1, 3, 2}, c, ctx), 1);
  EXPECT_EQ(ctx.rng, before);  // the draw never ran
}

TEST(Chain, NamesNestingAndAccept) {
  efs::chain inner;
  inner.add(efs::top_k(3));
  efs::chain outer;
  outer.add(efs::temperature(0.7f)).add_chain(inner).add(accept_counter()).add(efs::greedy());
  EXPECT_EQ(outer.name(), "chain(temperature(0.7), chain(top_k(3)), accept_counter, greedy)");
  EXPECT_EQ(outer.size(), 4u);
  candidates c(4);
  auto ctx = ctx_for();
  EXPECT_EQ(efs::sample(outer, logits_of({0.1, 0.2, 0.4, 0.3}), c, ctx), 2);
  EXPECT_EQ(dynamic_cast<const accept_counter&>(outer[2]).accepted, 1);
  outer.reset();
  EXPECT_EQ(dynamic_cast<const accept_counter&>(outer[2]).accepted, 0);
}

TEST(Chain, ClonesAreIndependent) {
  efs::chain a;
  a.add(accept_counter()).add(efs::repetition_penalty(1.3f)).add(efs::distribution());
  const std::unique_ptr<efs::sampler> b = a.clone();
  efs::chain copy = a;
  candidates c(4);
  auto ctx = ctx_for();
  for (int i = 0; i < 5; ++i) efs::sample(a, logits_of({0.1, 0.2, 0.3, 0.4}), c, ctx);
  EXPECT_EQ(dynamic_cast<const accept_counter&>(a[0]).accepted, 5);
  EXPECT_EQ(dynamic_cast<const accept_counter&>(copy[0]).accepted, 0);
  EXPECT_EQ(dynamic_cast<const accept_counter&>(dynamic_cast<const efs::chain&>(*b)[0]).accepted, 0);
  EXPECT_EQ(b->name(), a.name());
}

TEST(Presets, CommandLineOrderAndGreedyDefault) {
  efs::sampling_options none;
  EXPECT_TRUE(none.greedy());
  EXPECT_EQ(efs::make_chain(none).name(), "chain(greedy)");
  efs::sampling_options o;
  o.temperature = 0.8f;
  o.top_k = 40;
  o.top_p = 0.95f;
  o.min_p = 0.05f;
  EXPECT_EQ(efs::make_chain(o).name(), "chain(temperature(0.8), top_k(40), top_p(0.95), min_p(0.05), distribution)");
  o.temperature = 0.0f;
  EXPECT_EQ(efs::make_chain(o).name(), "chain(greedy)");
  efs::sampling_options neutral;
  neutral.temperature = 1.0f;
  neutral.top_k = 0;
  neutral.top_p = 1.0f;
  neutral.min_p = 0.0f;
  EXPECT_EQ(efs::make_chain(neutral).name(), "chain(distribution)");
  efs::sampling_options only_k;
  only_k.top_k = 5;
  EXPECT_EQ(efs::make_chain(only_k).name(), "chain(top_k(5), distribution)");
}

TEST(Presets, InvalidOptionsAreNamedEvenUnderGreedy) {
  efs::sampling_options o;
  o.temperature = 0.0f;
  o.top_p = 1.5f;
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::make_chain(o), ef::invalid_argument, "top_p: 1.5, expected a value in (0, 1]");
  efs::sampling_options t;
  t.temperature = -0.5f;
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::make_chain(t), ef::invalid_argument, "temperature: -0.5");
  efs::sampling_options k;
  k.top_k = -3;
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::make_chain(k), ef::invalid_argument, "top_k: -3");
  efs::sampling_options m;
  m.min_p = 2.0f;
  EIGENFORMER_EXPECT_THROW_WITH((void)efs::make_chain(m), ef::invalid_argument, "min_p: 2");
}

// One seed: a chain has no randomness, so its options carry no seed; generation_options::seed (or
// the sampling_context) is the only one. Catches a seed member that nothing reads, which callers
// (the command-line tool did) would set in vain.
template <class Options>
concept has_seed = requires(Options o) { o.seed; };
static_assert(!has_seed<efs::sampling_options>, "the seed belongs to the generation, not to sampling_options");

/// The subject() of the invalid_argument `f` throws, "(no error)" if it throws none.
template <class F>
std::string subject_of(F&& f) {
  try {
    f();
  } catch (const ef::invalid_argument& e) {
    return e.subject();
  }
  return "(no error)";
}

// The option at fault is a field of the error, which the command-line tool maps to its own option
// name (--top-p). Catches an option error built from its message alone ("top_p: 1.5, ...", whose
// subject() is empty), one whose subject carries more than the name ("top_p: 1.5"), and a library
// error with the wrong name (the tool would then report the wrong option).
TEST(Presets, OptionErrorsCarryTheOptionAsSubject) {
  const auto chain_error = [](auto set) {
    return subject_of([&] {
      efs::sampling_options o;
      set(o);
      (void)efs::make_chain(o);
    });
  };
  EXPECT_EQ(chain_error([](efs::sampling_options& o) { o.temperature = -0.5f; }), "temperature");
  EXPECT_EQ(chain_error([](efs::sampling_options& o) { o.top_k = -3; }), "top_k");
  EXPECT_EQ(chain_error([](efs::sampling_options& o) { o.top_p = 1.5f; }), "top_p");
  EXPECT_EQ(chain_error([](efs::sampling_options& o) { o.min_p = 2.0f; }), "min_p");
  EXPECT_EQ(chain_error([](efs::sampling_options& o) {  // still named under greedy
              o.temperature = 0.0f;
              o.top_p = 0.0f;
            }),
            "top_p");
  EXPECT_EQ(chain_error([](efs::sampling_options& o) { o.top_p = 0.5f; }), "(no error)");

  EXPECT_EQ(subject_of([] { (void)efs::top_p(0.5f, efs::top_p::crossing::keep, 0); }), "top_p");
  EXPECT_EQ(subject_of([] { (void)efs::min_p(0.1f, 0); }), "min_p");
  EXPECT_EQ(subject_of([] { (void)efs::repetition_penalty(0.0f); }), "repetition_penalty");
  EXPECT_EQ(subject_of([] { (void)efs::no_repeat_ngram(0); }), "no_repeat_ngram");
  EXPECT_EQ(subject_of([] { (void)efs::logit_bias({{1, 1.0f}, {1, 2.0f}}); }), "logit_bias");
  EXPECT_EQ(subject_of([] {
              candidates c(2);
              c.fill(std::vector<float>{0, std::nanf("")});
            }),
            "logits");
}

// error(subject, detail): what() is "subject: detail" and subject() the first part, kept through
// copies and subclasses; the one-argument form has no subject. Catches a what() without the
// separator or without the subject, and a subject lost when the exception is copied.
TEST(Presets, ErrorSubjectIsAField) {
  const ef::invalid_argument e("top_p", "1.5, expected a value in (0, 1]");
  EXPECT_STREQ(e.what(), "top_p: 1.5, expected a value in (0, 1]");
  EXPECT_EQ(e.subject(), "top_p");
  EXPECT_EQ(e.detail(), "1.5, expected a value in (0, 1]");
  const ef::invalid_argument copy = e;
  EXPECT_EQ(copy.subject(), "top_p");
  EXPECT_STREQ(copy.what(), e.what());
  try {
    throw ef::format_error("src.txt:3", "'x1' is not a token id");
  } catch (const ef::error& base) {
    EXPECT_EQ(base.subject(), "src.txt:3");
    EXPECT_STREQ(base.what(), "src.txt:3: 'x1' is not a token id");
  }
  const ef::error plain("top_p: 1.5");
  EXPECT_EQ(plain.subject(), "");
  EXPECT_STREQ(plain.what(), "top_p: 1.5");
  EXPECT_EQ(plain.detail(), "top_p: 1.5");
}

// ================================================================================================
// reproducibility
// ================================================================================================

namespace {
std::vector<token_id> generate(efs::sampler& s, const std::vector<float>& logits, efs::sampling_context& ctx, int n) {
  candidates c(static_cast<index_t>(logits.size()));
  std::vector<token_id> out;
  for (int i = 0; i < n; ++i) out.push_back(efs::sample(s, logits, c, ctx));
  return out;
}
}  // namespace

TEST(Reproducibility, SameSeedSameTokens) {
  const auto l = realistic_logits(5000, 10, 2.0, 0);  // no peaks: many tokens in play
  auto ch = default_chain();
  auto a = efs::sampling_context::for_sequence(2024, 0), b = efs::sampling_context::for_sequence(2024, 0);
  EXPECT_EQ(generate(ch, l, a, 300), generate(ch, l, b, 300));
}

TEST(Reproducibility, DifferentStreamsDiffer) {
  const auto l = realistic_logits(5000, 10, 2.0, 0);
  auto ch = default_chain();
  auto a = efs::sampling_context::for_sequence(2024, 0), b = efs::sampling_context::for_sequence(2024, 1),
       c = efs::sampling_context::for_sequence(2025, 0);
  const auto ta = generate(ch, l, a, 100), tb = generate(ch, l, b, 100), tc = generate(ch, l, c, 100);
  EXPECT_NE(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Reproducibility, BatchCompositionDoesNotChangeASequence) {
  // Sequence 2 decoded alone, then inside batches of 4 and 8 with steps interleaved: same tokens.
  const auto l = realistic_logits(2000, 12, 2.0, 0);
  const std::uint64_t seed = 77;
  auto alone_ctx = efs::sampling_context::for_sequence(seed, 2);
  auto alone_chain = default_chain();
  const auto alone = generate(alone_chain, l, alone_ctx, 50);
  for (int batch : {4, 8}) {
    std::vector<efs::sampling_context> ctx;
    std::vector<efs::chain> chains;
    for (int s = 0; s < batch; ++s) {
      ctx.push_back(efs::sampling_context::for_sequence(seed, static_cast<std::uint64_t>(s)));
      chains.push_back(default_chain());
    }
    candidates c(2000);
    std::vector<token_id> seq2;
    for (int step = 0; step < 50; ++step)
      for (int s = 0; s < batch; ++s) {
        const token_id t = efs::sample(chains[static_cast<std::size_t>(s)], l, c, ctx[static_cast<std::size_t>(s)]);
        if (s == 2) seq2.push_back(t);
      }
    EXPECT_EQ(seq2, alone) << "batch " << batch;
  }
}

TEST(Reproducibility, PinnedTokens) {
  // The first tokens of the command-line chain for seed 1234, sequence 0, on a fixed row built
  // from uniform numbers only (bit-exact everywhere). These pin the generator, the uniform
  // conversion and the draw: a change here changes every user's sampled text.
  std::vector<float> l(1000);
  auto g = ef::detail::rng::stream(21, 0);
  for (float& x : l) x = 6.0f * g.uniform01() - 3.0f;
  auto ch = default_chain();
  auto ctx = efs::sampling_context::for_sequence(1234, 0);
  const std::vector<token_id> pinned = {836, 872, 587, 750, 554, 519, 872, 451,
                                        233, 261, 372, 210, 554, 466, 260, 199};
  EXPECT_EQ(generate(ch, l, ctx, 16), pinned);
}

// ================================================================================================
// no heap allocation per step
// ================================================================================================

TEST(NoAllocationPerStep, EveryBuiltInAtSteadyState) {
  const index_t v = 5000;
  const auto l = realistic_logits(v, 13, 1.0, 0);
  candidates c(v);
  std::vector<token_id> history;
  history.reserve(200);
  for (token_id t = 0; t < 100; ++t) history.push_back((t * 37) % 50);
  auto ctx = ctx_for(5);
  ctx.history = history;

  efs::chain full;
  full.add(efs::repetition_penalty(1.3f))
      .add(efs::no_repeat_ngram(2))
      .add(efs::logit_bias({{1, 0.5f}, {2, minus_inf}}))
      .add(efs::temperature(0.8f))
      .add(efs::top_k(40))
      .add(efs::top_p(0.95f))
      .add(efs::min_p(0.05f))
      .add(efs::distribution());
  efs::chain unsorted;  // the unsorted paths of top-p and min-p on the whole vocabulary
  unsorted.add(efs::top_p(0.9f)).add(efs::min_p(0.01f)).add(efs::distribution());
  efs::chain greedy_chain;
  greedy_chain.add(efs::temperature(0.0f)).add(efs::greedy());
  efs::chain* chains[] = {&full, &unsorted, &greedy_chain};

  for (efs::chain* ch : chains) efs::sample(*ch, l, c, ctx);  // first step: scratch tables sized
  const long before = ef::testing::allocations();
  for (int step = 0; step < 50; ++step)
    for (efs::chain* ch : chains) efs::sample(*ch, l, c, ctx);
  EXPECT_EQ(ef::testing::allocations() - before, 0);

  // The counter works (the pointer escapes through a volatile, so the pair cannot be elided).
  static int* volatile probe = nullptr;
  const long before_probe = ef::testing::allocations();
  probe = new int(3);
  EXPECT_EQ(ef::testing::allocations() - before_probe, 1);
  delete probe;
}
