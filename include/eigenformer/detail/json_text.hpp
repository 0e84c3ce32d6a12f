// eigenformer/detail/json_text.hpp: JSON text from outside (a safetensors header, a config.json),
// parsed strictly and safely.
//
// Strict: a key given twice in one object is an error (nlohmann's DOM would silently keep one), and
// so is a NUL byte (nlohmann stops there as if the input ended, accepting anything after it). Safe:
// nesting deeper than `max_depth` stops the parse at once (the parser is iterative, but what walks
// the DOM afterwards, dump() in a message or a copy, may recurse once per level), and messages quote
// the text only in short excerpts. Every error is a format_error starting with `where`.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../error.hpp"
#include "file.hpp"

namespace eigenformer::detail {

/// Deepest nesting of arrays and objects accepted by default: the formats read here need 4.
inline constexpr int default_max_json_depth = 64;

/// A JSON value for an error message, cut short if long. The value must come from a parse that limited
/// its nesting (dump() recurses once per level).
inline std::string json_excerpt(const nlohmann::json& v) {
  if (v.is_string()) return quote_text(text_excerpt(v.get_ref<const std::string&>(), 37));
  return text_excerpt(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 40);
}

/// Parses `text`; `where` starts every message ("<path>: header", "<path>").
inline nlohmann::json parse_strict_json(std::string_view text, const std::string& where,
                                        int max_depth = default_max_json_depth) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using event_t = nlohmann::json::parse_event_t;
    // depth: of the container being opened, counting from 0 for the outermost one.
    if ((event == event_t::object_start || event == event_t::array_start) && depth >= max_depth) {
      throw format_error(where + " nests arrays and objects more than " + std::to_string(max_depth) + " levels deep");
    }
    if (event == event_t::object_start) keys.emplace_back();
    if (event == event_t::object_end && !keys.empty()) keys.pop_back();
    if (event == event_t::key && duplicate.empty() && !keys.empty() &&
        !keys.back().insert(parsed.get<std::string>()).second) {
      duplicate = text_excerpt(parsed.get<std::string>());
    }
    return true;
  };
  if (const auto nul = text.find('\0'); nul != std::string_view::npos) {
    throw format_error(where + " is not valid JSON: NUL byte at offset " + std::to_string(nul));
  }
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    throw format_error(where + " is not valid JSON: " + json_error_excerpt(e.what()));
  }
  if (!duplicate.empty()) throw format_error(where + ": key '" + duplicate + "' appears twice");
  return value;
}

/// The JSON file at `path` (a regular file of at most `max_bytes`), parsed as parse_strict_json does;
/// messages start with the path.
inline nlohmann::json read_json_file(const std::filesystem::path& path, std::uint64_t max_bytes = std::uint64_t{64} << 20) {
  const input_file file(path);
  if (file.size() > max_bytes) {
    throw format_error(path.string() + ": " + std::to_string(file.size()) + " bytes, expected at most " +
                       std::to_string(max_bytes) + " for a JSON file");
  }
  const std::vector<std::byte> bytes = file.read_all();
  return parse_strict_json(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path.string());
}

}  // namespace eigenformer::detail
