// Shared test helpers: per-type tolerances, a deterministic filler, naive reference loops.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <eigenformer/tensor.hpp>

#include "support/random.hpp"

namespace eigenformer::testing {

/// Absolute tolerances for O(1) values computed in Scalar against a double reference.
template <class Scalar>
struct tolerance;
template <>
struct tolerance<float> {
  static constexpr double value = 2e-6;
};
template <>
struct tolerance<double> {
  static constexpr double value = 1e-13;
};

using scalar_types = ::testing::Types<float, double>;

/// max |a - b| over equally sized ranges.
template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

/// Asserts that calling `f` throws exception type E whose message contains `needle`.
#define EIGENFORMER_EXPECT_THROW_WITH(statement, E, needle)                                      \
  do {                                                                                         \
    try {                                                                                      \
      statement;                                                                               \
      ADD_FAILURE() << "expected " #E " from: " #statement;                                    \
    } catch (const E& e) {                                                                     \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)                         \
          << "message: " << e.what() << "\nexpected to contain: " << (needle);                 \
    }                                                                                          \
  } while (0)

}  // namespace eigenformer::testing
