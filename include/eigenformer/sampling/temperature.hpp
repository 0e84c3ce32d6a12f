// eigenformer/sampling/temperature.hpp: divide the kept logits by T.
//
// T > 1 flattens the distribution, T < 1 sharpens it, T = 1 changes nothing. T = 0 means greedy:
// only the highest logit is kept (ties to the lower id), so a later draw returns it.
// Logits are divided as Hugging Face's TemperatureLogitsWarper does (logit / T). When T is so
// small that the largest logit / T would overflow to +inf, every logit is first shifted so the
// largest is 0 (the softmax does not change under a shift), which keeps T -> 0 well defined.
// Order is preserved, so sorted() stays; normalized() is cleared.
// Throws invalid_argument at construction unless T is finite and >= 0.
#pragma once

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "../error.hpp"
#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

class temperature final : public cloneable_sampler<temperature> {
 public:
  explicit temperature(float t) : t_(t) {
    if (!(t >= 0) || std::isinf(t)) {
      throw invalid_argument("temperature", detail::number_string(t) + ", expected a finite value >= 0 (0 = greedy)");
    }
  }

  float value() const noexcept { return t_; }

  void apply(candidates& c, sampling_context&) override {
    if (t_ == 1.0f || c.empty()) return;
    if (t_ == 0.0f) {
      const index_t best = c.argmax();
      std::swap(c[0], c[best]);
      c.set_normalized(false);
      c.truncate(1);
      c[0].p = 1.0f;
      c.set_normalized(true);
      c.set_sorted(true);
      return;
    }
    const float m = c.sorted() ? c[0].logit : detail::max_logit(c.begin(), c.end());
    if (m == -std::numeric_limits<float>::infinity()) return;  // nothing drawable: a later stage reports it
    const float shift = std::isinf(m / t_) ? m : 0.0f;
    const float t = t_;
    for (candidate& x : c) x.logit = (x.logit - shift) / t;
    c.set_normalized(false);
  }

  std::string name() const override { return "temperature(" + detail::number_string(t_) + ")"; }

 private:
  float t_;
};

}  // namespace eigenformer::sampling
