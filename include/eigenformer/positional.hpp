// eigenformer/positional.hpp: the sinusoidal position table of "Attention Is All You Need"
// (section 3.5) and its Marian and tensor2tensor variants (docs/model-format.md,
// Semantics). Computed once, in double, when a model is loaded; learned tables come from the file.
#pragma once

#include <cmath>

#include "config.hpp"
#include "tensor.hpp"

namespace eigenformer {

/// [n_positions, d_model]: row `pos` encodes position p = pos + offset.
template <class Scalar>
tensor<Scalar> sinusoidal_table(index_t n_positions, index_t d_model, sinusoidal_variant variant, index_t offset) {
  tensor<Scalar> table({n_positions, d_model});  // zero-filled: an odd d_model leaves the last column 0
  const index_t h = d_model / 2;
  const double log_base = std::log(10000.0);
  for (index_t pos = 0; pos < n_positions; ++pos) {
    const double p = static_cast<double>(pos + offset);
    Scalar* row = table.data() + pos * d_model;
    for (index_t i = 0; i < (variant == sinusoidal_variant::paper ? (d_model + 1) / 2 : h); ++i) {
      double angle = 0;
      switch (variant) {
        case sinusoidal_variant::paper:  // interleaved: sin at 2i, cos at 2i+1
        case sinusoidal_variant::marian:  // halves: sin at i, cos at h+i
          angle = p / std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(d_model));
          break;
        case sinusoidal_variant::tensor2tensor:  // halves, timescales exp(-i ln(10000) / (h - 1))
          angle = p * std::exp(-static_cast<double>(i) * log_base / static_cast<double>(h - 1));
          break;
      }
      if (variant == sinusoidal_variant::paper) {
        row[2 * i] = static_cast<Scalar>(std::sin(angle));
        if (2 * i + 1 < d_model) row[2 * i + 1] = static_cast<Scalar>(std::cos(angle));
      } else {
        row[i] = static_cast<Scalar>(std::sin(angle));
        row[h + i] = static_cast<Scalar>(std::cos(angle));
      }
    }
  }
  return table;
}

}  // namespace eigenformer
