// With odr_b.cpp: two translation units that include the umbrella header, linked into one binary.
#include <eigenformer/eigenformer.hpp>

int odr_b();

int main() {
  // The version macros must agree with CMake's project(VERSION).
  static_assert(EIGENFORMER_VERSION_MAJOR == EXPECTED_VERSION_MAJOR, "major version differs from CMake");
  static_assert(EIGENFORMER_VERSION_MINOR == EXPECTED_VERSION_MINOR, "minor version differs from CMake");
  static_assert(EIGENFORMER_VERSION_PATCH == EXPECTED_VERSION_PATCH, "patch version differs from CMake");
  eigenformer::tensor<double> t({3});
  return odr_b() == 3 && t.size() == 3 ? 0 : 1;
}
