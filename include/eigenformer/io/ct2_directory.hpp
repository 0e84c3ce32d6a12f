// eigenformer/io/ct2_directory.hpp: a CTranslate2 model directory (what ctranslate2's converters
// write: model.bin, config.json, the vocabularies) as a model_config and a weight_map under the
// model's own tensor names, for encoder-decoder models of the spec TransformerSpec (revision 7) and
// decoder-only models of the spec TransformerDecoderSpec (revision 8, ctranslate2's
// TransformerDecoderModelSpec: TransformersConverter's Llama-family and GPT-2 conversions, one
// vocabulary.json; mapping at read_decoder_only_weights()).
//
//   const io::ct2_directory dir("opus-mt-en-de-ct2/");   // model.bin, config.json, shared_vocabulary.json
//   auto weights = dir.read_weights<float>();
//   model<float> m(dir.config(), weights);               // load_model(path) does both for a folder
//
// model.bin (binary version 6, written by ctranslate2.specs.ModelSpec._serialize; little-endian):
//   u32 binary version, string spec name, u32 spec revision,
//   u32 variable count, per variable: string name, u8 rank, u32 dims[rank], u8 dtype
//     (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), u32 byte count, the bytes;
//   u32 alias count, per alias: string alias, string target variable.
//   A string is a u16 length that counts a terminating NUL, then that many bytes (the last one NUL).
// The spec's attributes are variables too, of rank 0: `encoder/num_heads` (int16), `pre_norm`,
// `activation` (int8: 0 relu, 1 gelu tanh, 2 swish, 3 gelu, 4 gelu sigmoid, 5 tanh),
// `scale_embeddings` (float32: the embedding multiplier, 1 or sqrt(d_model) here), ...
//
// Mapping (L = encoder or decoder, i a layer; ours as docs/model-format.md):
//   L/layer_i/self_attention/linear_0   [3d, d] q, k, v rows already fused -> self_attn.in_proj_*
//   L/layer_i/self_attention/linear_1   -> self_attn.out_proj;  .../layer_norm {gamma,beta} -> norm1
//   decoder/layer_i/attention/linear_0  q [d, d]; linear_1 k, v fused [2d, d] -> multihead_attn.in_proj_*
//   decoder/layer_i/attention/linear_2  -> multihead_attn.out_proj; .../layer_norm -> norm2
//   L/layer_i/ffn/linear_0, linear_1    -> linear1, linear2; ffn/layer_norm -> norm2 (enc) / norm3 (dec)
//   L/layer_norm                        -> the stack's final norm (pre-norm models)
//   L/layernorm_embedding               -> embed_norm;  L/position_encodings/encodings -> learned
//                                          positions counted from 0 (absent: refused, see below)
//   encoder/embeddings_0/weight, decoder/embeddings/weight, decoder/projection/{weight,bias}
//   An alias to decoder/embeddings/weight shares (encoder) or ties (projection) the table.
// Weights: float32 as stored; float16 and bfloat16 widened (exact); int8 (and int16) with
// `<name>_scale` (per row, or one scalar for int16) widened to float at load as value / scale,
// the inverse of the converter's `round(w * scale)`, scale = 127 / max|row|. Until eigenformer
// loads them as int8 (load_options::weights, model_loader.hpp) this keeps CTranslate2's rounded weights;
// re-quantising them per row gives back the same integers (the scale is 127 / max|row| both times).
// `decoder/start_from_zero_embedding` (Marian conversions, whose vocabulary drops `<pad>`): the
// decoder's first input is a zero embedding. Here the target table gets one extra row, all zeros,
// the start token; its output bias is -1e9, so it is never generated and takes no probability
// mass: tgt_vocab_size is then the vocabulary's size + 1 (and src_vocab_size too if shared).
// No position_encodings (CTranslate2 computing sinusoids itself, as for OpenNMT conversions): refused
// until a fixture proves a rendering of them.
//
// Strict: another spec, binary version or revision, an attribute value that would change the
// computation and is not implemented (alibi, multi-query attention, another activation, an
// embedding scale other than 1 or sqrt(d_model), ...), or any variable left unused is an error
// naming the file and the variable. Every dimension and byte count is checked against the file's
// size before anything is allocated.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../detail/byte_count.hpp"
#include "../detail/file.hpp"
#include "../detail/half.hpp"
#include "../detail/json_text.hpp"
#include "../weights.hpp"

namespace eigenformer::io {

/// True if `path` is a folder holding a CTranslate2 model.bin.
inline bool is_ct2_directory(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) && std::filesystem::is_regular_file(path / "model.bin", ec);
}

/// One variable of model.bin: where its bytes are, and what they hold.
struct ct2_variable {
  std::string name;
  std::vector<std::int64_t> dims;
  std::uint8_t dtype = 0;  // 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
  std::uint64_t offset = 0, bytes = 0;
};

/// The variables and aliases of a model.bin, validated against the file's size.
class ct2_model_file {
 public:
  explicit ct2_model_file(std::filesystem::path path) : file_(std::move(path)) { parse(); }

  const std::filesystem::path& path() const noexcept { return file_.path(); }
  const std::string& spec() const noexcept { return spec_; }
  std::uint32_t binary_version() const noexcept { return version_; }
  std::uint32_t revision() const noexcept { return revision_; }
  /// The variable `name` names, through an alias if it is one; nullptr if neither.
  const ct2_variable* find(std::string_view name) const {
    std::string n(name);
    if (const auto a = aliases_.find(n); a != aliases_.end()) n = a->second;
    const auto it = variables_.find(n);
    return it == variables_.end() ? nullptr : &it->second;
  }
  /// The target of alias `name`, or "" if `name` is not an alias.
  std::string alias_target(const std::string& name) const {
    const auto it = aliases_.find(name);
    return it == aliases_.end() ? std::string() : it->second;
  }
  const std::map<std::string, ct2_variable>& variables() const noexcept { return variables_; }
  const std::map<std::string, std::string>& aliases() const noexcept { return aliases_; }

  static std::size_t dtype_size(std::uint8_t t) { return t == 0 || t == 3 ? 4 : t == 1 ? 1 : 2; }
  static const char* dtype_name(std::uint8_t t) {
    static const char* names[] = {"float32", "int8", "int16", "int32", "float16", "bfloat16"};
    return t < 6 ? names[t] : "?";
  }

  /// The raw bytes of `v` (already checked to lie inside the file).
  std::vector<std::byte> bytes(const ct2_variable& v) const {
    std::vector<std::byte> out(static_cast<std::size_t>(v.bytes));
    if (!out.empty()) file_.read_at(v.offset, out.data(), out.size());
    return out;
  }
  /// Element i of `v` as double (any dtype).
  double element(const ct2_variable& v, const std::vector<std::byte>& b, std::size_t i) const {
    const std::byte* p = b.data() + i * dtype_size(v.dtype);
    switch (v.dtype) {
      case 0: { float x; std::memcpy(&x, p, 4); return x; }
      case 1: { std::int8_t x; std::memcpy(&x, p, 1); return x; }
      case 2: { std::int16_t x; std::memcpy(&x, p, 2); return x; }
      case 3: { std::int32_t x; std::memcpy(&x, p, 4); return x; }
      case 4: { std::uint16_t x; std::memcpy(&x, p, 2); return detail::half_to_float(x); }
      default: { std::uint16_t x; std::memcpy(&x, p, 2); return detail::bfloat16_to_float(x); }
    }
  }

