// eigenformer/positional.hpp: the sinusoidal positions of "Attention Is All You Need"
// (section 3.5) and their Marian and tensor2tensor variants (docs/model-format.md, Semantics).
//
// A model computes the row of a position where a token is embedded (sinusoidal_positions::row),
// from per-model constants computed once, in double, when it is loaded: no table of max_positions
// rows is built, so a file's max_positions costs nothing until a sequence reaches that position.
// sinusoidal_table() builds the same rows as a table (tests, tools); both share one formula, so
// a row is bit-identical to the table's. Learned tables are weights: they come from the file.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "config.hpp"
#include "tensor.hpp"

namespace eigenformer {

/// The sinusoidal rows of one model: row(pos) encodes position p = pos + offset, [d_model] values.
template <class Scalar>
class sinusoidal_positions {
 public:
  sinusoidal_positions() = default;
  sinusoidal_positions(index_t d_model, sinusoidal_variant variant, index_t offset)
      : d_(d_model), h_(d_model / 2), variant_(variant), offset_(offset) {
    const index_t n = variant == sinusoidal_variant::paper ? (d_model + 1) / 2 : h_;
    const double log_base = std::log(10000.0);
    freq_.resize(static_cast<std::size_t>(std::max<index_t>(n, 0)));
    for (index_t i = 0; i < n; ++i) {
      switch (variant) {
        case sinusoidal_variant::paper:   // angle = p / 10000^(2i / d)
        case sinusoidal_variant::marian:
          freq_[static_cast<std::size_t>(i)] = std::pow(10000.0, static_cast<double>(2 * i) / static_cast<double>(d_model));
          break;
        case sinusoidal_variant::tensor2tensor:  // angle = p * exp(-i ln(10000) / (h - 1))
          freq_[static_cast<std::size_t>(i)] = std::exp(-static_cast<double>(i) * log_base / static_cast<double>(h_ - 1));
          break;
      }
    }
  }

  index_t d_model() const noexcept { return d_; }

  /// Writes row `pos` (position pos + offset) to out[0 .. d_model). Allocates nothing.
  void row(index_t pos, Scalar* out) const {
    const double p = static_cast<double>(pos + offset_);
    const index_t n = static_cast<index_t>(freq_.size());
    if (variant_ == sinusoidal_variant::paper) {  // interleaved: sin at 2i, cos at 2i+1
      for (index_t i = 0; i < n; ++i) {
        const double angle = p / freq_[static_cast<std::size_t>(i)];
        out[2 * i] = static_cast<Scalar>(std::sin(angle));
        if (2 * i + 1 < d_) out[2 * i + 1] = static_cast<Scalar>(std::cos(angle));
      }
      return;
    }
    for (index_t i = 0; i < n; ++i) {  // halves: sin at i, cos at h+i
      const double f = freq_[static_cast<std::size_t>(i)];
      const double angle = variant_ == sinusoidal_variant::tensor2tensor ? p * f : p / f;
      out[i] = static_cast<Scalar>(std::sin(angle));
      out[h_ + i] = static_cast<Scalar>(std::cos(angle));
    }
    if (2 * h_ < d_) out[d_ - 1] = Scalar(0);  // an odd d_model leaves the last column 0
  }

 private:
  index_t d_ = 0, h_ = 0;
  sinusoidal_variant variant_ = sinusoidal_variant::paper;
  index_t offset_ = 0;
  std::vector<double> freq_;  // per frequency: the divisor (paper, marian) or the timescale (tensor2tensor)
};

/// [n_positions, d_model]: row `pos` encodes position p = pos + offset (the rows of
/// sinusoidal_positions, bit for bit).
template <class Scalar>
tensor<Scalar> sinusoidal_table(index_t n_positions, index_t d_model, sinusoidal_variant variant, index_t offset) {
  tensor<Scalar> table({n_positions, d_model});
  const sinusoidal_positions<Scalar> rows(d_model, variant, offset);
  for (index_t pos = 0; pos < n_positions; ++pos) rows.row(pos, table.data() + pos * d_model);
  return table;
}

}  // namespace eigenformer
