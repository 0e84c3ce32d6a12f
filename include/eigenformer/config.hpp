// eigenformer/config.hpp: model_config and moe_config, the `config` object of the model file
// (docs/model-format.md), parsed strictly from JSON and validated once, at load time.
//
// Strict means: a key of the wrong JSON type, an unknown key (a misspelt "norm_frist" would
// otherwise silently run a different model) or a value out of range is a config_error that names
// the key: "config.n_heads: 3 does not divide d_model 64". Values are quoted in short excerpts, and
// JSON text nested deeper than max_json_depth levels is refused before anything walks it.
#pragma once

#include <nlohmann/json.hpp>
#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "detail/file.hpp"
#include "error.hpp"
#include "types.hpp"

namespace eigenformer {

/// The feed-forward activation: relu; gelu (exact, erf); gelu_tanh (GELU's tanh approximation,
/// transformers' "gelu_new"); silu (x sigmoid(x), transformers' "swish"/"silu").
enum class activation { relu, gelu, gelu_tanh, silu };
/// rotary: no position vector is added to the embeddings; q and k are rotated (rotary.hpp).
enum class positional_encoding { sinusoidal, learned, rotary };
/// The normalisation of every norm of the model: nn.LayerNorm (weight and bias) or RMSNorm (weight only).
enum class normalization { layer_norm, rms_norm };
/// The feed-forward block: dense (linear2(act(linear1 x))) or gated (SwiGLU: down(silu(gate x) * up x), no biases).
/// With `moe`, the kind of every expert of the MoE layers (gated: Mixtral's experts).
enum class feed_forward_kind { dense, gated };
/// Which attention projections have biases: all (nn.MultiheadAttention), q/k/v only (Qwen2), none (Llama).
enum class attention_bias { all, qkv, none };
enum class sinusoidal_variant { paper, marian, tensor2tensor };
enum class gate { softmax, top_k, noisy_top_k };

std::string_view to_string(activation a);
std::string_view to_string(positional_encoding p);
std::string_view to_string(sinusoidal_variant v);
std::string_view to_string(gate g);
std::string_view to_string(normalization n);
std::string_view to_string(feed_forward_kind f);
std::string_view to_string(attention_bias b);

/// The `moe` object: which layers replace their feed-forward block by a mixture of experts.
struct moe_config {
  index_t n_experts = 0;
  index_t top_k = 1;  // experts computed per token by the top_k and noisy_top_k gates
  gate gate_kind = gate::top_k;
  std::vector<index_t> encoder_layers;
  std::vector<index_t> decoder_layers;

  bool in_encoder(index_t layer) const { return contains(encoder_layers, layer); }
  bool in_decoder(index_t layer) const { return contains(decoder_layers, layer); }

 private:
  static bool contains(const std::vector<index_t>& v, index_t x) {
    for (index_t e : v)
      if (e == x) return true;
    return false;
  }
};

/// Every key of the model file's config, with the spec's defaults.
struct model_config {
  std::string architecture = "encoder-decoder";
  index_t d_model = 0;
  index_t n_heads = 0;
  index_t d_ff = 0;
  index_t n_encoder_layers = 0;
  index_t n_decoder_layers = 0;
  index_t src_vocab_size = 0;
  index_t tgt_vocab_size = 0;
  activation activation_kind = activation::relu;
  bool norm_first = false;
  double layer_norm_eps = 1e-5;
  positional_encoding positional = positional_encoding::sinusoidal;
  index_t max_positions = 1024;
  sinusoidal_variant sinusoidal = sinusoidal_variant::paper;
  index_t position_offset = 0;
  bool scale_embedding = true;
  /// A layer norm of each side's embeddings (token * scale + position) before the first layer:
  /// BART's and mBART's layernorm_embedding (tensors transformer.{encoder,decoder}.embed_norm.*).
  bool embedding_norm = false;
  bool encoder_final_norm = true;
  bool decoder_final_norm = true;
  bool share_embeddings = false;
  bool tie_output = false;
  token_id bos_id = 0;
  token_id eos_id = 0;
  token_id pad_id = 0;
  /// A first target token that generate() forces unless given a prefix (a Hugging Face config's
  /// forced_bos_token_id: mBART's or M2M100's target language, BART's bos). None by default.
  std::optional<token_id> forced_bos_id;
  std::optional<moe_config> moe;
  // Decoder-only language models (Llama family). Every default is the encoder-decoder behaviour.
  /// Key/value heads of self-attention (grouped-query attention): query head h reads key/value
  /// head h / (n_heads / n_kv_heads). 0 = n_heads (multi-head attention).
  index_t n_kv_heads = 0;
  normalization norm = normalization::layer_norm;
  feed_forward_kind ff = feed_forward_kind::dense;
  attention_bias attn_bias = attention_bias::all;
  /// positional_encoding rotary: the base of its frequencies and a linear scaling factor (positions / factor).
  double rope_theta = 10000.0;
  double rope_scaling_factor = 1.0;

