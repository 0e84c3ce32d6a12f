// eigenformer/types.hpp: the two integer types every level shares.
#pragma once

#include <cstddef>
#include <cstdint>

namespace eigenformer {

/// Signed index and extent type used for every dimension (the same width as Eigen::Index).
using index_t = std::ptrdiff_t;

/// A token id of a source or target vocabulary.
using token_id = std::int32_t;

}  // namespace eigenformer
