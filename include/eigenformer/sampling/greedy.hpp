// eigenformer/sampling/greedy.hpp: select the most probable token.
//
// The highest kept logit, ties to the lower token id. No softmax and no sort: one pass over the
// kept candidates (none at all when they are sorted()). A final stage: it selects the token.
// Throws invalid_argument when every kept logit is -inf.
#pragma once

#include <memory>
#include <string>

#include "candidates.hpp"
#include "sampler.hpp"

namespace eigenformer::sampling {

class greedy final : public cloneable_sampler<greedy> {
 public:
  void apply(candidates& c, sampling_context&) override { c.select(c[c.argmax()].id); }
  std::string name() const override { return "greedy"; }
};

}  // namespace eigenformer::sampling