  bool decoder_only() const noexcept { return architecture == "decoder-only"; }
  index_t kv_heads() const noexcept { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  index_t d_head() const { return n_heads > 0 ? d_model / n_heads : 0; }
  /// The longest sequence a model accepts: max_positions, less the offset into learned tables.
  index_t max_sequence_length() const {
    return positional == positional_encoding::learned ? max_positions - position_offset : max_positions;
  }

  /// Throws config_error naming the first key out of range.
  void validate() const;

  /// Parses and validates the config object. `where` prefixes messages (e.g. the file path).
  static model_config from_json(const nlohmann::json& j, std::string_view where = "config");
  /// Deepest JSON nesting parse() accepts (a valid config nests 3 levels: config, moe, a layer list).
  static constexpr int max_json_depth = 64;
  /// Parses the JSON text of the file's `config` metadata entry.
  static model_config parse(std::string_view json_text, std::string_view where = "config");
  /// The config as the file stores it (every key, defaults included).
  nlohmann::json to_json() const;
};

// ---------------------------------------------------------------------------------------------
// Implementation

inline std::string_view to_string(activation a) {
  switch (a) {
    case activation::relu: return "relu";
    case activation::gelu: return "gelu";
    case activation::gelu_tanh: return "gelu_tanh";
    case activation::silu: return "silu";
  }
  return "?";
}
inline std::string_view to_string(positional_encoding p) {
  return p == positional_encoding::sinusoidal ? "sinusoidal" : p == positional_encoding::learned ? "learned" : "rotary";
}
inline std::string_view to_string(normalization n) { return n == normalization::layer_norm ? "layer_norm" : "rms_norm"; }
inline std::string_view to_string(feed_forward_kind f) { return f == feed_forward_kind::dense ? "dense" : "gated"; }
inline std::string_view to_string(attention_bias b) {
  return b == attention_bias::all ? "all" : b == attention_bias::qkv ? "qkv" : "none";
}
inline std::string_view to_string(sinusoidal_variant v) {
  switch (v) {
    case sinusoidal_variant::paper: return "paper";
    case sinusoidal_variant::marian: return "marian";
    case sinusoidal_variant::tensor2tensor: return "tensor2tensor";
  }
  return "?";
}
inline std::string_view to_string(gate g) {
  switch (g) {
    case gate::softmax: return "softmax";
    case gate::top_k: return "top_k";
    case gate::noisy_top_k: return "noisy_top_k";
  }
  return "?";
}

namespace detail {

/// Reads typed keys of one JSON object, remembering which were seen so unknown ones are reported.
class config_reader {
 public:
  config_reader(const nlohmann::json& j, std::string prefix) : j_(j), prefix_(std::move(prefix)) {
    if (!j_.is_object()) throw config_error(prefix_ + ": expected a JSON object, got " + j_.type_name());
  }

  std::string key(std::string_view k) const { return prefix_ + "." + text_excerpt(k); }

  /// A value for a message: short, and never walked recursively (from_json may get any JSON value).
  static std::string excerpt(const nlohmann::json& v) {
    if (v.is_string()) return detail::quote_text(text_excerpt(v.get_ref<const std::string&>(), 64));
    if (v.is_array()) return "an array of " + std::to_string(v.size()) + " element(s)";
    if (v.is_object()) return "an object of " + std::to_string(v.size()) + " key(s)";
    return v.dump();  // a number, true, false or null
  }

  const nlohmann::json* find(std::string_view k) {
    seen_.insert(std::string(k));
    auto it = j_.find(std::string(k));
    return it == j_.end() ? nullptr : &*it;
  }

  index_t integer(std::string_view k, std::optional<index_t> fallback = std::nullopt) {
    const nlohmann::json* v = find(k);
    if (!v) return required(k, fallback);
    if (!v->is_number_integer()) throw config_error(key(k) + ": expected an integer, got " + excerpt(*v));
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(INT32_MAX)) {
      throw config_error(key(k) + ": " + excerpt(*v) + " is too large");
    }
    const auto x = v->get<std::int64_t>();
    if (x < INT32_MIN || x > INT32_MAX) throw config_error(key(k) + ": " + excerpt(*v) + " is out of range");
    return static_cast<index_t>(x);
  }

