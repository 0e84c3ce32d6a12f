// eigenformer/sampling/min_p.hpp: keep the tokens at least min_p times as probable as the best.
//
// Keeps tokens with p >= min_p * p_max (Nguyen et al. 2024, "min-p sampling"), and at least
// min_keep (default 1) tokens, the most probable ones. The test runs on logits, where it reads
// logit >= max_logit + ln(min_p), so no softmax is needed. min_p = 0 disables the filter; min_p = 1
// keeps only the tokens tied at the maximum.
// Cost: two passes over the kept candidates (max, then an order-preserving compaction); when
// sorted(), a walk along the kept prefix only. sorted() and normalized() survive
// (p is rescaled).
// Throws invalid_argument at construction unless 0 <= min_p <= 1 and min_keep >= 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "../error.hpp"
#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

class min_p final : public cloneable_sampler<min_p> {
 public:
  explicit min_p(float p, index_t min_keep = 1) : p_(p), min_keep_(min_keep) {
    if (!(p >= 0.0f && p <= 1.0f)) {
      throw invalid_argument("min_p", detail::number_string(p) + ", expected a value in [0, 1]");
    }
    if (min_keep < 1) {
      throw invalid_argument("min_p", "min_keep " + std::to_string(min_keep) + ", expected a value >= 1");
    }
  }

  float value() const noexcept { return p_; }
  index_t min_keep() const noexcept { return min_keep_; }

  void apply(candidates& c, sampling_context&) override {
    if (p_ == 0.0f || c.size() <= min_keep_) return;
    const float m = c.sorted() ? c[0].logit : detail::max_logit(c.begin(), c.end());
    if (m == -std::numeric_limits<float>::infinity()) return;  // nothing drawable: a later stage reports it
    const float threshold = m + std::log(p_);  // the maximum itself always passes (ln(min_p) <= 0)
    const auto keep = [threshold](const candidate& x) { return x.logit >= threshold; };
    if (c.sorted()) {
      index_t kept = 0;
      while (kept < c.size() && keep(c[kept])) ++kept;
      c.truncate(std::max(kept, min_keep_));
      return;
    }
    if (min_keep_ > 1 && std::count_if(c.begin(), c.end(), keep) < min_keep_) {
      // Rare (min_keep > 1 only): keep the min_keep best outright.
      std::partial_sort(c.begin(), c.begin() + min_keep_, c.end(), ranks_before{});
      c.set_sorted(true);
      c.truncate(min_keep_);
      return;
    }
    c.keep_if(keep);
  }

  std::string name() const override { return "min_p(" + detail::number_string(p_) + ")"; }

 private:
  float p_;
  index_t min_keep_;
};

}  // namespace eigenformer::sampling
