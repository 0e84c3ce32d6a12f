// Test helpers for tests/fixtures/hf (tools/hf/make_hf_fixtures.py; its README gives the layout):
// the folder, and its text files of token ids.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <eigenformer/types.hpp>

#include "../fixture_util.hpp"

namespace eigenformer::testing {

inline std::filesystem::path hf_root() { return fixture_root() / "hf"; }

/// One sequence of ids a line.
inline std::vector<std::vector<token_id>> id_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  std::vector<std::vector<token_id>> lines;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ids(line);
    lines.emplace_back();
    for (token_id id; ids >> id;) lines.back().push_back(id);
  }
  return lines;
}

/// A fresh copy of fixture folder `name` at tmp/<area>/<as>, for a test to damage.
inline std::filesystem::path scratch_copy(const std::string& name, const std::string& area, const std::string& as) {
  namespace fs = std::filesystem;
  const fs::path dst = fs::path(EIGENFORMER_TEST_TMP) / area / as;
  fs::remove_all(dst);
  fs::create_directories(dst.parent_path());
  fs::copy(hf_root() / name, dst, fs::copy_options::recursive);
  return dst;
}

}  // namespace eigenformer::testing