  bool boolean(std::string_view k, bool fallback) {
    const nlohmann::json* v = find(k);
    if (!v) return fallback;
    if (!v->is_boolean()) throw config_error(key(k) + ": expected true or false, got " + excerpt(*v));
    return v->get<bool>();
  }

  double number(std::string_view k, double fallback) {
    const nlohmann::json* v = find(k);
    if (!v) return fallback;
    if (!v->is_number()) throw config_error(key(k) + ": expected a number, got " + excerpt(*v));
    return v->get<double>();
  }

  std::string string(std::string_view k, std::optional<std::string> fallback, std::initializer_list<std::string_view> allowed) {
    const nlohmann::json* v = find(k);
    if (!v) {
      if (!fallback) throw config_error(key(k) + ": missing (required)");
      return *fallback;
    }
    if (!v->is_string()) throw config_error(key(k) + ": expected a string, got " + excerpt(*v));
    auto s = v->get<std::string>();
    std::string options;
    for (auto a : allowed) {
      if (s == a) return s;
      options += (options.empty() ? "" : ", ") + std::string("'") + std::string(a) + "'";
    }
    throw config_error(key(k) + ": '" + text_excerpt(s) + "', expected one of " + options);
  }

  std::vector<index_t> integer_list(std::string_view k) {
    const nlohmann::json* v = find(k);
    std::vector<index_t> out;
    if (!v || v->is_null()) return out;
    if (!v->is_array()) throw config_error(key(k) + ": expected an array of integers, got " + excerpt(*v));
    for (const auto& e : *v) {
      if (!e.is_number_integer()) throw config_error(key(k) + ": expected integers, got " + excerpt(e));
      out.push_back(static_cast<index_t>(e.get<std::int64_t>()));
    }
    return out;
  }

  /// Throws on a key that no accessor asked for.
  void reject_unknown() const {
    for (const auto& [k, v] : j_.items()) {
      if (!seen_.count(k)) throw config_error(key(k) + ": unknown key");
    }
  }

 private:
  index_t required(std::string_view k, std::optional<index_t> fallback) const {
    if (!fallback) throw config_error(key(k) + ": missing (required)");
    return *fallback;
  }

