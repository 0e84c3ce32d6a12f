// eigenformer/sampling/top_p.hpp: nucleus sampling's filter (Holtzman et al. 2019).
//
// Keeps the smallest set of most probable tokens whose probability adds up to at least p: the
// token whose probability crosses p is kept (crossing::keep, as Hugging Face and llama.cpp). With
// crossing::drop it stops before the mass would exceed p instead (the largest such set; a set
// reaching exactly p keeps its last token). Either way at least min_keep (default 1) tokens stay,
// the most probable ones. Ties between equal logits go to the lower token id. Masses are compared
// with a tolerance of 1e-6, the rounding of float probabilities, so {0.4, 0.3} reaches p = 0.7 as
// it does on paper. p = 1 keeps everything.
//
// Cost, without sorting the vocabulary:
//  - sorted() candidates (after top-k): a walk along the prefix;
//  - otherwise, after the softmax (skipped when already normalized()), O(n):
//    1. the pre-sort cutoff of llama2.c's sample_topp: a token with probability below
//       (1 - p) / (n - 1) cannot be in the nucleus (the tokens from the crossing one on would hold
//       less than 1 - p). In logits that is a distance d = max_logit - logit beyond
//       r = ln(p_max (n - 1) / (1 - p)); r is never below 0, so the most probable token always
//       survives (llama2.c reads index -1 on a flat distribution with p < 1/n);
//    2. one pass puts each token's probability into one of 512 buckets of equal width over
//       [0, r) of d (farther tokens are out); walking the buckets from the nearest finds the one
//       holding the crossing token: nearer buckets are kept whole, farther ones dropped;
//    3. two partition passes bring the kept buckets, then the crossing bucket, to the front, and
//       a weighted quickselect ranks only the crossing bucket (std::nth_element at the middle; the
//       mass of the better half says which half holds the crossing token; ranges halve).
//    A peaked distribution leaves a handful of tokens in the crossing bucket; a flat one about
//    n / 512 of them.
//  The kept set is left normalized (rescaled to 1); sorted() only if it was.
// Throws invalid_argument at construction unless 0 < p <= 1 and min_keep >= 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "../error.hpp"
#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

class top_p final : public cloneable_sampler<top_p> {
 public:
  /// What happens to the token whose probability crosses p.
  enum class crossing { keep, drop };

  explicit top_p(float p, crossing mode = crossing::keep, index_t min_keep = 1) : p_(p), mode_(mode), min_keep_(min_keep) {
    if (!(p > 0.0f && p <= 1.0f)) {
      throw invalid_argument("top_p", detail::number_string(p) + ", expected a value in (0, 1]");
    }
    if (min_keep < 1) {
      throw invalid_argument("top_p", "min_keep " + std::to_string(min_keep) + ", expected a value >= 1");
    }
  }

  float value() const noexcept { return p_; }
  crossing mode() const noexcept { return mode_; }
  index_t min_keep() const noexcept { return min_keep_; }

