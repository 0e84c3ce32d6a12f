// eigenformer/sampling/distribution.hpp: the final random draw.
//
// Draws one kept token with probability p / (sum of kept p) by inverse CDF: u is
// ctx.rng.uniform01_double() (53 bits, see detail/rng.hpp), and the token is the first, in the
// candidates' current order, whose cumulative mass (summed in double, see draw_index) exceeds
// u * total. A token
// with p = 0 (a -inf logit) is never drawn. Exactly one u per call, so a sequence's stream
// position is its number of draws. Everything here is specified arithmetic, no <random>
// distribution, so the same probabilities and seed give the same token on every platform.
// (The probabilities come from exp(), whose last bit may vary between SIMD instruction sets;
// that can move a draw only when u lands within rounding distance of a cumulative boundary.)
// A final stage: it selects the token. Softmaxes first unless normalized().
#pragma once

#include <algorithm>
#include <memory>
#include <string>

#include "../error.hpp"

#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

class distribution final : public cloneable_sampler<distribution> {
 public:
  void apply(candidates& c, sampling_context& ctx) override {
    c.ensure_normalized();
    const double u = ctx.rng.uniform01_double();
    c.select(c[draw_index(c, u)].id);
  }

  /// The index the draw picks for a given u in [0, 1): exposed for tests and for callers that
  /// bring their own uniform numbers. Needs p >= 0 with a positive sum (normalized() gives that).
  static index_t draw_index(const candidates& c, double u) {
    // Masses are accumulated block by block (detail::sum_p over 16 candidates, a fixed order),
    // and only the block holding the target is walked one candidate at a time: no long serial
    // chain of additions over the whole vocabulary.
    constexpr index_t block = 16;
    const candidate* x = c.begin();
    const index_t n = c.size();
    double total = 0;
    for (index_t b = 0; b < n; b += block) total += detail::sum_p(x + b, x + std::min(n, b + block));
    if (!(total > 0)) {
      throw invalid_argument("distribution: the kept probabilities sum to " + std::to_string(total) +
                             ", expected a positive sum");
    }
    const double target = u * total;
    double cum = 0;
    for (index_t b = 0; b < n; b += block) {
      const index_t e = std::min(n, b + block);
      const double mass = detail::sum_p(x + b, x + e);
      if (cum + mass > target) {
        double inner = cum;
        for (index_t i = b; i < e; ++i) {
          if (x[i].p > 0) {
            inner += x[i].p;
            if (inner > target) return i;
          }
        }
      }
      cum += mass;
    }
    index_t last = n - 1;  // u * total rounded up to the total: the last drawable token
    while (!(x[last].p > 0)) --last;
    return last;
  }

  std::string name() const override { return "distribution"; }
};

}  // namespace eigenformer::sampling