  const nlohmann::json& j_;
  std::string prefix_;
  std::set<std::string> seen_;
};

inline void check_positive(const std::string& where, std::string_view k, index_t v) {
  if (v <= 0) throw config_error(where + "." + std::string(k) + ": " + std::to_string(v) + ", expected a positive integer");
}

inline void check_id(const std::string& where, std::string_view k, token_id id, index_t vocab) {
  if (id < 0 || id >= vocab) {
    throw config_error(where + "." + std::string(k) + ": " + std::to_string(id) + ", expected 0 to " +
                       std::to_string(vocab - 1) + " (tgt_vocab_size " + std::to_string(vocab) + ")");
  }
}

}  // namespace detail

inline void model_config::validate() const {
  const std::string w = "config";
  if (architecture != "encoder-decoder" && architecture != "decoder-only") {
    throw config_error(w + ".architecture: '" + detail::text_excerpt(architecture) +
                       "', expected 'encoder-decoder' or 'decoder-only'");
  }
  detail::check_positive(w, "d_model", d_model);
  detail::check_positive(w, "n_heads", n_heads);
  detail::check_positive(w, "d_ff", d_ff);
  detail::check_positive(w, "src_vocab_size", src_vocab_size);
  detail::check_positive(w, "tgt_vocab_size", tgt_vocab_size);
  detail::check_positive(w, "max_positions", max_positions);
  if (n_encoder_layers < 0) throw config_error(w + ".n_encoder_layers: " + std::to_string(n_encoder_layers) + ", expected >= 0");
  if (n_decoder_layers < 0) throw config_error(w + ".n_decoder_layers: " + std::to_string(n_decoder_layers) + ", expected >= 0");
  if (d_model % n_heads != 0) {
    throw config_error(w + ".n_heads: " + std::to_string(n_heads) + " does not divide d_model " + std::to_string(d_model));
  }
  if (!(layer_norm_eps > 0) || !std::isfinite(layer_norm_eps)) {
    throw config_error(w + ".layer_norm_eps: " + std::to_string(layer_norm_eps) + ", expected a positive number");
  }
  if (position_offset < 0) throw config_error(w + ".position_offset: " + std::to_string(position_offset) + ", expected >= 0");
  if (positional == positional_encoding::learned && position_offset >= max_positions) {
    throw config_error(w + ".position_offset: " + std::to_string(position_offset) + " leaves no row of the learned " +
                       "position tables (max_positions " + std::to_string(max_positions) + ")");
  }
  if (positional == positional_encoding::sinusoidal && sinusoidal != sinusoidal_variant::paper && d_model < 4) {
    throw config_error(w + ".sinusoidal_variant: '" + std::string(to_string(sinusoidal)) + "' needs d_model >= 4, got " +
                       std::to_string(d_model));
  }
  if (share_embeddings && src_vocab_size != tgt_vocab_size) {
    throw config_error(w + ".share_embeddings: src_vocab_size " + std::to_string(src_vocab_size) +
                       " differs from tgt_vocab_size " + std::to_string(tgt_vocab_size));
  }
  if (n_kv_heads < 0) throw config_error(w + ".n_kv_heads: " + std::to_string(n_kv_heads) + ", expected >= 0");
  if (n_kv_heads > 0 && n_heads % n_kv_heads != 0) {
    throw config_error(w + ".n_kv_heads: " + std::to_string(n_kv_heads) + " does not divide n_heads " + std::to_string(n_heads));
  }
  if (positional == positional_encoding::rotary) {
    if (d_head() % 2 != 0) {
      throw config_error(w + ".positional_encoding: 'rotary' needs an even head dimension, got d_model / n_heads = " +
                         std::to_string(d_head()));
    }
    if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
      throw config_error(w + ".rope_theta: " + std::to_string(rope_theta) + ", expected a positive number");
    }
    if (!(rope_scaling_factor > 0) || !std::isfinite(rope_scaling_factor)) {
      throw config_error(w + ".rope_scaling_factor: " + std::to_string(rope_scaling_factor) + ", expected a positive number");
    }
    if (max_positions > (index_t(1) << 24)) {
      throw config_error(w + ".max_positions: " + std::to_string(max_positions) + ", expected at most 16777216 with rotary positions");
    }
  }
  if (decoder_only()) {
    if (n_encoder_layers != 0) {
      throw config_error(w + ".n_encoder_layers: " + std::to_string(n_encoder_layers) + ", expected 0 (decoder-only)");
    }
    if (encoder_final_norm) throw config_error(w + ".encoder_final_norm: true, expected false (decoder-only)");
    if (!norm_first) throw config_error(w + ".norm_first: false, expected true (decoder-only models are pre-norm)");
    if (embedding_norm) throw config_error(w + ".embedding_norm: true, expected false (decoder-only)");
    if (src_vocab_size != tgt_vocab_size) {
      throw config_error(w + ".src_vocab_size: " + std::to_string(src_vocab_size) + ", expected tgt_vocab_size " +
                         std::to_string(tgt_vocab_size) + " (decoder-only: the prompt is in the output vocabulary)");
    }
    if (forced_bos_id) throw config_error(w + ".forced_bos_id: set, expected none (decoder-only)");
    if (moe && !moe->encoder_layers.empty()) throw config_error(w + ".moe.encoder_layers: expected none (decoder-only)");
  } else {
    if (positional == positional_encoding::rotary) {
      throw config_error(w + ".positional_encoding: 'rotary', expected 'sinusoidal' or 'learned' (encoder-decoder)");
    }
    if (n_kv_heads != 0 && n_kv_heads != n_heads) {
      throw config_error(w + ".n_kv_heads: " + std::to_string(n_kv_heads) + ", expected n_heads (encoder-decoder)");
    }
    if (norm != normalization::layer_norm) throw config_error(w + ".normalization: 'rms_norm', expected 'layer_norm' (encoder-decoder)");
    if (ff != feed_forward_kind::dense) throw config_error(w + ".feed_forward: 'gated', expected 'dense' (encoder-decoder)");
    if (attn_bias != attention_bias::all) {
      throw config_error(w + ".attention_bias: '" + std::string(to_string(attn_bias)) + "', expected 'all' (encoder-decoder)");
    }
  }
  // feed_forward 'gated' with 'moe': the experts of the MoE layers are gated (SwiGLU) blocks (Mixtral).
  detail::check_id(w, "bos_id", bos_id, tgt_vocab_size);
  detail::check_id(w, "eos_id", eos_id, tgt_vocab_size);
  detail::check_id(w, "pad_id", pad_id, tgt_vocab_size);
  if (forced_bos_id) detail::check_id(w, "forced_bos_id", *forced_bos_id, tgt_vocab_size);
  if (moe) {
    detail::check_positive(w, "moe.n_experts", moe->n_experts);
    if (moe->top_k < 1 || moe->top_k > moe->n_experts) {
      throw config_error(w + ".moe.top_k: " + std::to_string(moe->top_k) + ", expected 1 to n_experts " +
                         std::to_string(moe->n_experts));
    }
    auto check_layers = [&](const std::vector<index_t>& layers, index_t n, const char* k) {
      std::set<index_t> seen;
      for (index_t i : layers) {
        if (i < 0 || i >= n) {
          throw config_error(w + ".moe." + k + ": layer " + std::to_string(i) + ", expected 0 to " + std::to_string(n - 1));
        }
        if (!seen.insert(i).second) throw config_error(w + ".moe." + k + ": layer " + std::to_string(i) + " listed twice");
      }
    };
    check_layers(moe->encoder_layers, n_encoder_layers, "encoder_layers");
    check_layers(moe->decoder_layers, n_decoder_layers, "decoder_layers");
  }
}

