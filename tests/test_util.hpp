// Shared test helpers: per-type tolerances, a deterministic filler, naive reference loops, and a
// fresh directory per test with whole-file read and write.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
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

/// A fresh, empty directory EIGENFORMER_TEST_TMP/<area>/<suite>.<test> for the running test (ctest runs
/// tests in parallel, one process each, so every test needs its own).
inline std::filesystem::path test_dir(const std::string& area) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "." + info->name();
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  const std::filesystem::path dir = std::filesystem::path(EIGENFORMER_TEST_TMP) / area / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// Replaces the file at `path` with `bytes`.
inline void write_file(const std::filesystem::path& path, const std::string& bytes) {
  // Unlink first: ext4 flushes a file truncated and rewritten in place to disk on close (auto_da_alloc),
  // which made the corruption tests of test_npy and test_safetensors take seconds.
  std::filesystem::remove(path);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

/// The whole file at `path` ("" if it cannot be opened).
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace eigenformer::testing