 private:
  std::string at(std::uint64_t pos, const std::string& what) const {
    return file_.path().string() + ": byte " + std::to_string(pos) + ": " + what;
  }
  void need(std::uint64_t n, const std::string& what) const {
    if (n > file_.size() || pos_ > file_.size() - n) {
      throw format_error(at(pos_, what + ": " + std::to_string(n) + " byte(s) past the end of the file (" +
                                      std::to_string(file_.size()) + " bytes): truncated?"));
    }
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T x;
    file_.read_at(pos_, reinterpret_cast<std::byte*>(&x), sizeof(T));
    pos_ += sizeof(T);
    return x;
  }
  std::string read_string(const std::string& what) {
    const auto n = read<std::uint16_t>(what + " (length)");
    if (n == 0) throw format_error(at(pos_ - 2, what + ": length 0, expected at least the terminating NUL"));
    need(n, what);
    std::string s(n, '\0');
    file_.read_at(pos_, reinterpret_cast<std::byte*>(s.data()), n);
    pos_ += n;
    if (s.back() != '\0') throw format_error(at(pos_ - 1, what + ": not NUL-terminated"));
    s.pop_back();
    if (s.find('\0') != std::string::npos) throw format_error(at(pos_ - n, what + ": NUL byte inside the string"));
    return s;
  }

  void parse() {
    const std::string file = file_.path().string();
    version_ = read<std::uint32_t>("binary version");
    if (version_ != 6) {
      throw format_error(file + ": binary version " + std::to_string(version_) +
                         ", expected 6 (written by ctranslate2 >= 3.0)");
    }
    spec_ = read_string("spec name");
    if (spec_ != "TransformerSpec" && spec_ != "TransformerDecoderSpec") {
      throw config_error(file + ": spec '" + detail::text_excerpt(spec_) +
                         "' is not supported, expected TransformerSpec (encoder-decoder) or TransformerDecoderSpec (decoder-only)");
    }
    revision_ = read<std::uint32_t>("spec revision");
    const std::uint32_t expected_revision = spec_ == "TransformerSpec" ? 7 : 8;
    if (revision_ != expected_revision) {
      throw config_error(file + ": " + spec_ + " revision " + std::to_string(revision_) + " is not supported, expected " +
                         std::to_string(expected_revision));
    }
    const auto count = read<std::uint32_t>("variable count");
    for (std::uint32_t k = 0; k < count; ++k) {  // each variable takes >= 12 bytes: need() ends a lying count
      const std::string what = "variable " + std::to_string(k);
      ct2_variable v;
      v.name = read_string(what + " name");
      const std::string var = "variable '" + detail::text_excerpt(v.name, 128) + "'";
      const auto rank = read<std::uint8_t>(var + " rank");
      if (rank > 4) throw format_error(at(pos_ - 1, var + ": rank " + std::to_string(rank) + ", expected at most 4"));
      std::uint64_t elements = 1;
      for (int r = 0; r < rank; ++r) {
        const auto d = read<std::uint32_t>(var + " dimension");
        if (d > static_cast<std::uint32_t>(INT32_MAX)) throw format_error(at(pos_ - 4, var + ": dimension " + std::to_string(d) + " too large"));
        v.dims.push_back(d);
        elements = detail::sat_mul(elements, d);
      }
      v.dtype = read<std::uint8_t>(var + " dtype");
      if (v.dtype > 5) {
        throw format_error(at(pos_ - 1, var + ": dtype " + std::to_string(v.dtype) +
                                            ", expected 0-5 (float32, int8, int16, int32, float16, bfloat16)"));
      }
      v.bytes = read<std::uint32_t>(var + " byte count");
      const std::uint64_t expected = detail::sat_mul(elements, dtype_size(v.dtype));
      if (v.bytes != expected) {
        throw format_error(at(pos_ - 4, var + ": " + std::to_string(v.bytes) + " bytes, expected " + std::to_string(expected) +
                                            " for its shape and dtype " + dtype_name(v.dtype)));
      }
      need(v.bytes, var + " data");
      v.offset = pos_;
      pos_ += v.bytes;
      std::string name = v.name;
      if (!variables_.emplace(name, std::move(v)).second) throw format_error(file + ": " + var + " appears twice");
    }
    const auto n_aliases = read<std::uint32_t>("alias count");
    for (std::uint32_t k = 0; k < n_aliases; ++k) {
      const std::string alias = read_string("alias " + std::to_string(k));
      const std::string target = read_string("target of alias '" + detail::text_excerpt(alias, 128) + "'");
      if (!variables_.count(target)) {
        throw format_error(file + ": alias '" + detail::text_excerpt(alias, 128) + "' names variable '" +
                           detail::text_excerpt(target, 128) + "', which is not in the file");
      }
      if (variables_.count(alias) || !aliases_.emplace(alias, target).second) {
        throw format_error(file + ": alias '" + detail::text_excerpt(alias, 128) + "' is defined twice");
      }
    }
    if (pos_ != file_.size()) {
      throw format_error(at(pos_, std::to_string(file_.size() - pos_) + " byte(s) after the last alias, expected none"));
    }
  }

  detail::input_file file_;
  std::uint64_t pos_ = 0;
  std::uint32_t version_ = 0, revision_ = 0;
  std::string spec_;
  std::map<std::string, ct2_variable> variables_;
  std::map<std::string, std::string> aliases_;
};

/// The token strings of a CTranslate2 directory, id -> token: shared_vocabulary.{json,txt}, or
/// source_vocabulary and target_vocabulary (JSON lists or one token a line).
struct ct2_vocabularies {
  std::vector<std::string> source, target;  // the same when shared
};
inline ct2_vocabularies read_ct2_vocabularies(const std::filesystem::path& dir);

class ct2_directory {
 public:
  /// Reads model.bin's index, config.json and the vocabularies; throws config_error or format_error
  /// naming the file and key or variable. `decoder_start` (a target token) is required when
  /// config.json's decoder_start_token is null (mBART: CTranslate2 takes it as target_prefix) and
  /// overrides it otherwise.
  explicit ct2_directory(std::filesystem::path dir, std::optional<std::string> decoder_start = std::nullopt)
      : dir_(std::move(dir)), bin_(dir_ / "model.bin") {
    read_vocabularies();
    parse(decoder_start);
    try {
      config_.validate();
    } catch (const config_error& e) {
      throw config_error(bin_.path().string() + ": " + e.what());
    }
  }

  const std::filesystem::path& path() const noexcept { return dir_; }
  const model_config& config() const noexcept { return config_; }
  const ct2_model_file& file() const noexcept { return bin_; }
  /// The target vocabulary (id -> token); the source one (the same when shared).
  const std::vector<std::string>& target_vocabulary() const noexcept { return tgt_vocab_; }
  const std::vector<std::string>& source_vocabulary() const noexcept { return src_vocab_; }
  /// config.json's add_source_bos / add_source_eos: CTranslate2 adds them to token input; eigenformer
  /// takes ids, so the caller does.
  bool add_source_bos() const noexcept { return add_source_bos_; }
  /// Whether model.bin stores int8 weight matrices (a conversion with quantization int8*): load_model
  /// then holds the model's matrices as int8 unless load_options::weights says otherwise. Only
  /// matrices count: every conversion stores flags such as decoder/alibi as int8 scalars.
  bool int8_weights() const noexcept {
    for (const auto& [name, v] : bin_.variables()) {
      if (v.dtype == 1 && v.dims.size() == 2) return true;
    }
    return false;
  }
  bool add_source_eos() const noexcept { return add_source_eos_; }
  /// True when the decoder starts from a zero embedding (an extra target row, see the top).
  bool start_from_zero_embedding() const noexcept { return zero_start_; }

