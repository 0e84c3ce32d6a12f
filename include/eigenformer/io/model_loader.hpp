// eigenformer/io/model_loader.hpp: load_model<Scalar>(path), the one place that knows both the
// sources of a model (our file, io/safetensors.hpp; a Hugging Face directory, io/hf_directory.hpp;
// a CTranslate2 directory, io/ct2_directory.hpp)
// and the model (model.hpp).
//
//   auto m = eigenformer::load_model<float>("model.safetensors");
//
// Checks, in order, each failure a format_error or config_error starting with the path:
// `__metadata__.format` is "eigenformer"; `__metadata__.config` parses as a model_config; every
// tensor is stored as F32, F16, BF16 or F64; no weight is NaN or infinite (after conversion to
// Scalar: an F64 weight beyond float's range is refused when loading as float); the model takes
// every tensor it needs with its exact shape and no tensor is left over. Tensors are converted to
// Scalar once, here.
//
// (io/finite_read.hpp says why non-finite weights are refused, and what the check costs.)
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../model.hpp"
#include "../weights.hpp"
#include "ct2_directory.hpp"
#include "finite_read.hpp"
#include "hf_directory.hpp"
#include "safetensors.hpp"

namespace eigenformer {

/// The config stored in an open model file.
inline model_config read_config(const io::safetensors_file& file) {
  const std::string where = file.path().string();
  const auto& meta = file.metadata();
  const auto format = meta.find("format");
  if (format == meta.end()) {
    throw format_error(where + ": __metadata__ has no 'format' entry, expected \"eigenformer\" (is this an eigenformer model file?)");
  }
  if (format->second != "eigenformer") {
    throw format_error(where + ": __metadata__ 'format' is \"" + detail::text_excerpt(format->second) +
                       "\", expected \"eigenformer\"");
  }
  const auto config = meta.find("config");
  if (config == meta.end()) throw format_error(where + ": __metadata__ has no 'config' entry");
  return model_config::parse(config->second, where + ": config");
}

/// Every tensor of `file`, converted to Scalar, ready for the model to take.
template <class Scalar>
weight_map<Scalar> read_weights(const io::safetensors_file& file) {
  weight_map<Scalar> weights(file.path().string());
  for (const auto& info : file.tensors()) weights.insert(info.name, io::read_finite_tensor<Scalar>(file, info.name));
  return weights;
}

/// How load_model() reads a model; the defaults suit every source.
struct load_options {
  /// The decoder start token, as a token string, of a CTranslate2 directory whose config.json
  /// leaves decoder_start_token null (mBART conversions: CTranslate2 takes the target language code
  /// as target_prefix, e.g. "ro_RO"); overrides it otherwise. Only CTranslate2 directories take it:
  /// the others name their start token by id, and generation_options::start_token replaces it per call.
  std::optional<std::string> decoder_start_token;
  /// How the linear layers' weight matrices are held and multiplied (packed_weights.hpp), converted
  /// once after loading. Unset: float32, except int8 for a CTranslate2 directory stored in int8.
  std::optional<weight_type> weights;
};

/// Loads the model at `path` for inference in Scalar: an eigenformer .safetensors file
/// (docs/model-format.md), a Hugging Face model directory (io/hf_directory.hpp) or a CTranslate2
/// directory (io/ct2_directory.hpp: a folder holding model.bin), told apart by
/// what is there, not by the name.
template <class Scalar>
model<Scalar> load_model(const std::filesystem::path& path, const load_options& options = {}) {
  if (io::is_ct2_directory(path)) {  // model.bin: CTranslate2 (its config.json is not Hugging Face's)
    const io::ct2_directory dir(path, options.decoder_start_token);
    weight_map<Scalar> weights = dir.read_weights<Scalar>();
    model<Scalar> m(dir.config(), weights);
    m.convert_weights(options.weights.value_or(dir.int8_weights() ? weight_type::int8 : weight_type::float32));
    return m;
  }
  if (options.decoder_start_token) {
    throw invalid_argument("decoder_start_token", path.string() + " is not a CTranslate2 directory; give the start token "
                                                  "by id (generation_options::start_token)");
  }
  if (io::is_hf_directory(path)) {
    const io::hf_directory dir(path);
    weight_map<Scalar> weights = dir.read_weights<Scalar>();
    model<Scalar> m(dir.config(), weights);
    m.convert_weights(options.weights.value_or(weight_type::float32));
    return m;
  }
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw format_error(path.string() + ": a folder without config.json, expected a model file or a Hugging Face model "
                       "directory");
  }
  const io::safetensors_file file(path);
  const model_config config = read_config(file);
  weight_map<Scalar> weights = read_weights<Scalar>(file);
  model<Scalar> m(config, weights);
  m.convert_weights(options.weights.value_or(weight_type::float32));
  return m;
}

}  // namespace eigenformer
