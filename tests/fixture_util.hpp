// Test helper: the PyTorch golden fixtures under tests/fixtures (written by tools/make_fixtures.py).
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <eigenformer/batch.hpp>
#include <eigenformer/io/npy.hpp>

namespace eigenformer::testing {

inline std::filesystem::path fixture_root() { return EIGENFORMER_TEST_DATA; }

/// Every fixture folder (one holding model.safetensors), sorted by name.
inline std::vector<std::string> fixture_cases() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(fixture_root()))
    if (entry.is_directory() && std::filesystem::exists(entry.path() / "model.safetensors"))
      names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// The padded token array `name`.npy with its lengths `name`_lengths.npy, packed.
inline token_batch fixture_batch(const std::filesystem::path& dir, const std::string& name) {
  std::vector<index_t> shape;
  const auto tokens = io::read_npy_ints(dir / (name + ".npy"), &shape);
  const auto lengths = io::read_npy_ints(dir / (name + "_lengths.npy"));
  std::vector<token_id> ids(tokens.begin(), tokens.end());
  std::vector<index_t> lens(lengths.begin(), lengths.end());
  return token_batch::from_padded(ids, shape.at(0), shape.at(1), lens);
}

}  // namespace eigenformer::testing
