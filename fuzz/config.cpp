// fuzz/config.cpp: libFuzzer target for model_config::parse, the JSON text of a model file's
// `config` metadata entry: JSON syntax and nesting limit, key types, unknown keys, ranges.
//
// An accepted config must survive its own round trip: parse(to_json().dump()) gives the same config
// (to_json() writes every key, so a key the writer spells differently from the reader, or a value the
// reader cannot take back, shows up here).
#include <cstdint>
#include <string_view>

#include <eigenformer/config.hpp>

#include "harness.hpp"

namespace ef = eigenformer;
using ef::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  ef::model_config c;
  try {
    c = ef::model_config::parse(text, "config.json");
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
    return 0;
  }
  const nlohmann::json j = c.to_json();
  try {
    const ef::model_config again = ef::model_config::parse(j.dump(), "round trip");
    require(again.to_json() == j, "parse(to_json().dump()) gives the same config");
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
    require(false, "an accepted config's own to_json() is accepted");
  }
  return 0;
}
