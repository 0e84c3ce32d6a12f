// examples/token_file.hpp: the token-id text files of the command-line tool (docs/cli.md): one
// sequence a line, ids separated by spaces or tabs, "\r\n" line ends accepted.
//
// Why a header of its own: the parser reads text from outside, so fuzz/token_file.cpp fuzzes it;
// it runs over any std::istream (read_token_lines), and the tool's read_token_file opens the path.
// Errors name the file and line ("src.txt:3: 'x1' is not a token id") and quote the offending
// text briefly and on one line (detail::text_excerpt): a 1 MB token must not become a 1 MB message.
#pragma once

#include <charconv>
#include <cstddef>
#include <fstream>
#include <istream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <eigenformer/detail/file.hpp>
#include <eigenformer/error.hpp>
#include <eigenformer/types.hpp>

namespace eigenformer_cli {

/// One vector of ids per line of the file, empty for an empty line.
using token_lines = std::vector<std::vector<eigenformer::token_id>>;

/// Parses token-id text from `in`; `name` (the file's path) starts every message. Throws
/// eigenformer::format_error "<name>:<line>: '<text>' is not a token id" for anything but a decimal
/// int32 between the separators, eigenformer::error "<name>: read error" if the stream fails.
inline token_lines read_token_lines(std::istream& in, const std::string& name) {
  token_lines lines;
  std::string line;
  for (eigenformer::index_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::vector<eigenformer::token_id> ids;
    std::size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      if (i == line.size()) break;
      std::size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
      eigenformer::token_id v = 0;
      const auto [end, ec] = std::from_chars(line.data() + i, line.data() + j, v);
      if (ec != std::errc() || end != line.data() + j) {
        throw eigenformer::format_error(name + ":" + std::to_string(number) + ": '" +
                                        eigenformer::detail::text_excerpt(std::string_view(line).substr(i, j - i)) +
                                        "' is not a token id");
      }
      ids.push_back(v);
      i = j;
    }
    lines.push_back(std::move(ids));
  }
  if (in.bad()) throw eigenformer::error(name + ": read error");
  return lines;
}

/// read_token_lines() over the file at `path`; eigenformer::error "<path>: cannot open" if it cannot
/// be opened.
inline token_lines read_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw eigenformer::error(path + ": cannot open");
  return read_token_lines(in, path);
}

}  // namespace eigenformer_cli
