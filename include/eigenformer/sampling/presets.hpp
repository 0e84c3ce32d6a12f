// eigenformer/sampling/presets.hpp: the command-line tool's chain (docs/cli.md).
//
// make_chain(options) builds, from the options that are set, in this order:
//   temperature -> top_k -> top_p -> min_p -> distribution
// With no option set, or temperature 0, the chain is greedy alone (every filter keeps the most
// probable token, so greedy is what any of them would draw at T = 0). Options at their neutral
// value (top_k 0, top_p 1, min_p 0, temperature 1) add no stage.
//
// The order matters and is not llama.cpp's: llama.cpp's common default runs top-k, top-p and
// min-p first and temperature last, so its filters see the untempered probabilities; here, as in
// Hugging Face transformers, temperature comes first and top-p / min-p act on the tempered
// distribution (the sampling section of the documentation shows an example).
//
// A chain has no randomness of its own, so the options hold no seed: the seed belongs to the
// generation (generation_options::seed), and each sequence draws from
// sampling_context::for_sequence(seed, index).
#pragma once

#include <optional>

#include "chain.hpp"
#include "distribution.hpp"
#include "greedy.hpp"
#include "min_p.hpp"
#include "temperature.hpp"
#include "top_k.hpp"
#include "top_p.hpp"

namespace eigenformer::sampling {

/// --temperature, --top-k, --top-p, --min-p.
struct sampling_options {
  std::optional<float> temperature = {};  // default initialisers: designated initialisers may omit any
  std::optional<index_t> top_k = {};
  std::optional<float> top_p = {};
  std::optional<float> min_p = {};

  /// True when no option asks for sampling: no option given, or temperature 0.
  bool greedy() const noexcept {
    if (temperature && *temperature == 0.0f) return true;
    return !temperature && !top_k && !top_p && !min_p;
  }
};

/// The chain for `o` (see the file comment). Validates every option that is set, even under
/// temperature 0, and throws invalid_argument whose subject() is the option ("top_p") and whose
/// what() reads "top_p: 1.5, expected a value in (0, 1]".
inline chain make_chain(const sampling_options& o) {
  // Construct every stage first: an invalid option is reported whichever path is taken.
  std::optional<temperature> t;
  std::optional<top_k> k;
  std::optional<top_p> p;
  std::optional<min_p> m;
  if (o.temperature) t.emplace(*o.temperature);
  if (o.top_k) k.emplace(*o.top_k);
  if (o.top_p) p.emplace(*o.top_p);
  if (o.min_p) m.emplace(*o.min_p);

  chain c;
  if (o.greedy()) {
    c.add(greedy());
    return c;
  }
  if (t && t->value() != 1.0f) c.add(*t);
  if (k && k->value() != 0) c.add(*k);
  if (p && p->value() != 1.0f) c.add(*p);
  if (m && m->value() != 0.0f) c.add(*m);
  c.add(distribution());
  return c;
}

}  // namespace eigenformer::sampling