  /// Every variable of model.bin, as Scalar, under the model's names (NaN or infinity refused).
  template <class Scalar>
  weight_map<Scalar> read_weights() const;

  /// True for a decoder-only model (spec TransformerDecoderSpec).
  bool decoder_only_spec() const noexcept { return bin_.spec() == "TransformerDecoderSpec"; }

 private:
  void read_vocabularies();
  void parse(const std::optional<std::string>& decoder_start);
  /// TransformerDecoderSpec's attributes and config.json (parse() calls it for that spec).
  void parse_decoder_only(const nlohmann::json& j, const std::string& cfile);
  template <class Scalar>
  weight_map<Scalar> read_decoder_only_weights() const;
  /// Variable `name` as Scalar with exactly `dims` (int8/int16 divided by <name>_scale); erases
  /// the names it reads from `unused`.
  template <class Scalar>
  tensor<Scalar> read_variable(const std::string& name, const std::vector<index_t>& dims, std::set<std::string>& unused) const;
  /// Scalar attribute `name` (nullopt if absent); recorded as consumed.
  std::optional<double> attribute(const std::string& name) {
    const ct2_variable* v = bin_.find(name);
    if (!v) return std::nullopt;
    if (!v->dims.empty()) throw format_error(var_where(name) + ": rank " + std::to_string(v->dims.size()) + ", expected a scalar");
    consumed_.insert(name);
    return bin_.element(*v, bin_.bytes(*v), 0);
  }
  std::string var_where(const std::string& name) const {
    return bin_.path().string() + ": variable '" + detail::text_excerpt(name, 128) + "'";
  }

  std::filesystem::path dir_;
  ct2_model_file bin_;
  model_config config_;
  std::vector<std::string> src_vocab_, tgt_vocab_;
  bool add_source_bos_ = false, add_source_eos_ = false, zero_start_ = false;
  index_t d_ = 0, vocab_rows_ = 0;  // d_model; rows of decoder/embeddings/weight
  std::set<std::string> consumed_;  // attributes parse() read (scalars: not weights)
};

// ---------------------------------------------------------------------------------------------
// Implementation