  void apply(candidates& c, sampling_context&) override {
    if (p_ >= 1.0f || c.size() <= min_keep_) return;
    c.ensure_normalized();
    const index_t n = c.size();
    const double total = detail::sum_p(c.begin(), c.end());
    target_ = static_cast<double>(p_) * total;

    index_t crossing_at = 0;  // index of the crossing token, at its rank position
    double mass_through = 0;  // mass of [0, crossing_at]
    if (c.sorted()) {
      walk(c, 0, n, 0.0, crossing_at, mass_through);
    } else {
      // 1. Buckets by distance from the best logit, d = max - logit, over [0, r): r is where the
      //    pre-sort cutoff puts the last possible nucleus token (p = p_max e^-d falls below
      //    (1 - p) / (n - 1)), plus a margin for rounding; farther tokens share bucket `buckets`.
      const float m = detail::max_logit(c.begin(), c.end());
      const float p_max = detail::max_of<&candidate::p>(c.begin(), c.end());
      const double r_exact = std::log(static_cast<double>(p_max) * static_cast<double>(n - 1) / (1.0 - p_));
      const float r = static_cast<float>(std::max(r_exact, 0.0)) + 1e-3f;
      const float scale = static_cast<float>(buckets) / r;
      const auto bucket = [m, r, scale](const candidate& x) {
        return std::min(static_cast<index_t>(std::min(m - x.logit, r) * scale), buckets);
      };
      // Far tokens go to 8 rotating spare slots, so that neither a branch nor one memory
      // location's chain of additions is paid per token.
      double mass[buckets + 8] = {};
      for (index_t i = 0; i < n; ++i) {
        const index_t b = bucket(c[i]);
        mass[b + (b / buckets) * (i & 7)] += c[i].p;  // arithmetic, not a (mispredicted) branch
      }
      // 2. The bucket holding the crossing token: everything in nearer buckets is kept, and only
      //    that bucket's tokens need ranking.
      index_t crossing_bucket = buckets - 1;
      double before = 0;  // mass of the nearer buckets
      for (index_t b = 0; b < buckets; ++b) {
        if (reaches(before + mass[b])) {
          crossing_bucket = b;
          break;
        }
        before += mass[b];
      }
      if (crossing_bucket == buckets - 1 && !reaches(before + mass[buckets - 1])) {
        before -= mass[buckets - 1];  // rounding left every bucket short: search the last one
      }
      const index_t in_or_crossing = static_cast<index_t>(
          std::partition(c.begin(), c.end(), [&](const candidate& x) { return bucket(x) <= crossing_bucket; }) -
          c.begin());
      const index_t in = static_cast<index_t>(
          std::partition(c.begin(), c.begin() + in_or_crossing,
                         [&](const candidate& x) { return bucket(x) < crossing_bucket; }) -
          c.begin());
      // 3. Weighted quickselect in that bucket. Invariant: [0, lo) are the lo best, of mass `base`
      //    short of the target; the crossing token is in [lo, hi).
      index_t lo = in, hi = in_or_crossing;
      double base = before;
      for (;;) {
        if (hi - lo <= 16) {
          std::sort(c.begin() + lo, c.begin() + hi, ranks_before{});
          walk(c, lo, hi, base, crossing_at, mass_through);
          break;
        }
        const index_t mid = lo + (hi - lo) / 2;
        std::nth_element(c.begin() + lo, c.begin() + mid, c.begin() + hi, ranks_before{});
        double s = base + detail::sum_p(c.begin() + lo, c.begin() + mid);
        if (reaches(s)) {
          hi = mid;
          continue;
        }
        s += c[mid].p;
        if (reaches(s)) {
          crossing_at = mid;
          mass_through = s;
          break;
        }
        base = s;
        lo = mid + 1;
      }
    }

    index_t cut = crossing_at + 1;
    if (mode_ == crossing::drop && mass_through > target_ + tolerance) cut = crossing_at;
    if (cut < min_keep_) {
      if (!c.sorted()) {
        std::nth_element(c.begin() + cut, c.begin() + (min_keep_ - 1), c.end(), ranks_before{});
      }
      cut = min_keep_;
    }
    c.truncate(cut);
  }

  std::string name() const override {
    return "top_p(" + detail::number_string(p_) + (mode_ == crossing::drop ? ", drop crossing" : "") + ")";
  }

 private:
  static constexpr double tolerance = 1e-6;
  static constexpr index_t buckets = 512;  // a power of two: b / buckets is a shift

  bool reaches(double mass) const noexcept { return mass >= target_ - tolerance; }

  /// Walks ranked candidates [from, to) from `base`: the first index whose cumulative mass reaches
  /// the target, or to - 1 if rounding left the whole range short.
  void walk(const candidates& c, index_t from, index_t to, double base, index_t& at, double& through) const {
    double cum = base;
    for (index_t i = from; i < to; ++i) {
      cum += c[i].p;
      if (reaches(cum)) {
        at = i;
        through = cum;
        return;
      }
    }
    at = to - 1;
    through = cum;
  }

  float p_;
  crossing mode_;
  index_t min_keep_;
  double target_ = 0;  // p times the kept mass, for the current apply()
};

}  // namespace eigenformer::sampling
