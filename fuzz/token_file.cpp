// fuzz/token_file.cpp: libFuzzer target for the command-line tool's token-id text parser
// (examples/token_file.hpp, read_token_lines), which reads --src-file, --tgt-file and
// --target-prefix-file.
//
// Accepted text must give one sequence per line, as std::getline counts lines: every '\n' ends one,
// and text after the last '\n' is one more.
#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>

#include "harness.hpp"
#include "token_file.hpp"

namespace ef = eigenformer;
using ef::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::istringstream in(text);
  try {
    const eigenformer_cli::token_lines lines = eigenformer_cli::read_token_lines(in, "tokens.txt");
    const auto newlines = static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
    require(lines.size() == newlines + (!text.empty() && text.back() != '\n'), "one sequence per line");
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
  }
  return 0;
}