inline model_config model_config::from_json(const nlohmann::json& j, std::string_view where) {
  const std::string w(where);
  detail::config_reader r(j, w);
  model_config c;
  c.architecture = r.string("architecture", std::nullopt, {"encoder-decoder", "decoder-only"});
  c.d_model = r.integer("d_model");
  c.n_heads = r.integer("n_heads");
  c.d_ff = r.integer("d_ff");
  c.n_encoder_layers = r.integer("n_encoder_layers");
  c.n_decoder_layers = r.integer("n_decoder_layers");
  c.src_vocab_size = r.integer("src_vocab_size");
  c.tgt_vocab_size = r.integer("tgt_vocab_size");
  const auto act = r.string("activation", "relu", {"relu", "gelu", "gelu_tanh", "silu"});
  c.activation_kind = act == "relu"        ? activation::relu
                      : act == "gelu"      ? activation::gelu
                      : act == "gelu_tanh" ? activation::gelu_tanh
                                           : activation::silu;
  c.norm_first = r.boolean("norm_first", false);
  c.layer_norm_eps = r.number("layer_norm_eps", 1e-5);
  const auto pos = r.string("positional_encoding", "sinusoidal", {"sinusoidal", "learned", "rotary"});
  c.positional = pos == "sinusoidal" ? positional_encoding::sinusoidal
                 : pos == "learned"  ? positional_encoding::learned
                                     : positional_encoding::rotary;
  c.max_positions = r.integer("max_positions", 1024);
  const auto variant = r.string("sinusoidal_variant", "paper", {"paper", "marian", "tensor2tensor"});
  c.sinusoidal = variant == "paper"    ? sinusoidal_variant::paper
                 : variant == "marian" ? sinusoidal_variant::marian
                                       : sinusoidal_variant::tensor2tensor;
  c.position_offset = r.integer("position_offset", 0);
  c.scale_embedding = r.boolean("scale_embedding", true);
  c.embedding_norm = r.boolean("embedding_norm", false);
  c.encoder_final_norm = r.boolean("encoder_final_norm", true);
  c.decoder_final_norm = r.boolean("decoder_final_norm", true);
  c.share_embeddings = r.boolean("share_embeddings", false);
  c.tie_output = r.boolean("tie_output", false);
  c.bos_id = static_cast<token_id>(r.integer("bos_id"));
  c.eos_id = static_cast<token_id>(r.integer("eos_id"));
  c.pad_id = static_cast<token_id>(r.integer("pad_id"));
  if (const nlohmann::json* f = r.find("forced_bos_id"); f && !f->is_null()) {
    c.forced_bos_id = static_cast<token_id>(r.integer("forced_bos_id"));
  }
  c.n_kv_heads = r.integer("n_kv_heads", 0);
  c.norm = r.string("normalization", "layer_norm", {"layer_norm", "rms_norm"}) == "layer_norm" ? normalization::layer_norm
                                                                                                : normalization::rms_norm;
  c.ff = r.string("feed_forward", "dense", {"dense", "gated"}) == "dense" ? feed_forward_kind::dense : feed_forward_kind::gated;
  const auto bias = r.string("attention_bias", "all", {"all", "qkv", "none"});
  c.attn_bias = bias == "all" ? attention_bias::all : bias == "qkv" ? attention_bias::qkv : attention_bias::none;
  c.rope_theta = r.number("rope_theta", 10000.0);
  c.rope_scaling_factor = r.number("rope_scaling_factor", 1.0);
  if (const nlohmann::json* m = r.find("moe"); m && !m->is_null()) {
    detail::config_reader mr(*m, w + ".moe");
    moe_config mc;
    mc.n_experts = mr.integer("n_experts");
    mc.top_k = mr.integer("top_k", 1);
    const auto g = mr.string("gate", std::nullopt, {"softmax", "top_k", "noisy_top_k"});
    mc.gate_kind = g == "softmax" ? gate::softmax : g == "top_k" ? gate::top_k : gate::noisy_top_k;
    mc.encoder_layers = mr.integer_list("encoder_layers");
    mc.decoder_layers = mr.integer_list("decoder_layers");
    mr.reject_unknown();
    c.moe = mc;
  }
  r.reject_unknown();
  try {
    c.validate();
  } catch (const config_error& e) {
    // validate() names keys as "config.<key>"; report them under `where`.
    std::string msg = e.what();
    if (w != "config" && msg.rfind("config", 0) == 0) msg = w + msg.substr(6);
    throw config_error(msg);
  }
  return c;
}

