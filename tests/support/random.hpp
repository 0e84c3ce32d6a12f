// Deterministic pseudo-random values for tests and benchmarks (no GoogleTest dependency).
#pragma once

#include <cstdint>
#include <initializer_list>

#include <eigenformer/tensor.hpp>

namespace eigenformer::testing {

/// Deterministic values in [lo, hi): a 64-bit LCG (same numbers on every platform).
class filler {
 public:
  explicit filler(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  double next(double lo = -1.0, double hi = 1.0) {
    state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * static_cast<double>(state_ >> 11) * 0x1.0p-53;
  }
  template <class Scalar>
  tensor<Scalar> make(std::initializer_list<index_t> dims, double lo = -1.0, double hi = 1.0) {
    tensor<Scalar> t(dims);
    for (auto& v : t.values()) v = static_cast<Scalar>(next(lo, hi));
    return t;
  }

 private:
  std::uint64_t state_;
};

}  // namespace eigenformer::testing