namespace detail_ct2 {

inline std::vector<std::string> read_vocabulary(const std::filesystem::path& json, const std::filesystem::path& txt) {
  std::vector<std::string> out;
  std::error_code ec;
  if (std::filesystem::is_regular_file(json, ec)) {
    const nlohmann::json j = detail::read_json_file(json);
    if (!j.is_array()) throw format_error(json.string() + ": expected a JSON list of tokens");
    for (std::size_t i = 0; i < j.size(); ++i) {
      if (!j[i].is_string()) throw format_error(json.string() + ": entry " + std::to_string(i) + ": expected a string");
      out.push_back(j[i].get<std::string>());
    }
    return out;
  }
  const detail::input_file f(txt);
  if (f.size() > (std::uint64_t{256} << 20)) throw format_error(txt.string() + ": larger than 256 MiB");
  const auto bytes = f.read_all();
  std::string cur;
  for (std::byte b : bytes) {
    if (b == std::byte{'\n'}) {
      if (!cur.empty() && cur.back() == '\r') cur.pop_back();
      out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(b));
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

}  // namespace detail_ct2

inline ct2_vocabularies read_ct2_vocabularies(const std::filesystem::path& dir) {
  std::error_code ec;
  auto exists = [&](const char* stem) {
    return std::filesystem::is_regular_file(dir / (std::string(stem) + ".json"), ec) ||
           std::filesystem::is_regular_file(dir / (std::string(stem) + ".txt"), ec);
  };
  auto read = [&](const char* stem) {
    return detail_ct2::read_vocabulary(dir / (std::string(stem) + ".json"), dir / (std::string(stem) + ".txt"));
  };
  ct2_vocabularies v;
  if (exists("shared_vocabulary")) {
    v.source = v.target = read("shared_vocabulary");
  } else if (exists("vocabulary")) {  // decoder-only (TransformerDecoderSpec): one vocabulary
    v.source = v.target = read("vocabulary");
  } else if (exists("source_vocabulary") && exists("target_vocabulary")) {
    v.source = read("source_vocabulary");
    v.target = read("target_vocabulary");
  } else {
    throw format_error(dir.string() + ": no shared_vocabulary.{json,txt}, vocabulary.{json,txt} (decoder-only) nor source_ and target_vocabulary.{json,txt}");
  }
  return v;
}

inline void ct2_directory::read_vocabularies() {
  ct2_vocabularies v = read_ct2_vocabularies(dir_);
  src_vocab_ = std::move(v.source);
  tgt_vocab_ = std::move(v.target);
}

inline void ct2_directory::parse(const std::optional<std::string>& decoder_start) {
  const std::string cfile = (dir_ / "config.json").string();
  const nlohmann::json j = detail::read_json_file(dir_ / "config.json");
  if (!j.is_object()) throw config_error(cfile + ": expected a JSON object");
  std::set<std::string> used;
  auto key = [&](const std::string& k) -> const nlohmann::json* {
    used.insert(k);
    const auto it = j.find(k);
    return it == j.end() ? nullptr : &*it;
  };
  auto bad = [&](const std::string& k, const std::string& expected) {
    const auto it = j.find(k);
    return config_error(cfile + ": " + k + ": " + (it == j.end() ? std::string("missing") : detail::json_excerpt(*it)) +
                        ", expected " + expected);
  };
  auto token = [&](const std::string& k, bool nullable) -> std::optional<std::string> {
    const nlohmann::json* v = key(k);
    if (v && v->is_string()) return v->get<std::string>();
    if (nullable && v && v->is_null()) return std::nullopt;
    throw bad(k, nullable ? "a token or null" : "a token");
  };
  auto flag = [&](const std::string& k) {
    const nlohmann::json* v = key(k);
    if (!v) return false;
    if (!v->is_boolean()) throw bad(k, "true or false");
    return v->get<bool>();
  };
  auto id_of = [&](const std::string& k, const std::string& tok) -> token_id {
    for (std::size_t i = 0; i < tgt_vocab_.size(); ++i)
      if (tgt_vocab_[i] == tok) return static_cast<token_id>(i);
    throw config_error(cfile + ": " + k + ": '" + detail::text_excerpt(tok) + "' is not in the target vocabulary");
  };

  // Scalar attributes of the spec, each consumed here (read_weights() checks nothing is left).
  auto scalar = [&](const std::string& name) { return attribute(name); };
  auto require = [&](const std::string& name) {
    const auto x = scalar(name);
    if (!x) throw format_error(var_where(name) + " is missing");
    return *x;
  };
  auto both = [&](const std::string& attr) {
    const double e = require("encoder/" + attr), d = require("decoder/" + attr);
    if (e != d) {
      throw config_error(var_where("decoder/" + attr) + ": " + std::to_string(d) + ", expected encoder/" + attr + " (" +
                         std::to_string(e) + "): one value for both stacks");
    }
    return e;
  };
  auto must_be = [&](const std::string& name, double expected, const char* feature) {
    const auto x = scalar(name);
    if (x && *x != expected) {
      throw config_error(var_where(name) + ": " + std::to_string(*x) + ", expected " + std::to_string(expected) + " (" +
                         feature + " is not supported)");
    }
  };

  model_config& c = config_;
  const ct2_variable* emb = bin_.find("decoder/embeddings/weight");
  if (!emb) throw format_error(var_where("decoder/embeddings/weight") + " is missing");
  if (emb->dims.size() != 2 || emb->dims[0] < 1 || emb->dims[1] < 1) {
    throw shape_error(var_where("decoder/embeddings/weight") + ": expected [vocabulary, d_model]");
  }
  vocab_rows_ = static_cast<index_t>(emb->dims[0]);
  d_ = static_cast<index_t>(emb->dims[1]);
  c.d_model = d_;
  if (static_cast<std::size_t>(vocab_rows_) != tgt_vocab_.size()) {
    throw config_error(var_where("decoder/embeddings/weight") + ": " + std::to_string(vocab_rows_) +
                       " rows, but the target vocabulary has " + std::to_string(tgt_vocab_.size()) + " tokens");
  }
  if (decoder_only_spec()) {
    if (decoder_start) {
      throw config_error(bin_.path().string() + ": a decoder start token was given, but a decoder-only model has none "
                                                "(the prompt starts as the caller says)");
    }
    return parse_decoder_only(j, cfile);
  }
  c.n_heads = static_cast<index_t>(both("num_heads"));
  c.norm_first = both("pre_norm") != 0;
  switch (static_cast<int>(both("activation"))) {
    case 0: c.activation_kind = activation::relu; break;
    case 1: c.activation_kind = activation::gelu_tanh; break;
    case 2: c.activation_kind = activation::silu; break;
    case 3: c.activation_kind = activation::gelu; break;
    default:
      throw config_error(var_where("encoder/activation") + ": " + std::to_string(both("activation")) +
                         ", expected 0 (relu), 1 (gelu tanh), 2 (swish) or 3 (gelu)");
  }
  {
    const double s = both("scale_embeddings");
    if (s == 1.0) c.scale_embedding = false;
    else if (std::abs(s - std::sqrt(double(d_))) <= 1e-6 * std::sqrt(double(d_))) c.scale_embedding = true;
    else {
      throw config_error(var_where("encoder/scale_embeddings") + ": " + std::to_string(s) + ", expected 1 or sqrt(d_model) = " +
                         std::to_string(std::sqrt(double(d_))));
    }
  }
  must_be("decoder/alibi", 0, "ALiBi");
  must_be("decoder/alibi_use_positive_positions", 0, "ALiBi");
  must_be("decoder/scale_alibi", 0, "ALiBi");
  must_be("encoder/multi_query_attention", 0, "multi-query attention");
  must_be("encoder/embeddings_merge", 0, "merging several source embeddings");
  // Only what CTranslate2 returns as attention alignments: no effect on the computation.
  scalar("decoder/alignment_heads");
  scalar("decoder/alignment_layer");
  zero_start_ = scalar("decoder/start_from_zero_embedding").value_or(0) != 0;

  // Layers: counted from the names present.
  auto count_layers = [&](const std::string& side) {
    index_t n = 0;
    while (bin_.find(side + "/layer_" + std::to_string(n) + "/self_attention/linear_0/weight")) ++n;
    return n;
  };
  c.n_encoder_layers = count_layers("encoder");
  c.n_decoder_layers = count_layers("decoder");
  {
    const ct2_variable* ff = bin_.find("encoder/layer_0/ffn/linear_0/weight");
    if (!ff || ff->dims.size() != 2) throw format_error(var_where("encoder/layer_0/ffn/linear_0/weight") + ": missing or not [d_ff, d_model]");
    c.d_ff = static_cast<index_t>(ff->dims[0]);
  }
  c.encoder_final_norm = bin_.find("encoder/layer_norm/gamma") != nullptr;
  c.decoder_final_norm = bin_.find("decoder/layer_norm/gamma") != nullptr;
  const bool enorm = bin_.find("encoder/layernorm_embedding/gamma") != nullptr;
  if (enorm != (bin_.find("decoder/layernorm_embedding/gamma") != nullptr)) {
    throw config_error(var_where("decoder/layernorm_embedding/gamma") + ": present on one side only, expected both or neither");
  }
  c.embedding_norm = enorm;
  c.layer_norm_eps = 1e-5;  // CTranslate2's LayerNorm default

  const ct2_variable* epos = bin_.find("encoder/position_encodings/encodings");
  const ct2_variable* dpos = bin_.find("decoder/position_encodings/encodings");
  if ((epos == nullptr) != (dpos == nullptr)) {
    throw config_error(var_where("encoder/position_encodings/encodings") + ": present on one side only, expected both or neither");
  }
  if (epos) {
    if (epos->dims.size() != 2 || dpos->dims.size() != 2 || epos->dims[0] != dpos->dims[0] || epos->dims[0] < 1) {
      throw shape_error(var_where("decoder/position_encodings/encodings") + ": expected [positions, d_model], as the encoder's");
    }
    c.positional = positional_encoding::learned;  // a stored table, row = position from 0
    c.position_offset = 0;
    c.max_positions = static_cast<index_t>(epos->dims[0]);
  } else {
    // CTranslate2 then computes its own sinusoids at run time; no fixture proves our rendering of
    // them yet, and a wrong guess would be a silent approximation.
    throw config_error(var_where("encoder/position_encodings/encodings") +
                       ": missing (CTranslate2's built-in sinusoidal positions are not supported yet)");
  }

  // Tables: shared when the encoder's is an alias of the decoder's; tied when the projection is.
  const bool enc_alias = bin_.alias_target("encoder/embeddings_0/weight") == "decoder/embeddings/weight";
  c.share_embeddings = enc_alias;
  c.tie_output = bin_.alias_target("decoder/projection/weight") == "decoder/embeddings/weight";
  const index_t extra = zero_start_ ? 1 : 0;
  c.tgt_vocab_size = vocab_rows_ + extra;
  if (c.share_embeddings) {
    if (src_vocab_.size() != tgt_vocab_.size()) {
      throw config_error(var_where("encoder/embeddings_0/weight") + ": shared with the decoder's, but the source vocabulary has " +
                         std::to_string(src_vocab_.size()) + " tokens and the target one " + std::to_string(tgt_vocab_.size()));
    }
    c.src_vocab_size = c.tgt_vocab_size;
  } else {
    const ct2_variable* se = bin_.find("encoder/embeddings_0/weight");
    if (!se) throw format_error(var_where("encoder/embeddings_0/weight") + " is missing");
    if (se->dims.size() != 2 || se->dims[0] != static_cast<std::int64_t>(src_vocab_.size())) {
      throw shape_error(var_where("encoder/embeddings_0/weight") + ": expected [" + std::to_string(src_vocab_.size()) +
                        " (the source vocabulary), d_model]");
    }
    c.src_vocab_size = static_cast<index_t>(src_vocab_.size());
  }

  // config.json
  add_source_bos_ = flag("add_source_bos");
  add_source_eos_ = flag("add_source_eos");
  token("unk_token", false);
  token("bos_token", false);
  const std::string eos = *token("eos_token", false);
  c.eos_id = id_of("eos_token", eos);
  std::optional<std::string> start = token("decoder_start_token", true);
  if (decoder_start) start = decoder_start;
  if (zero_start_) {
    c.bos_id = static_cast<token_id>(vocab_rows_);  // the appended zero row
  } else if (start) {
    c.bos_id = id_of("decoder_start_token", *start);
  } else {
    throw config_error(cfile + ": decoder_start_token: null (CTranslate2 takes the start token, e.g. the target language, "
                               "as target_prefix): give it as load_options::decoder_start_token (the tool: translate --tgt-lang)");
  }
  if (const nlohmann::json* e = key("layer_norm_epsilon"); e && !e->is_null()) {
    if (!e->is_number() || !(e->get<double>() > 0)) throw bad("layer_norm_epsilon", "a positive number or null");
    c.layer_norm_eps = e->get<double>();
  }
  if (const nlohmann::json* m = key("multi_query_attention"); m && !(m->is_boolean() && !m->get<bool>())) {
    throw bad("multi_query_attention", "false (multi-query attention is not supported)");
  }
  c.pad_id = c.eos_id;
  for (std::size_t i = 0; i < tgt_vocab_.size(); ++i)
    if (tgt_vocab_[i] == "<pad>") c.pad_id = static_cast<token_id>(i);
  for (const auto& [k, v] : j.items()) {
    if (!used.count(k)) {
      throw config_error(cfile + ": key '" + detail::text_excerpt(k) + "' (" + detail::json_excerpt(v) + ") is not supported");
    }
  }
}

// TransformerDecoderSpec (revision 8), as ctranslate2's TransformersConverter writes Llama and GPT-2:
// attributes decoder/{num_heads, pre_norm, activation, scale_embeddings, alibi*, ...} and per layer
// self_attention/{num_heads_kv, rotary_dim, rotary_interleave, rotary_base}; config.json's
// bos/eos/unk tokens, layer_norm_epsilon, multi_query_attention, quantization_*.
inline void ct2_directory::parse_decoder_only(const nlohmann::json& j, const std::string& cfile) {
  std::set<std::string> used;
  auto key = [&](const std::string& k) -> const nlohmann::json* {
    used.insert(k);
    const auto it = j.find(k);
    return it == j.end() ? nullptr : &*it;
  };
  auto bad = [&](const std::string& k, const std::string& expected) {
    const auto it = j.find(k);
    return config_error(cfile + ": " + k + ": " + (it == j.end() ? std::string("missing") : detail::json_excerpt(*it)) +
                        ", expected " + expected);
  };
  auto id_of = [&](const std::string& k) -> std::optional<token_id> {
    const nlohmann::json* v = key(k);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_string()) throw bad(k, "a token or null");
    const std::string tok = v->get<std::string>();
    for (std::size_t i = 0; i < tgt_vocab_.size(); ++i)
      if (tgt_vocab_[i] == tok) return static_cast<token_id>(i);
    throw config_error(cfile + ": " + k + ": '" + detail::text_excerpt(tok) + "' is not in the vocabulary");
  };
  auto require = [&](const std::string& name) {
    const auto x = attribute(name);
    if (!x) throw format_error(var_where(name) + " is missing");
    return *x;
  };
  auto refuse = [&](const std::string& name, double got, const std::string& expected) {
    return config_error(var_where(name) + ": " + std::to_string(got) + ", expected " + expected);
  };
  auto must_be = [&](const std::string& name, double expected, const char* feature) {
    const auto x = attribute(name);
    if (x && *x != expected) throw refuse(name, *x, std::to_string(expected) + " (" + feature + " is not supported)");
  };
  auto has = [&](const std::string& name) { return bin_.find(name) != nullptr; };

  model_config& c = config_;
  c.architecture = "decoder-only";
  c.n_encoder_layers = 0;
  c.encoder_final_norm = false;
  c.embedding_norm = false;
  c.share_embeddings = false;
  c.src_vocab_size = c.tgt_vocab_size = vocab_rows_;
  c.n_heads = static_cast<index_t>(require("decoder/num_heads"));
  if (c.n_heads < 1 || d_ % c.n_heads != 0) {
    throw refuse("decoder/num_heads", double(c.n_heads), "a positive divisor of d_model " + std::to_string(d_));
  }
  const index_t dh = d_ / c.n_heads;
  if (require("decoder/pre_norm") != 1) throw refuse("decoder/pre_norm", 0, "1 (decoder-only models are pre-norm)");
  c.norm_first = true;
  const double act = require("decoder/activation");
  switch (static_cast<int>(act)) {
    case 0: c.activation_kind = activation::relu; break;
    case 1: c.activation_kind = activation::gelu_tanh; break;
    case 2: c.activation_kind = activation::silu; break;
    case 3: c.activation_kind = activation::gelu; break;
    default: throw refuse("decoder/activation", act, "0 (relu), 1 (gelu tanh), 2 (swish) or 3 (gelu)");
  }
  {  // a flag (int8) in this spec: 0 = no scaling; a float multiplier of 1 means the same
    const ct2_variable* v = bin_.find("decoder/scale_embeddings");
    const auto s = attribute("decoder/scale_embeddings");
    if (s && !((v->dtype == 1 && *s == 0) || (v->dtype == 0 && *s == 1))) {
      throw refuse("decoder/scale_embeddings", *s, "0 (scaled embeddings are not supported for decoder-only models)");
    }
    c.scale_embedding = false;
  }
  must_be("decoder/alibi", 0, "ALiBi");
  must_be("decoder/alibi_use_positive_positions", 0, "ALiBi");
  must_be("decoder/scale_alibi", 0, "ALiBi");
  must_be("decoder/start_from_zero_embedding", 0, "a zero start embedding");
  must_be("decoder/parallel_residual", 0, "parallel residual");
  must_be("decoder/shared_layer_norm", 0, "a shared layer norm");
  attribute("decoder/alignment_heads");  // CTranslate2's attention alignments only: no effect on the computation
  attribute("decoder/alignment_layer");

  index_t layers = 0;
  while (has("decoder/layer_" + std::to_string(layers) + "/self_attention/linear_0/weight")) ++layers;
  if (layers == 0) throw format_error(var_where("decoder/layer_0/self_attention/linear_0/weight") + " is missing");
  c.n_decoder_layers = layers;

  // Per-layer attention attributes: one value for every layer.
  auto per_layer = [&](const std::string& attr) -> std::optional<double> {
    std::optional<double> first;
    for (index_t i = 0; i < layers; ++i) {
      const std::string name = "decoder/layer_" + std::to_string(i) + "/self_attention/" + attr;
      const auto x = attribute(name);
      if (i == 0) first = x;
      else if (x != first) {
        throw config_error(var_where(name) + ": " + (x ? std::to_string(*x) : std::string("absent")) +
                           ", expected the value of layer 0 (" + (first ? std::to_string(*first) : std::string("absent")) + ")");
      }
    }
    return first;
  };
  const auto kv = per_layer("num_heads_kv");
  if (kv) {
    if (*kv < 1 || static_cast<index_t>(*kv) > c.n_heads || c.n_heads % static_cast<index_t>(*kv) != 0) {
      throw refuse("decoder/layer_0/self_attention/num_heads_kv", *kv, "a divisor of num_heads " + std::to_string(c.n_heads));
    }
    c.n_kv_heads = static_cast<index_t>(*kv) == c.n_heads ? 0 : static_cast<index_t>(*kv);
  }
  const auto rdim = per_layer("rotary_dim");
  const auto rinter = per_layer("rotary_interleave");
  const auto rbase = per_layer("rotary_base");
  for (const char* attr : {"rotary_scaling_type", "rotary_scaling_factor", "sliding_window", "queries_scale",
                           "rotary_low_freq_factor", "rotary_high_freq_factor", "original_max_position_embeddings",
                           "max_position_embeddings"}) {
    const std::string name = "decoder/layer_0/self_attention/" + std::string(attr);
    if (const auto x = attribute(name)) throw refuse(name, *x, std::string("absent (") + attr + " is not supported)");
  }
  const bool learned = has("decoder/position_encodings/encodings");
  if (rdim) {
    if (learned) {
      throw config_error(var_where("decoder/position_encodings/encodings") + ": present with rotary_dim, expected one or the other");
    }
    if (*rdim != 0 && static_cast<index_t>(*rdim) != dh) {
      throw refuse("decoder/layer_0/self_attention/rotary_dim", *rdim,
                   "0 or the head dimension " + std::to_string(dh) + " (partial rotary is not supported)");
    }
    // CTranslate2 rotates pairs (2i, 2i + 1) when interleaved: the layout its Llama converter
    // keeps only with rotary_interleave false (q/k rows as transformers' rotate-half).
    if (rinter && *rinter != 0) {
      throw refuse("decoder/layer_0/self_attention/rotary_interleave", *rinter,
                   "0 (the rotate-half layout; interleaved rotary is not supported)");
    }
    c.positional = positional_encoding::rotary;
    c.rope_theta = rbase ? *rbase : 10000.0;
    c.rope_scaling_factor = 1.0;
    c.max_positions = 4096;  // CTranslate2 stores no limit: eigenformer's rotary table holds 4096 positions
  } else if (learned) {
    if (rinter || rbase) {
      throw config_error(var_where("decoder/layer_0/self_attention/rotary_base") + ": present without rotary_dim");
    }
    const ct2_variable* pe = bin_.find("decoder/position_encodings/encodings");
    if (pe->dims.size() != 2 || pe->dims[0] < 1 || pe->dims[1] != d_) {
      throw shape_error(var_where("decoder/position_encodings/encodings") + ": expected [positions, " + std::to_string(d_) + "]");
    }
    c.positional = positional_encoding::learned;  // GPT-2's wpe: row = position from 0
    c.position_offset = 0;
    c.max_positions = static_cast<index_t>(pe->dims[0]);
  } else {
    throw config_error(var_where("decoder/position_encodings/encodings") +
                       ": missing and no rotary_dim (CTranslate2's built-in sinusoidal positions are not supported yet)");
  }
  const index_t kvd = c.kv_heads() * dh;
  {
    const ct2_variable* qkv = bin_.find("decoder/layer_0/self_attention/linear_0/weight");
    if (qkv->dims.size() != 2 || qkv->dims[0] != d_ + 2 * kvd) {
      throw shape_error(var_where(qkv->name) + ": expected [" + std::to_string(d_ + 2 * kvd) + ", " + std::to_string(d_) +
                        "] (q rows, then k and v rows of " + std::to_string(c.kv_heads()) + " key/value head(s))");
    }
  }
  // Normalisation: LayerNorm (gamma, beta) or RMSNorm (gamma only), told by the final norm.
  if (!has("decoder/layer_norm/gamma")) throw format_error(var_where("decoder/layer_norm/gamma") + " is missing");
  c.decoder_final_norm = true;
  c.norm = has("decoder/layer_norm/beta") ? normalization::layer_norm : normalization::rms_norm;
  // Attention biases: on every projection, or on q/k/v only (Qwen2), or none.
  const bool qkv_bias = has("decoder/layer_0/self_attention/linear_0/bias");
  const bool out_bias = has("decoder/layer_0/self_attention/linear_1/bias");
  if (out_bias && !qkv_bias) {
    throw config_error(var_where("decoder/layer_0/self_attention/linear_1/bias") + ": an output bias without q/k/v biases is not supported");
  }
  c.attn_bias = out_bias ? attention_bias::all : qkv_bias ? attention_bias::qkv : attention_bias::none;
  // Feed-forward: gated (linear_0 = gate, activated; linear_0_noact = up; linear_1 = down) or dense.
  {
    const ct2_variable* ff = bin_.find("decoder/layer_0/ffn/linear_0/weight");
    if (!ff || ff->dims.size() != 2) throw format_error(var_where("decoder/layer_0/ffn/linear_0/weight") + ": missing or not [d_ff, d_model]");
    c.d_ff = static_cast<index_t>(ff->dims[0]);
  }
  if (has("decoder/layer_0/ffn/linear_0_noact/weight")) {
    if (c.activation_kind != activation::silu) {
      throw refuse("decoder/activation", act, "2 (swish) with a gated feed-forward (only SwiGLU is supported)");
    }
    c.ff = feed_forward_kind::gated;
  } else {
    c.ff = feed_forward_kind::dense;
  }
  c.tie_output = bin_.alias_target("decoder/projection/weight") == "decoder/embeddings/weight";

  // config.json
  if (const auto u = id_of("unk_token"); !u) throw bad("unk_token", "a token");
  const auto eos = id_of("eos_token");
  if (!eos) throw bad("eos_token", "a token");
  c.eos_id = *eos;
  c.bos_id = id_of("bos_token").value_or(*eos);  // not used: the prompt starts as the caller says
  c.pad_id = *eos;
  if (const nlohmann::json* e = key("layer_norm_epsilon"); e && !e->is_null()) {
    if (!e->is_number() || !(e->get<double>() > 0)) throw bad("layer_norm_epsilon", "a positive number or null");
    c.layer_norm_eps = e->get<double>();
  } else if (c.norm == normalization::layer_norm) {
    c.layer_norm_eps = 1e-5;  // CTranslate2's LayerNorm default (GPT-2's conversion writes null)
  } else {
    throw bad("layer_norm_epsilon", "a number for an RMSNorm model (no fixture proves CTranslate2's default)");
  }
  // Written true whenever num_heads_kv differs from num_heads or is absent (GPT-2); num_heads_kv and
  // the shape of linear_0 (checked above) say what is computed.
  if (const nlohmann::json* m = key("multi_query_attention"); m && !m->is_boolean()) throw bad("multi_query_attention", "true or false");
  if (const nlohmann::json* q = key("quantization_type"); q && !(q->is_number_integer() && q->get<int>() == 0)) {
    throw bad("quantization_type", "0 (AWQ and other quantisation types are not supported)");
  }
  for (const char* k : {"quantization_bits", "quantization_group_size"}) {
    if (const nlohmann::json* q = key(k); q && !q->is_null()) throw bad(k, "null (AWQ quantisation is not supported)");
  }
  for (const auto& [k, v] : j.items()) {
    if (!used.count(k)) {
      throw config_error(cfile + ": key '" + detail::text_excerpt(k) + "' (" + detail::json_excerpt(v) + ") is not supported");
    }
  }
}

template <class Scalar>
tensor<Scalar> ct2_directory::read_variable(const std::string& name, const std::vector<index_t>& dims,
                                            std::set<std::string>& unused) const {
  const ct2_variable* v = bin_.find(name);
  if (!v) throw format_error(var_where(name) + " is missing");
  std::vector<index_t> got(v->dims.begin(), v->dims.end());
  check_shape(var_where(name), std::span<const index_t>(got), std::span<const index_t>(dims));
  unused.erase(name);
  unused.erase(v->name);
  tensor<Scalar> t{tensor_shape(std::span<const index_t>(dims))};
  const std::vector<std::byte> b = bin_.bytes(*v);
  const std::size_t n = static_cast<std::size_t>(t.size());
  if (v->dtype == 1 || v->dtype == 2) {
    // Quantised: value = q / scale (the converter stored round(w * scale)); one scale per row, or one.
    const std::string sname = v->name + "_scale";
    const ct2_variable* s = bin_.find(sname);
    if (!s) throw format_error(var_where(v->name) + ": " + ct2_model_file::dtype_name(v->dtype) + " without " + sname);
    const std::size_t rows = dims.empty() ? 1 : static_cast<std::size_t>(dims[0]);
    const std::size_t scales = s->dims.empty() ? 1 : static_cast<std::size_t>(s->dims[0]);
    if (s->dims.size() > 1 || (scales != 1 && scales != rows) || (s->dtype != 0 && s->dtype != 4 && s->dtype != 5)) {
      throw shape_error(var_where(sname) + ": expected a float scalar or one float per row (" + std::to_string(rows) + ")");
    }
    unused.erase(sname);
    const std::vector<std::byte> sb = bin_.bytes(*s);
    const std::size_t per_row = rows ? n / rows : 0;
    for (std::size_t r = 0; r < rows; ++r) {
      const double scale = bin_.element(*s, sb, scales == 1 ? 0 : r);
      if (!std::isfinite(scale) || scale == 0) {
        throw format_error(var_where(sname) + ": element " + std::to_string(r) + " is " + std::to_string(scale) +
                           ", expected a finite non-zero scale");
      }
      for (std::size_t i = 0; i < per_row; ++i)
        t.data()[r * per_row + i] = static_cast<Scalar>(bin_.element(*v, b, r * per_row + i) / scale);
    }
  } else if (v->dtype == 3) {
    throw format_error(var_where(v->name) + ": dtype int32, expected float32, float16, bfloat16, int8 or int16 weights");
  } else {
    for (std::size_t i = 0; i < n; ++i) t.data()[i] = static_cast<Scalar>(bin_.element(*v, b, i));
  }
  const std::ptrdiff_t bad = detail::first_non_finite(std::span<const Scalar>(t.data(), n));
  if (bad >= 0) {
    throw format_error(var_where(name) + ": " + detail::non_finite_name(t.data()[bad]) + " at element " + std::to_string(bad));
  }
  return t;
}

template <class Scalar>
weight_map<Scalar> ct2_directory::read_weights() const {
  if (decoder_only_spec()) return read_decoder_only_weights<Scalar>();
  const model_config& c = config_;
  const index_t d = d_;
  std::set<std::string> unused;
  for (const auto& [name, v] : bin_.variables()) unused.insert(name);
  for (const auto& [alias, target] : bin_.aliases()) unused.insert(alias);
  // Attributes parse() consumed.
  for (const auto& a : consumed_) unused.erase(a);
  for (const char* s : {"num_heads", "pre_norm", "activation", "scale_embeddings"}) {
    unused.erase(std::string("encoder/") + s);
    unused.erase(std::string("decoder/") + s);
  }
  for (const char* s : {"decoder/alibi", "decoder/alibi_use_positive_positions", "decoder/scale_alibi",
                        "encoder/multi_query_attention", "encoder/embeddings_merge", "decoder/alignment_heads",
                        "decoder/alignment_layer", "decoder/start_from_zero_embedding"})
    unused.erase(s);

  auto read = [&](const std::string& name, std::vector<index_t> dims) { return read_variable<Scalar>(name, dims, unused); };
  auto has = [&](const std::string& name) { return bin_.find(name) != nullptr; };
  weight_map<Scalar> w(bin_.path().string());

  // Embeddings and output projection.
  {
    tensor<Scalar> table = read("decoder/embeddings/weight", {vocab_rows_, d});
    tensor<Scalar> bias;
    if (has("decoder/projection/bias")) bias = read("decoder/projection/bias", {vocab_rows_});
    if (zero_start_) {  // one more row, zeros: the start token; its logit is -1e9
      tensor<Scalar> grown({vocab_rows_ + 1, d});
      std::copy_n(table.data(), table.size(), grown.data());
      table = std::move(grown);
      tensor<Scalar> b({vocab_rows_ + 1});
      if (bias.size()) std::copy_n(bias.data(), vocab_rows_, b.data());
      b.data()[vocab_rows_] = Scalar(-1e9);
      bias = std::move(b);
    }
    if (!c.tie_output) {
      tensor<Scalar> proj = read("decoder/projection/weight", {vocab_rows_, d});
      if (zero_start_) {
        tensor<Scalar> grown({vocab_rows_ + 1, d});
        std::copy_n(proj.data(), proj.size(), grown.data());
        proj = std::move(grown);
      }
      w.insert("generator.weight", std::move(proj));
    } else {
      unused.erase("decoder/projection/weight");
    }
    if (bias.size()) w.insert("generator.bias", std::move(bias));
    w.insert("tgt_embed.weight", std::move(table));
    if (c.share_embeddings) unused.erase("encoder/embeddings_0/weight");
    else w.insert("src_embed.weight", read("encoder/embeddings_0/weight", {c.src_vocab_size, d}));
  }
  if (c.positional == positional_encoding::learned) {
    w.insert("src_pos.weight", read("encoder/position_encodings/encodings", {c.max_positions, d}));
    w.insert("tgt_pos.weight", read("decoder/position_encodings/encodings", {c.max_positions, d}));
  }
  auto norm = [&](const std::string& ct2, const std::string& ours) {
    w.insert(ours + ".weight", read(ct2 + "/gamma", {d}));
    w.insert(ours + ".bias", read(ct2 + "/beta", {d}));
  };
  // A bias CTranslate2 may omit (LinearSpec.bias is optional): zeros compute the same.
  auto bias_of = [&](const std::string& ct2, index_t out) {
    return has(ct2 + "/bias") ? read(ct2 + "/bias", {out}) : tensor<Scalar>({out});
  };
  auto linear = [&](const std::string& ct2, const std::string& ours, index_t out, index_t in) {
    w.insert(ours + ".weight", read(ct2 + "/weight", {out, in}));
    w.insert(ours + ".bias", bias_of(ct2, out));
  };
  if (c.embedding_norm) {
    norm("encoder/layernorm_embedding", "transformer.encoder.embed_norm");
    norm("decoder/layernorm_embedding", "transformer.decoder.embed_norm");
  }
  for (index_t i = 0; i < c.n_encoder_layers; ++i) {
    const std::string p = "encoder/layer_" + std::to_string(i), o = "transformer.encoder.layers." + std::to_string(i);
    w.insert(o + ".self_attn.in_proj_weight", read(p + "/self_attention/linear_0/weight", {3 * d, d}));  // rows q, k, v
    w.insert(o + ".self_attn.in_proj_bias", bias_of(p + "/self_attention/linear_0", 3 * d));
    linear(p + "/self_attention/linear_1", o + ".self_attn.out_proj", d, d);
    norm(p + "/self_attention/layer_norm", o + ".norm1");
    linear(p + "/ffn/linear_0", o + ".linear1", c.d_ff, d);
    linear(p + "/ffn/linear_1", o + ".linear2", d, c.d_ff);
    norm(p + "/ffn/layer_norm", o + ".norm2");
  }
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    const std::string p = "decoder/layer_" + std::to_string(i), o = "transformer.decoder.layers." + std::to_string(i);
    w.insert(o + ".self_attn.in_proj_weight", read(p + "/self_attention/linear_0/weight", {3 * d, d}));
    w.insert(o + ".self_attn.in_proj_bias", bias_of(p + "/self_attention/linear_0", 3 * d));
    linear(p + "/self_attention/linear_1", o + ".self_attn.out_proj", d, d);
    norm(p + "/self_attention/layer_norm", o + ".norm1");
    {  // cross-attention: q [d, d] then k, v fused [2d, d] -> rows q, k, v
      tensor<Scalar> in_w({3 * d, d}), in_b({3 * d});
      const auto qw = read(p + "/attention/linear_0/weight", {d, d});
      const auto qb = bias_of(p + "/attention/linear_0", d);
      const auto kvw = read(p + "/attention/linear_1/weight", {2 * d, d});
      const auto kvb = bias_of(p + "/attention/linear_1", 2 * d);
      std::copy_n(qw.data(), d * d, in_w.data());
      std::copy_n(kvw.data(), 2 * d * d, in_w.data() + d * d);
      std::copy_n(qb.data(), d, in_b.data());
      std::copy_n(kvb.data(), 2 * d, in_b.data() + d);
      w.insert(o + ".multihead_attn.in_proj_weight", std::move(in_w));
      w.insert(o + ".multihead_attn.in_proj_bias", std::move(in_b));
    }
    linear(p + "/attention/linear_2", o + ".multihead_attn.out_proj", d, d);
    norm(p + "/attention/layer_norm", o + ".norm2");
    linear(p + "/ffn/linear_0", o + ".linear1", c.d_ff, d);
    linear(p + "/ffn/linear_1", o + ".linear2", d, c.d_ff);
    norm(p + "/ffn/layer_norm", o + ".norm3");
  }
  if (c.encoder_final_norm) norm("encoder/layer_norm", "transformer.encoder.norm");
  if (c.decoder_final_norm) norm("decoder/layer_norm", "transformer.decoder.norm");
  if (!unused.empty()) {
    throw format_error(var_where(*unused.begin()) + " is not used by an encoder-decoder TransformerSpec model (" +
                       std::to_string(unused.size()) + " variable(s) not used)");
  }
  return w;
}

