// Test and benchmark helper: sampling inputs shared by test_sampling and bench_sampling (no
// GoogleTest dependency): seeded "realistic" logits rows and the command-line default chain.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <eigenformer/detail/rng.hpp>
#include <eigenformer/sampling/sampling.hpp>

namespace eigenformer::testing {

/// Deterministic logits [v]: a normal(0, sigma) body from our own generator plus `peaks` peaked
/// tokens (logits 12, 13, ...). With the defaults the top token has p ~ 0.6, as a trained model's
/// next-token distribution often does; peaks = 0 leaves a flat-ish body with many tokens in play.
inline std::vector<float> realistic_logits(index_t v, std::uint64_t seed, double sigma = 2.0, int peaks = 5) {
  auto g = detail::rng::stream(seed, 0);
  std::vector<float> l(static_cast<std::size_t>(v));
  for (float& x : l) x = static_cast<float>(sigma * g.normal());
  for (int i = 0; i < peaks; ++i) l[g.next_u32() % static_cast<std::uint32_t>(v)] = 12.0f + static_cast<float>(i);
  return l;
}

/// The command-line tool's default sampling chain: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, draw.
inline sampling::chain default_chain() {
  sampling::sampling_options o;
  o.temperature = 0.8f;
  o.top_k = 40;
  o.top_p = 0.95f;
  o.min_p = 0.05f;
  return sampling::make_chain(o);
}

}  // namespace eigenformer::testing
