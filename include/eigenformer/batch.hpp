// eigenformer/batch.hpp: token_batch, a batch of token sequences of different lengths, packed.
//
// Sequences are stored back to back with no padding (offsets[b] .. offsets[b+1] are sequence b),
// and every per-token operation of the model runs on exactly those rows: padded positions cost
// nothing, never reach a mixture-of-experts router, and cannot leak into a neighbour's result.
// Attention is the only place that needs the boundaries, and reads them from the offsets.
#pragma once

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "error.hpp"
#include "types.hpp"

namespace eigenformer {

struct token_batch {
  std::vector<token_id> tokens;       // [sum of lengths]
  std::vector<index_t> offsets{0};    // [batch + 1], offsets[0] == 0, non-decreasing

  /// Packs `sequences` (each may be empty).
  static token_batch from_sequences(const std::vector<std::vector<token_id>>& sequences) {
    token_batch b;
    for (const auto& s : sequences) b.push_back(s);
    return b;
  }

  /// Packs a right-padded [batch, max_length] array with per-row lengths.
  static token_batch from_padded(std::span<const token_id> padded, index_t batch, index_t max_length,
                                 std::span<const index_t> lengths) {
    if (static_cast<index_t>(padded.size()) != batch * max_length || static_cast<index_t>(lengths.size()) != batch) {
      throw shape_error("token_batch::from_padded: " + std::to_string(padded.size()) + " tokens and " +
                        std::to_string(lengths.size()) + " lengths, expected " + std::to_string(batch * max_length) +
                        " and " + std::to_string(batch));
    }
    token_batch b;
    for (index_t i = 0; i < batch; ++i) {
      if (lengths[static_cast<std::size_t>(i)] < 0 || lengths[static_cast<std::size_t>(i)] > max_length) {
        throw invalid_argument("token_batch::from_padded: length " + std::to_string(lengths[static_cast<std::size_t>(i)]) +
                               " of sequence " + std::to_string(i) + ", expected 0 to " + std::to_string(max_length));
      }
      b.push_back(padded.subspan(static_cast<std::size_t>(i * max_length), static_cast<std::size_t>(lengths[static_cast<std::size_t>(i)])));
    }
    return b;
  }

  void push_back(std::span<const token_id> sequence) {
    tokens.insert(tokens.end(), sequence.begin(), sequence.end());
    offsets.push_back(static_cast<index_t>(tokens.size()));
  }

  index_t size() const noexcept { return static_cast<index_t>(offsets.size()) - 1; }
  index_t length(index_t b) const noexcept { return offsets[static_cast<std::size_t>(b) + 1] - offsets[static_cast<std::size_t>(b)]; }
  index_t total() const noexcept { return static_cast<index_t>(tokens.size()); }
  index_t max_length() const noexcept {
    index_t m = 0;
    for (index_t b = 0; b < size(); ++b) m = std::max(m, length(b));
    return m;
  }
  std::span<const token_id> sequence(index_t b) const noexcept {
    return std::span<const token_id>(tokens).subspan(static_cast<std::size_t>(offsets[static_cast<std::size_t>(b)]),
                                                     static_cast<std::size_t>(length(b)));
  }
};

}  // namespace eigenformer
