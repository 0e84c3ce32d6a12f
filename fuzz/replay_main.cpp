// fuzz/replay_main.cpp: main() for the regression build of a fuzz target: runs
// LLVMFuzzerTestOneInput once on every file of the directories (or on the files) named on the
// command line, in name order, and exits 0 if none crashed.
//
//   fuzz_replay_safetensors fuzz/corpus/safetensors fuzz/regressions/safetensors
//
// Why: the seed corpus and every input that once crashed, hung or exhausted memory then run in every
// build that builds the tests (GCC included, and under ASan + UBSan), without clang or libFuzzer.
// A finding aborts the process (harness.hpp), so ctest fails; the input last named on standard
// output is the culprit. A missing or empty directory is an error too: a test that replays nothing
// would pass for the wrong reason.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

/// The regular files of `path` (a directory, not recursed into) or `path` itself, sorted.
bool inputs_of(const std::filesystem::path& path, std::vector<std::filesystem::path>& out) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    out.push_back(path);
    return true;
  }
  if (!std::filesystem::is_directory(path, ec)) {
    std::fprintf(stderr, "%s: no such file or directory\n", path.c_str());
    return false;
  }
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    if (entry.is_regular_file(ec)) files.push_back(entry.path());
  }
  if (ec) {
    std::fprintf(stderr, "%s: cannot list: %s\n", path.c_str(), ec.message().c_str());
    return false;
  }
  if (files.empty()) {
    std::fprintf(stderr, "%s: no inputs\n", path.c_str());
    return false;
  }
  std::sort(files.begin(), files.end());
  out.insert(out.end(), files.begin(), files.end());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  std::vector<std::filesystem::path> inputs;
  bool ok = true;
  for (int i = 1; i < argc; ++i) ok = inputs_of(argv[i], inputs) && ok;
  if (!ok) return 1;
  for (const auto& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "%s: cannot read\n", path.c_str());
      return 1;
    }
    std::printf("%s (%zu bytes)\n", path.c_str(), bytes.size());
    std::fflush(stdout);  // the last name printed is the culprit if this input crashes
    // A fresh copy of exactly the input's size (the vector read grew by doubling), so that ASan sees
    // any read past its end; as libFuzzer, never a null pointer, even for an empty input.
    const std::vector<std::uint8_t> copy(bytes.begin(), bytes.end());
    static const std::uint8_t empty = 0;
    LLVMFuzzerTestOneInput(copy.empty() ? &empty : copy.data(), copy.size());
  }
  std::printf("%zu inputs replayed\n", inputs.size());
  return 0;
}