// Decoder-only mapping (ours as hf_directory's Llama and GPT-2 mappings):
//   decoder/embeddings/weight -> tgt_embed.weight; decoder/projection/{weight,bias} -> generator.*
//     (an alias of the embeddings: tied); decoder/position_encodings/encodings -> tgt_pos.weight
//   layer_i/self_attention/linear_0 [d + 2 kv d_head, d]: rows q, k, v -> self_attn.in_proj_*
//   layer_i/self_attention/linear_1 -> self_attn.out_proj; .../layer_norm -> norm1
//   layer_i/ffn/linear_0 (gate), linear_0_noact (up), linear_1 (down) -> gate_proj, up_proj, down_proj
//     (gated) or linear_0, linear_1 -> linear1, linear2 (dense); ffn/layer_norm -> norm3
//   decoder/layer_norm -> transformer.decoder.norm (gamma only: RMSNorm)
template <class Scalar>
weight_map<Scalar> ct2_directory::read_decoder_only_weights() const {
  const model_config& c = config_;
  const index_t d = d_, rows = d + 2 * c.kv_heads() * c.d_head();
  std::set<std::string> unused;
  for (const auto& [name, v] : bin_.variables()) unused.insert(name);
  for (const auto& [alias, target] : bin_.aliases()) unused.insert(alias);
  for (const auto& a : consumed_) unused.erase(a);
  auto read = [&](const std::string& name, std::vector<index_t> dims) { return read_variable<Scalar>(name, dims, unused); };
  auto has = [&](const std::string& name) { return bin_.find(name) != nullptr; };
  weight_map<Scalar> w(bin_.path().string());
  w.insert("tgt_embed.weight", read("decoder/embeddings/weight", {vocab_rows_, d}));
  if (c.tie_output) unused.erase("decoder/projection/weight");
  else w.insert("generator.weight", read("decoder/projection/weight", {vocab_rows_, d}));
  if (has("decoder/projection/bias")) w.insert("generator.bias", read("decoder/projection/bias", {vocab_rows_}));
  if (c.positional == positional_encoding::learned) {
    w.insert("tgt_pos.weight", read("decoder/position_encodings/encodings", {c.max_positions, d}));
  }
  const bool ln = c.norm == normalization::layer_norm;
  auto norm = [&](const std::string& ct2, const std::string& ours) {
    w.insert(ours + ".weight", read(ct2 + "/gamma", {d}));
    if (ln) w.insert(ours + ".bias", read(ct2 + "/beta", {d}));  // RMSNorm: a beta is left unused, refused below
  };
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    const std::string p = "decoder/layer_" + std::to_string(i), o = "transformer.decoder.layers." + std::to_string(i);
    w.insert(o + ".self_attn.in_proj_weight", read(p + "/self_attention/linear_0/weight", {rows, d}));  // rows q, k, v
    if (c.attn_bias != attention_bias::none) {
      w.insert(o + ".self_attn.in_proj_bias", read(p + "/self_attention/linear_0/bias", {rows}));
    }
    w.insert(o + ".self_attn.out_proj.weight", read(p + "/self_attention/linear_1/weight", {d, d}));
    if (c.attn_bias == attention_bias::all) w.insert(o + ".self_attn.out_proj.bias", read(p + "/self_attention/linear_1/bias", {d}));
    norm(p + "/self_attention/layer_norm", o + ".norm1");
    if (c.ff == feed_forward_kind::gated) {  // no biases: any is left unused and refused below
      w.insert(o + ".gate_proj.weight", read(p + "/ffn/linear_0/weight", {c.d_ff, d}));
      w.insert(o + ".up_proj.weight", read(p + "/ffn/linear_0_noact/weight", {c.d_ff, d}));
      w.insert(o + ".down_proj.weight", read(p + "/ffn/linear_1/weight", {d, c.d_ff}));
    } else {
      // A bias CTranslate2 may omit (LinearSpec.bias is optional): zeros compute the same.
      auto bias_of = [&](const std::string& ct2, index_t out) {
        return has(ct2 + "/bias") ? read(ct2 + "/bias", {out}) : tensor<Scalar>({out});
      };
      w.insert(o + ".linear1.weight", read(p + "/ffn/linear_0/weight", {c.d_ff, d}));
      w.insert(o + ".linear1.bias", bias_of(p + "/ffn/linear_0", c.d_ff));
      w.insert(o + ".linear2.weight", read(p + "/ffn/linear_1/weight", {d, c.d_ff}));
      w.insert(o + ".linear2.bias", bias_of(p + "/ffn/linear_1", d));
    }
    norm(p + "/ffn/layer_norm", o + ".norm3");
  }
  norm("decoder/layer_norm", "transformer.decoder.norm");
  if (!unused.empty()) {
    throw format_error(var_where(*unused.begin()) + " is not used by a decoder-only TransformerDecoderSpec model (" +
                       std::to_string(unused.size()) + " variable(s) not used)");
  }
  return w;
}

}  // namespace eigenformer::io