inline model_config model_config::parse(std::string_view json_text, std::string_view where) {
  nlohmann::json j;
  // The parser is iterative, but what later walks the value (dump() in a message, a copy) may recurse
  // once per level: 70,000 levels of [[[... would overflow the stack. Stop the parse at the limit.
  auto limit_depth = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    using event_t = nlohmann::json::parse_event_t;
    if ((event == event_t::object_start || event == event_t::array_start) && depth >= max_json_depth) {
      throw config_error(std::string(where) + ": JSON nests arrays and objects more than " +
                         std::to_string(max_json_depth) + " levels deep");
    }
    return true;
  };
  try {
    j = nlohmann::json::parse(json_text, limit_depth);
  } catch (const nlohmann::json::exception& e) {
    throw config_error(std::string(where) + ": not valid JSON (" + detail::json_error_excerpt(e.what()) + ")");
  }
  return from_json(j, where);
}

inline nlohmann::json model_config::to_json() const {
  nlohmann::json j = {
      {"architecture", architecture},
      {"d_model", d_model},
      {"n_heads", n_heads},
      {"d_ff", d_ff},
      {"n_encoder_layers", n_encoder_layers},
      {"n_decoder_layers", n_decoder_layers},
      {"src_vocab_size", src_vocab_size},
      {"tgt_vocab_size", tgt_vocab_size},
      {"activation", to_string(activation_kind)},
      {"norm_first", norm_first},
      {"layer_norm_eps", layer_norm_eps},
      {"positional_encoding", to_string(positional)},
      {"max_positions", max_positions},
      {"sinusoidal_variant", to_string(sinusoidal)},
      {"position_offset", position_offset},
      {"scale_embedding", scale_embedding},
      {"encoder_final_norm", encoder_final_norm},
      {"decoder_final_norm", decoder_final_norm},
      {"share_embeddings", share_embeddings},
      {"tie_output", tie_output},
      {"bos_id", bos_id},
      {"eos_id", eos_id},
      {"pad_id", pad_id},
  };
  // Extensions, written only when set: files without them stay as they were.
  if (embedding_norm) j["embedding_norm"] = true;
  if (forced_bos_id) j["forced_bos_id"] = *forced_bos_id;
  if (n_kv_heads != 0) j["n_kv_heads"] = n_kv_heads;
  if (norm != normalization::layer_norm) j["normalization"] = to_string(norm);
  if (ff != feed_forward_kind::dense) j["feed_forward"] = to_string(ff);
  if (attn_bias != attention_bias::all) j["attention_bias"] = to_string(attn_bias);
  if (positional == positional_encoding::rotary) {
    j["rope_theta"] = rope_theta;
    j["rope_scaling_factor"] = rope_scaling_factor;
  }
  if (moe) {
    j["moe"] = {{"n_experts", moe->n_experts},
                {"top_k", moe->top_k},
                {"gate", to_string(moe->gate_kind)},
                {"encoder_layers", moe->encoder_layers},
                {"decoder_layers", moe->decoder_layers}};
  } else {
    j["moe"] = nullptr;
  }
  return j;
}

}  // namespace eigenformer
