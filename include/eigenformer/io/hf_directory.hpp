// eigenformer/io/hf_directory.hpp: a Hugging Face model directory (what transformers'
// save_pretrained() writes) as a model_config and a weight_map under the model's own tensor names.
//
//   const io::hf_directory dir("opus-mt-en-de/");      // config.json, model.safetensors (or shards)
//   auto weights = dir.read_weights<float>();
//   model<float> m(dir.config(), weights);             // load_model(path) does both for a folder
//
// Families (config.json's model_type) and what sets each apart, as transformers 4.46 computes them:
//   marian    post-norm; sinusoidal positions in Marian's layout (halves, 10000^(2i/d)) from 0;
//             embeddings scaled by sqrt(d_model) if scale_embedding; final_logits_bias
//   bart      post-norm; learned positions with an offset of 2; layernorm_embedding
//   mbart     as bart, pre-norm, with final encoder and decoder layer norms
//   m2m_100   pre-norm, final layer norms; sinusoidal positions in tensor2tensor's layout
//             (exp(-i ln(10000) / (h - 1))) counted from pad_token_id + 1 (NLLB-200 is m2m_100)
// All four: separate q/k/v projections with biases (fused here into the rows q, k, v of one
// in_proj, the layout the kernels read), activation_function relu, gelu, gelu_new or swish/silu,
// the decoder starting from decoder_start_token_id. Generation settings transformers would take from
// the config are not this class's business, except forced_bos_token_id (a one-token prefix that
// generate() forces unless given another) and the decoder start token.
//
// Decoder-only language models (architecture "decoder-only"), as LlamaForCausalLM and its kin:
//   llama     RMSNorm, rotary positions (rope_theta; rope_scaling null or linear), grouped-query
//             attention (num_key_value_heads), SwiGLU MLP, attention_bias (q, k, v and o) or none,
//             lm_head or tie_word_embeddings
//   mistral   as llama, no biases; sliding_window null or >= max_position_embeddings (no window)
//   qwen2     as llama with biases on q, k and v only; use_sliding_window false
//   mixtral   as mistral with a sparse mixture of experts for every MLP: router block_sparse_moe.gate
//             [E, d] (no bias), softmax, top num_experts_per_tok renormalised to sum 1 (= the
//             library's top_k gate, layers/moe.hpp), SwiGLU experts w1 (gate), w3 (up), w2 (down);
//             router_jitter_noise 0
// Tensors: model.embed_tokens, model.layers.i.{input_layernorm, post_attention_layernorm},
// self_attn.{q,k,v,o}_proj (q, k, v fused into one in_proj of rows q, k, v), mlp.{gate,up,down}_proj
// (mixtral: block_sparse_moe.gate, block_sparse_moe.experts.e.{w1,w3,w2}), model.norm, lm_head
// (unless tied).
//   gpt2      LayerNorm (weight, bias; layer_norm_epsilon), pre-norm ln_1, ln_2, final ln_f; learned
//             absolute positions wpe from 0 (n_positions rows); fused c_attn (q, k, v column blocks)
//             and c_proj with biases; MLP c_fc, gelu_new (or another activation_function), c_proj;
//             head tied to wte. Tensors transformer.{wte, wpe, h.i.*, ln_f}. GPT-2's Conv1D stores its
//             weight [in, out] (y = x W + b): transposed once here, at load, into the [out, in] layout
//             every kernel of the library reads (linear(): y = x W^T + b), so no layer needs a
//             second code path and decoding pays nothing for it.
//
// Strict: a model_type or a key whose value would change the computation that is not implemented
// is a config_error naming the key and value; a key outside the lists below is an error too, so that
// a checkpoint of a newer transformers is refused rather than approximated. Every tensor of the
// files must be used, with its exact shape. The index of a sharded checkpoint must name shards in
// the directory itself (no path), and every tensor it lists must be in its shard.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../detail/json_text.hpp"
#include "../positional.hpp"
#include "../weights.hpp"
#include "finite_read.hpp"
#include "safetensors.hpp"

namespace eigenformer::io {

/// True if `path` is a folder holding a Hugging Face config.json.
inline bool is_hf_directory(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) && std::filesystem::is_regular_file(path / "config.json", ec);
}

class hf_directory {
 public:
  /// Reads config.json (and generation_config.json if present) and the weights' index; throws
  /// config_error or format_error naming the file and key.
  explicit hf_directory(std::filesystem::path dir) : dir_(std::move(dir)) {
    parse_config();
    find_shards();
    // One embedding table when the encoder's and decoder's are one tensor, which transformers saves
    // once (model.shared.weight); two when the checkpoint holds each side's own.
    if (!config_.decoder_only()) {
      config_.share_embeddings =
          !(shard_of_.count("model.encoder.embed_tokens.weight") && shard_of_.count("model.decoder.embed_tokens.weight"));
    }
    try {
      config_.validate();
    } catch (const config_error& e) {
      throw config_error(where("config.json") + ": " + e.what());
    }
  }

  const std::filesystem::path& path() const noexcept { return dir_; }
  const std::string& model_type() const noexcept { return model_type_; }
  const model_config& config() const noexcept { return config_; }
  /// The weight files (model.safetensors, or the shards the index names), in name order.
  std::vector<std::filesystem::path> files() const {
    std::set<std::string> names;
    for (const auto& [tensor, shard] : shard_of_) names.insert(shard);
    std::vector<std::filesystem::path> out;
    for (const auto& n : names) out.push_back(dir_ / n);
    return out;
  }

  /// Every tensor of the checkpoint, read as Scalar (NaN or infinite values refused), under the names
  /// the model takes (docs/model-format.md).
  template <class Scalar>
  weight_map<Scalar> read_weights() const;

 private:
  std::string where(const char* file) const { return (dir_ / file).string(); }

  void parse_config();
  /// llama, mistral, qwen2, mixtral: the decoder-only families of the Llama layout.
  void parse_lm_config(const nlohmann::json& j);
  /// gpt2.
  void parse_gpt2_config(const nlohmann::json& j);
  template <class Scalar>
  weight_map<Scalar> read_gpt2_weights() const;
  template <class Scalar>
  weight_map<Scalar> read_lm_weights() const;
  void find_shards();

  std::filesystem::path dir_;
  std::string model_type_;
  model_config config_;
  // Each tensor's shard (file name in dir_), from the index or the one model.safetensors.
  std::map<std::string, std::string> shard_of_;
};

// ---------------------------------------------------------------------------------------------
// Implementation

}  // namespace eigenformer::io

namespace eigenformer::detail {

/// Keys of a saved config that change nothing at inference in transformers' encoder-decoder models
/// (training settings, labels, generation defaults that generate() arguments override, bookkeeping).
inline const std::set<std::string, std::less<>>& hf_ignored_keys() {
  static const std::set<std::string, std::less<>> keys = {
      "_name_or_path", "architectures", "transformers_version", "torch_dtype", "use_cache", "model_type",
      "is_encoder_decoder", "dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
      "encoder_layerdrop", "decoder_layerdrop", "init_std", "num_labels", "id2label", "label2id",
      "gradient_checkpointing", "num_hidden_layers", "output_past", "task_specific_params", "prefix",
      "max_length", "min_length", "num_beams", "length_penalty", "early_stopping",
      "no_repeat_ngram_size", "bad_words_ids", "forced_eos_token_id", "tokenizer_class", "return_dict",
      "output_hidden_states", "output_attentions", "tie_encoder_decoder", "problem_type",
      // Keys of older BART configs that transformers 4.x stores and its BART code never reads.
      "add_bias_logits", "add_final_layer_norm", "normalize_before", "normalize_embedding",
      "static_position_embeddings", "extra_pos_embeddings", "force_bos_token_to_be_generated",
      "max_position_embeddings_offset", "do_blenderbot_90_layernorm", "variant", "dropout_rate",
      // M2M100 / NLLB and Marian extras that do not change the network.
      "decoder_start_token", "scale_attention_softmax_in_fp32"};
  return keys;
}

}  // namespace eigenformer::detail

namespace eigenformer::detail {

/// Reads the keys of one config.json, remembering which were read, so that a key left over (one this
/// library does not know, and so cannot honour) is refused by name rather than silently ignored.
/// A key holding null reads as absent, as transformers treats it.
class hf_config_reader {
 public:
  hf_config_reader(const nlohmann::json& j, std::string file) : j_(j), file_(std::move(file)) {}

  /// The value of `key`, or nullptr when absent or null; marks it read.
  const nlohmann::json* get(std::string_view key) {
    used_.insert(std::string(key));
    const auto it = j_.find(std::string(key));
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  /// "config.json: key: value, expected what" (or "missing").
  config_error bad(std::string_view key, const std::string& expected) const {
    const auto it = j_.find(std::string(key));
    return config_error(file_ + ": " + std::string(key) + ": " + (it == j_.end() ? std::string("missing") : json_excerpt(*it)) +
                        ", expected " + expected);
  }
  /// An integer in [0, 2^31); `fallback` when absent (without one, absence is an error).
  index_t integer(std::string_view key, std::optional<index_t> fallback = std::nullopt) {
    const nlohmann::json* v = get(key);
    if (!v) {
      if (fallback) return *fallback;
      throw bad(key, "an integer");
    }
    if (!v->is_number_integer() || v->get<std::int64_t>() < 0 || v->get<std::int64_t>() > INT32_MAX) {
      throw bad(key, "an integer from 0 to 2147483647");
    }
    return static_cast<index_t>(v->get<std::int64_t>());
  }
  /// A finite positive number; `fallback` when absent.
  double number(std::string_view key, double fallback) {
    const nlohmann::json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number() || !std::isfinite(v->get<double>()) || !(v->get<double>() > 0)) throw bad(key, "a positive number");
    return v->get<double>();
  }
  bool boolean(std::string_view key, bool fallback) {
    const nlohmann::json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) throw bad(key, "true or false");
    return v->get<bool>();
  }
  /// Unmarks `key`: it was looked at, but this model type does not have it.
  void forget(std::string_view key) { used_.erase(std::string(key)); }
  /// Throws naming the first key neither read nor in `ignored`.
  void refuse_unread(const std::set<std::string, std::less<>>& ignored, const std::string& model_type) const {
    for (const auto& [key, value] : j_.items()) {
      if (used_.count(key) == 0 && ignored.count(key) == 0) {
        throw config_error(file_ + ": key '" + text_excerpt(key) + "' (" + json_excerpt(value) +
                           ") is not supported for model_type " + model_type);
      }
    }
  }

 private:
  const nlohmann::json& j_;
  std::string file_;
  std::set<std::string, std::less<>> used_ = {"model_type"};
};

}  // namespace eigenformer::detail

namespace eigenformer::io {

inline void hf_directory::parse_config() {
  const std::string file = where("config.json");
  const nlohmann::json j = detail::read_json_file(dir_ / "config.json");
  if (!j.is_object()) throw config_error(file + ": expected a JSON object, got " + std::string(j.type_name()));
  detail::hf_config_reader cfg(j, file);

  const nlohmann::json* type = cfg.get("model_type");
  if (!type || !type->is_string()) throw cfg.bad("model_type", "a string");
  model_type_ = type->get<std::string>();
  if (model_type_ == "llama" || model_type_ == "mistral" || model_type_ == "qwen2" || model_type_ == "mixtral") {
    return parse_lm_config(j);
  }
  if (model_type_ == "gpt2") return parse_gpt2_config(j);
  const bool marian = model_type_ == "marian", bart = model_type_ == "bart", mbart = model_type_ == "mbart",
             m2m = model_type_ == "m2m_100";
  if (!marian && !bart && !mbart && !m2m) {
    throw config_error(file + ": model_type '" + detail::text_excerpt(model_type_) +
                       "' is not supported, expected marian, bart, mbart or m2m_100 (encoder-decoder); llama, mistral, qwen2, "
                       "mixtral or gpt2 (decoder-only)");
  }
  model_config& c = config_;
  c.d_model = cfg.integer("d_model");
  c.n_heads = cfg.integer("encoder_attention_heads");
  if (cfg.integer("decoder_attention_heads") != c.n_heads) {
    throw cfg.bad("decoder_attention_heads", "encoder_attention_heads (" + std::to_string(c.n_heads) + "): one head count");
  }
  c.d_ff = cfg.integer("encoder_ffn_dim");
  if (cfg.integer("decoder_ffn_dim") != c.d_ff) {
    throw cfg.bad("decoder_ffn_dim", "encoder_ffn_dim (" + std::to_string(c.d_ff) + "): one feed-forward width");
  }
  c.n_encoder_layers = cfg.integer("encoder_layers");
  c.n_decoder_layers = cfg.integer("decoder_layers");
  c.src_vocab_size = cfg.integer("vocab_size");
  c.tgt_vocab_size = marian ? cfg.integer("decoder_vocab_size", c.src_vocab_size) : c.src_vocab_size;
  if (marian) {
    // Shared embeddings are read off the weights (one table or two); the key only says what was trained.
    cfg.boolean("share_encoder_decoder_embeddings", true);
  }
  {
    const nlohmann::json* a = cfg.get("activation_function");
    const std::string name = a ? (a->is_string() ? a->get<std::string>() : std::string("?")) : (m2m ? "relu" : "gelu");
    if (name == "relu") c.activation_kind = activation::relu;
    else if (name == "gelu") c.activation_kind = activation::gelu;
    else if (name == "gelu_new" || name == "gelu_pytorch_tanh") c.activation_kind = activation::gelu_tanh;
    else if (name == "swish" || name == "silu") c.activation_kind = activation::silu;
    else throw cfg.bad("activation_function", "relu, gelu, gelu_new, gelu_pytorch_tanh, swish or silu");
  }
  c.norm_first = mbart || m2m;
  c.encoder_final_norm = c.decoder_final_norm = mbart || m2m;
  c.embedding_norm = bart || mbart;
  c.layer_norm_eps = 1e-5;  // nn.LayerNorm's default, which these families use
  c.scale_embedding = cfg.boolean("scale_embedding", m2m);
  c.pad_id = static_cast<token_id>(cfg.integer("pad_token_id", marian ? std::nullopt : std::optional<index_t>(1)));
  c.eos_id = static_cast<token_id>(cfg.integer("eos_token_id", 2));
  const index_t max_pos = cfg.integer("max_position_embeddings", 1024);
  if (bart || mbart) {
    c.positional = positional_encoding::learned;
    c.position_offset = 2;  // BartLearnedPositionalEmbedding: row = position + 2
    c.max_positions = max_pos + 2;
  } else {
    c.positional = positional_encoding::sinusoidal;
    c.sinusoidal = marian ? sinusoidal_variant::marian : sinusoidal_variant::tensor2tensor;
    c.position_offset = marian ? 0 : c.pad_id + 1;  // M2M100: cumsum of non-pad tokens + padding_idx
    c.max_positions = max_pos;
  }
  c.tie_output = cfg.boolean("tie_word_embeddings", true);  // the output projection is the decoder's embedding

  // The decoder's first token and a forced first target token: generation_config.json wins, as in
  // transformers' generate().
  constexpr index_t none = -1;  // ids are never negative (validate() checks the range)
  index_t start = none, forced = none;
  if (const nlohmann::json* s = cfg.get("decoder_start_token_id")) {
    if (!s->is_number_integer() || s->get<index_t>() < 0) throw cfg.bad("decoder_start_token_id", "a token id");
    start = s->get<index_t>();
  }
  if (const nlohmann::json* f = cfg.get("forced_bos_token_id")) {
    if (!f->is_number_integer() || f->get<index_t>() < 0) throw cfg.bad("forced_bos_token_id", "a token id or null");
    forced = f->get<index_t>();
  }
  if (std::filesystem::exists(dir_ / "generation_config.json")) {
    const std::string gfile = where("generation_config.json");
    const nlohmann::json g = detail::read_json_file(dir_ / "generation_config.json");
    if (!g.is_object()) throw config_error(gfile + ": expected a JSON object, got " + std::string(g.type_name()));
    for (const char* key : {"decoder_start_token_id", "forced_bos_token_id"}) {
      const auto it = g.find(key);
      if (it == g.end()) continue;
      index_t& target = std::string_view(key) == "forced_bos_token_id" ? forced : start;
      if (it->is_null()) {
        target = none;
      } else if (it->is_number_integer() && it->get<index_t>() >= 0) {
        target = it->get<index_t>();
      } else {
        throw config_error(gfile + ": " + key + ": " + detail::json_excerpt(*it) + ", expected a token id");
      }
    }
  }
  const index_t bos = cfg.integer("bos_token_id", none);
  if (start == none) start = bos;  // transformers' generate() falls back to bos
  if (start == none) {
    throw config_error(file + ": decoder_start_token_id: missing (and no bos_token_id), expected the decoder's first token");
  }
  c.bos_id = static_cast<token_id>(start);
  if (forced != none) c.forced_bos_id = static_cast<token_id>(forced);

  cfg.refuse_unread(eigenformer::detail::hf_ignored_keys(), model_type_);
}

inline void hf_directory::parse_lm_config(const nlohmann::json& j) {
  const std::string file = where("config.json");
  detail::hf_config_reader cfg(j, file);
  const bool qwen2 = model_type_ == "qwen2", mixtral = model_type_ == "mixtral", mistral = model_type_ == "mistral" || mixtral;
  model_config& c = config_;
  c.architecture = "decoder-only";
  c.d_model = cfg.integer("hidden_size");
  c.n_heads = cfg.integer("num_attention_heads");
  c.n_kv_heads = cfg.integer("num_key_value_heads", c.n_heads);
  if (c.n_kv_heads == 0 || (c.n_heads > 0 && c.n_heads % c.n_kv_heads != 0)) {
    throw cfg.bad("num_key_value_heads", "a divisor of num_attention_heads (" + std::to_string(c.n_heads) + ")");
  }
  if (c.n_kv_heads == c.n_heads) c.n_kv_heads = 0;  // plain multi-head attention: the default
  c.d_ff = cfg.integer("intermediate_size");
  c.n_encoder_layers = 0;
  c.n_decoder_layers = cfg.integer("num_hidden_layers");
  c.src_vocab_size = c.tgt_vocab_size = cfg.integer("vocab_size");
  if (const nlohmann::json* h = cfg.get("head_dim"); h && (c.n_heads <= 0 || !h->is_number_integer() ||
                                                        h->get<std::int64_t>() * c.n_heads != c.d_model)) {
    throw cfg.bad("head_dim", "hidden_size / num_attention_heads (a head dimension of its own is not supported)");
  }
  {
    const nlohmann::json* a = cfg.get("hidden_act");
    if (a && !(a->is_string() && (a->get<std::string>() == "silu" || a->get<std::string>() == "swish"))) {
      throw cfg.bad("hidden_act", "silu (the SwiGLU feed-forward)");
    }
  }
  c.activation_kind = activation::silu;
  c.ff = feed_forward_kind::gated;
  c.norm = normalization::rms_norm;
  c.layer_norm_eps = cfg.number("rms_norm_eps", 1e-6);
  c.norm_first = true;
  c.encoder_final_norm = false;
  c.decoder_final_norm = true;
  c.embedding_norm = false;
  c.scale_embedding = false;
  c.share_embeddings = false;
  c.positional = positional_encoding::rotary;
  c.max_positions = cfg.integer("max_position_embeddings", 2048);
  c.rope_theta = cfg.number("rope_theta", 10000.0);
  if (const nlohmann::json* r = cfg.get("rope_scaling")) {
    // {"type": "linear", "factor": f} (transformers adds "rope_type": "linear"); other kinds change the
    // frequencies in ways not implemented here.
    if (!r->is_object()) throw cfg.bad("rope_scaling", "null or an object");
    std::string kind;
    double factor = 0;
    for (const auto& [k, v] : r->items()) {
      if ((k == "type" || k == "rope_type") && v.is_string()) {
        if (!kind.empty() && kind != v.get<std::string>()) throw cfg.bad("rope_scaling", "one rope_type");
        kind = v.get<std::string>();
      } else if (k == "factor" && v.is_number()) {
        factor = v.get<double>();
      } else {
        throw config_error(file + ": rope_scaling." + detail::text_excerpt(k) + ": " + detail::json_excerpt(v) +
                           " is not supported (only {\"type\": \"linear\", \"factor\": f})");
      }
    }
    if (kind != "linear") {  // (also the message for a dynamic, yarn, llama3 ... rope)
      throw config_error(file + ": rope_scaling: type '" + detail::text_excerpt(kind) +
                         "' is not supported, expected 'linear' (or null)");
    }
    if (!(factor > 0) || !std::isfinite(factor)) throw cfg.bad("rope_scaling", "a positive 'factor'");
    c.rope_scaling_factor = factor;
  }
  if (qwen2) {
    c.attn_bias = attention_bias::qkv;  // Qwen2Attention: q, k, v biases; o_proj none
    if (cfg.boolean("use_sliding_window", false)) {
      throw cfg.bad("use_sliding_window", "false (sliding-window attention is not supported)");
    }
    cfg.get("sliding_window");     // not used while use_sliding_window is false
    cfg.get("max_window_layers");  // idem
  } else {
    c.attn_bias = cfg.boolean("attention_bias", false) ? attention_bias::all : attention_bias::none;
    if (mistral) {
      c.attn_bias = attention_bias::none;
      cfg.forget("attention_bias");  // MistralConfig has no such key
      if (const nlohmann::json* w = cfg.get("sliding_window");
          w && !(w->is_number_integer() && w->get<std::int64_t>() >= c.max_positions)) {
        throw cfg.bad("sliding_window", "null or at least max_position_embeddings " + std::to_string(c.max_positions) +
                                        " (sliding-window attention is not supported)");
      }
    } else if (cfg.boolean("mlp_bias", false)) {
      throw cfg.bad("mlp_bias", "false (feed-forward biases are not supported)");
    }
  }
  if (mixtral) {
    // Every layer's MLP is a mixture of experts of SwiGLU blocks (c.ff gated), routed by the top_k gate.
    moe_config m;
    m.n_experts = cfg.integer("num_local_experts");
    m.top_k = cfg.integer("num_experts_per_tok");
    if (m.n_experts < 1) throw cfg.bad("num_local_experts", "a positive integer");
    if (m.top_k < 1 || m.top_k > m.n_experts) {
      throw cfg.bad("num_experts_per_tok", "1 to num_local_experts (" + std::to_string(m.n_experts) + ")");
    }
    m.gate_kind = gate::top_k;
    for (index_t i = 0; i < c.n_decoder_layers; ++i) m.decoder_layers.push_back(i);
    if (const nlohmann::json* r = cfg.get("router_jitter_noise");
        r && !(r->is_number() && r->get<double>() == 0.0)) {
      throw cfg.bad("router_jitter_noise", "0 (router jitter is a training device; not supported)");
    }
    cfg.get("output_router_logits");  // what forward() returns, not what it computes (stats: moe_router_stats)
    cfg.get("router_aux_loss_coef");  // the training loss only
    c.moe = m;
  }
  c.tie_output = cfg.boolean("tie_word_embeddings", false);
  const index_t eos = cfg.integer("eos_token_id");
  c.eos_id = static_cast<token_id>(eos);
  c.bos_id = static_cast<token_id>(cfg.integer("bos_token_id", eos));  // not used: the prompt starts as the caller says
  c.pad_id = static_cast<token_id>(cfg.integer("pad_token_id", eos));
  static const std::set<std::string, std::less<>> lm_ignored = {
      "_name_or_path", "architectures", "transformers_version", "torch_dtype", "use_cache", "attention_dropout",
      "initializer_range", "pretraining_tp", "tokenizer_class", "return_dict", "output_hidden_states",
      "output_attentions", "id2label", "label2id", "num_labels", "problem_type", "max_length", "min_length"};
  cfg.refuse_unread(lm_ignored, model_type_);
}

inline void hf_directory::parse_gpt2_config(const nlohmann::json& j) {
  const std::string file = where("config.json");
  detail::hf_config_reader cfg(j, file);
  model_config& c = config_;
  c.architecture = "decoder-only";
  c.d_model = cfg.integer("n_embd", 768);  // GPT2Config's defaults
  c.n_heads = cfg.integer("n_head", 12);
  c.n_decoder_layers = cfg.integer("n_layer", 12);
  c.n_encoder_layers = 0;
  c.d_ff = cfg.integer("n_inner", 4 * c.d_model);  // null: 4 n_embd (GPT2MLP)
  c.src_vocab_size = c.tgt_vocab_size = cfg.integer("vocab_size", 50257);
  c.max_positions = cfg.integer("n_positions", 1024);  // rows of wpe
  if (const nlohmann::json* e = cfg.get("layer_norm_epsilon")) {
    if (!e->is_number() || !std::isfinite(e->get<double>()) || !(e->get<double>() > 0)) throw cfg.bad("layer_norm_epsilon", "a positive number");
    c.layer_norm_eps = e->get<double>();
  } else {
    c.layer_norm_eps = 1e-5;
  }
  {
    const nlohmann::json* a = cfg.get("activation_function");
    const std::string name = a ? (a->is_string() ? a->get<std::string>() : std::string("?")) : "gelu_new";
    // transformers' ACT2FN: "gelu" is the exact (erf) GELU, "gelu_new" and "gelu_pytorch_tanh" its tanh approximation.
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") c.activation_kind = activation::gelu_tanh;
    else if (name == "gelu") c.activation_kind = activation::gelu;
    else if (name == "relu") c.activation_kind = activation::relu;
    else if (name == "silu" || name == "swish") c.activation_kind = activation::silu;
    else throw cfg.bad("activation_function", "gelu_new, gelu_pytorch_tanh, gelu, relu, silu or swish");
  }
  // Options that change GPT2Attention's computation, refused unless at the value we compute.
  if (!cfg.boolean("scale_attn_weights", true)) throw cfg.bad("scale_attn_weights", "true (unscaled attention is not supported)");
  if (cfg.boolean("scale_attn_by_inverse_layer_idx", false)) {
    throw cfg.bad("scale_attn_by_inverse_layer_idx", "false (scores divided by the layer number are not supported)");
  }
  if (cfg.boolean("reorder_and_upcast_attn", false)) {
    throw cfg.bad("reorder_and_upcast_attn", "false (the reordered, upcast attention is not supported)");
  }
  if (cfg.boolean("add_cross_attention", false)) throw cfg.bad("add_cross_attention", "false (cross-attention is not supported)");
  if (const nlohmann::json* n = cfg.get("n_ctx"); n && !(n->is_number_integer() && n->get<std::int64_t>() == c.max_positions)) {
    throw cfg.bad("n_ctx", "n_positions (" + std::to_string(c.max_positions) + ")");
  }
  c.norm = normalization::layer_norm;
  c.ff = feed_forward_kind::dense;
  c.attn_bias = attention_bias::all;  // c_attn and c_proj have biases
  c.n_kv_heads = 0;
  c.norm_first = true;
  c.encoder_final_norm = false;
  c.decoder_final_norm = true;  // ln_f
  c.embedding_norm = false;
  c.scale_embedding = false;
  c.share_embeddings = false;
  c.positional = positional_encoding::learned;  // wpe, row = position (from 0)
  c.position_offset = 0;
  c.tie_output = cfg.boolean("tie_word_embeddings", true);
  const index_t eos = cfg.integer("eos_token_id", 50256);
  c.eos_id = static_cast<token_id>(eos);
  c.bos_id = static_cast<token_id>(cfg.integer("bos_token_id", eos));
  c.pad_id = static_cast<token_id>(cfg.integer("pad_token_id", eos));
  // Settings of training (dropout, init) and of GPT2DoubleHeadsModel's summary head, which
  // GPT2LMHeadModel does not have.
  static const std::set<std::string, std::less<>> gpt2_ignored = {
      "_name_or_path", "architectures", "transformers_version", "torch_dtype", "use_cache", "attn_pdrop", "embd_pdrop",
      "resid_pdrop", "initializer_range", "summary_activation", "summary_first_dropout", "summary_proj_to_labels",
      "summary_type", "summary_use_proj", "task_specific_params", "tokenizer_class", "return_dict",
      "output_hidden_states", "output_attentions", "id2label", "label2id", "num_labels", "problem_type", "max_length",
      "min_length"};
  cfg.refuse_unread(gpt2_ignored, model_type_);
}

inline void hf_directory::find_shards() {
  const bool single = std::filesystem::exists(dir_ / "model.safetensors");
  const bool sharded = std::filesystem::exists(dir_ / "model.safetensors.index.json");
  if (single && sharded) {
    throw format_error(dir_.string() + ": both model.safetensors and model.safetensors.index.json, expected one");
  }
  if (!single && !sharded) {
    throw format_error(dir_.string() + ": no model.safetensors or model.safetensors.index.json (weights in "
                       "pytorch_model.bin are not read: save with safe_serialization=True)");
  }
  if (single) {
    const safetensors_file f(dir_ / "model.safetensors");
    for (const auto& t : f.tensors()) shard_of_.emplace(t.name, "model.safetensors");
    return;
  }
  const std::string file = where("model.safetensors.index.json");
  const nlohmann::json index = detail::read_json_file(dir_ / "model.safetensors.index.json");
  const auto map = index.is_object() ? index.find("weight_map") : index.end();
  if (map == index.end() || !map->is_object()) throw format_error(file + ": weight_map: missing, expected an object");
  for (const auto& [name, shard] : map->items()) {
    if (!shard.is_string()) {
      throw format_error(file + ": weight_map: '" + detail::text_excerpt(name) + "': " +
                         detail::json_excerpt(shard) + ", expected a file name");
    }
    const std::string s = shard.get<std::string>();
    if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..") {
      throw format_error(file + ": weight_map: '" + detail::text_excerpt(name) + "': shard '" +
                         detail::text_excerpt(s) + "', expected a file name in " + dir_.string());
    }
    shard_of_.emplace(name, s);
  }
}

}  // namespace eigenformer::io

namespace eigenformer::io::detail_hf {

/// The shards of a checkpoint, each opened once, and the tensors read from them: every tensor a
/// shard holds must be listed for it in the index (and the reverse), read() checks the shape and
/// refuses NaN or infinite values, and check_all_read() refuses a checkpoint with tensors the
/// loader did not use, naming the shard and the first of them.
template <class Scalar>
class shard_reader {
 public:
  /// shard_of: tensor name -> shard file name (model.safetensors.index.json, or one file).
  shard_reader(const std::filesystem::path& dir, const std::map<std::string, std::string>& shard_of)
      : dir_(dir), shard_of_(shard_of) {
    for (const auto& [name, shard] : shard_of_) {
      auto& f = shards_[shard];
      if (!f) {
        f = std::make_unique<safetensors_file>(dir_ / shard);
        for (const auto& t : f->tensors()) {
          const auto it = shard_of_.find(t.name);
          if (it == shard_of_.end() || it->second != shard) {
            throw format_error(f->path().string() + ": tensor '" + detail::text_excerpt(t.name, 128) +
                               "' is not listed for this shard in model.safetensors.index.json");
          }
        }
      }
      if (!f->contains(name)) {
        throw format_error(f->path().string() + ": tensor '" + detail::text_excerpt(name, 128) +
                           "' is missing (model.safetensors.index.json lists it in this shard)");
      }
      unread_.insert(name);
    }
  }

  bool has(const std::string& name) const { return shard_of_.count(name) != 0; }
  /// Whether `name` is in the checkpoint and not read yet.
  bool unread(const std::string& name) const { return unread_.count(name) != 0; }

  /// Tensor `name`, which must have `shape`.
  tensor<Scalar> read(const std::string& name, const tensor_shape& shape) {
    const auto it = shard_of_.find(name);
    if (it == shard_of_.end()) throw format_error(dir_.string() + ": tensor '" + name + "' is missing");
    const safetensors_file& f = *shards_.at(it->second);
    check_shape(f.path().string() + ": tensor '" + name + "'", f.info(name).shape, shape.dims());
    unread_.erase(name);
    return read_finite_tensor<Scalar>(f, name);
  }

  /// Counts `name` as used without reading it (buffers transformers saves but recomputes).
  void skip(const std::string& name) { unread_.erase(name); }

  /// Throws format_error naming the first tensor no read() used.
  void check_all_read(const std::string& model_type) const {
    if (unread_.empty()) return;
    const std::string& name = *unread_.begin();
    throw format_error((dir_ / shard_of_.at(name)).string() + ": unexpected tensor '" + detail::text_excerpt(name, 128) +
                       "' for model_type " + model_type + " (" + std::to_string(unread_.size()) + " tensor(s) not used)");
  }

 private:
  std::filesystem::path dir_;
  const std::map<std::string, std::string>& shard_of_;
  std::map<std::string, std::unique_ptr<safetensors_file>> shards_;
  std::set<std::string> unread_;
};

}  // namespace eigenformer::io::detail_hf

namespace eigenformer::io {

template <class Scalar>
weight_map<Scalar> hf_directory::read_weights() const {
  if (config_.decoder_only()) return read_lm_weights<Scalar>();
  const model_config& c = config_;
  const index_t d = c.d_model;
  detail_hf::shard_reader<Scalar> shards(dir_, shard_of_);
  auto has = [&](const std::string& name) { return shards.has(name); };
  auto read = [&](const std::string& name, const tensor_shape& shape) { return shards.read(name, shape); };
  weight_map<Scalar> w(dir_.string());

  // Embeddings (the constructor decided sharing from the names present).
  if (c.share_embeddings) {
    const std::string one = has("model.shared.weight") ? "model.shared.weight"
                            : has("model.decoder.embed_tokens.weight") ? "model.decoder.embed_tokens.weight"
                                                                        : "model.encoder.embed_tokens.weight";
    w.insert("tgt_embed.weight", read(one, {c.tgt_vocab_size, d}));
    // A copy under another name, if saved, is the same table: checked for shape, not kept.
    for (const char* copy : {"model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"})
      if (shards.unread(copy)) read(copy, {c.tgt_vocab_size, d});
  } else {
    w.insert("src_embed.weight", read("model.encoder.embed_tokens.weight", {c.src_vocab_size, d}));
    w.insert("tgt_embed.weight", read("model.decoder.embed_tokens.weight", {c.tgt_vocab_size, d}));
    if (has("model.shared.weight")) read("model.shared.weight", {c.src_vocab_size, d});
  }
  if (!c.tie_output) {
    w.insert("generator.weight", read("lm_head.weight", {c.tgt_vocab_size, d}));
  } else if (has("lm_head.weight")) {
    read("lm_head.weight", {c.tgt_vocab_size, d});  // tied: transformers replaces it by the embedding
  }
  if (has("final_logits_bias")) {
    auto bias = read("final_logits_bias", {1, c.tgt_vocab_size});
    tensor<Scalar> flat({c.tgt_vocab_size});
    std::copy_n(bias.data(), c.tgt_vocab_size, flat.data());
    w.insert("generator.bias", std::move(flat));
  }

  // Positions: learned tables (bart, mbart); Marian saves its sinusoidal table, which must be the one
  // the model computes; M2M100 saves none.
  for (const auto& [side, ours] : {std::pair<std::string, std::string>{"encoder", "src_pos.weight"}, {"decoder", "tgt_pos.weight"}}) {
    const std::string name = "model." + side + ".embed_positions.weight";
    if (c.positional == positional_encoding::learned) {
      w.insert(ours, read(name, {c.max_positions, d}));
    } else if (has(name)) {
      const auto stored = read(name, {c.max_positions, d});
      const auto table = sinusoidal_table<Scalar>(c.max_positions, d, c.sinusoidal, c.position_offset);
      for (index_t i = 0; i < stored.size(); ++i) {
        if (std::abs(double(stored.data()[i]) - double(table.data()[i])) > 1e-4) {
          throw format_error(dir_.string() + ": tensor '" + name + "': row " + std::to_string(i / d) +
                             " differs from the sinusoidal positions of model_type " + model_type_ +
                             " (trained positions are not supported for it)");
        }
      }
    }
  }
  auto norm = [&](const std::string& hf, const std::string& ours) {
    w.insert(ours + ".weight", read(hf + ".weight", {d}));
    w.insert(ours + ".bias", read(hf + ".bias", {d}));
  };
  auto linear = [&](const std::string& hf, const std::string& ours, index_t out, index_t in) {
    w.insert(ours + ".weight", read(hf + ".weight", {out, in}));
    w.insert(ours + ".bias", read(hf + ".bias", {out}));
  };
  // q, k and v stacked into one [3 d, d] projection: rows q, then k, then v (as nn.MultiheadAttention).
  auto attention = [&](const std::string& hf, const std::string& ours) {
    tensor<Scalar> in_w({3 * d, d}), in_b({3 * d});
    index_t part = 0;
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
      const auto wt = read(hf + "." + p + ".weight", {d, d});
      const auto bs = read(hf + "." + p + ".bias", {d});
      std::copy_n(wt.data(), d * d, in_w.data() + part * d * d);
      std::copy_n(bs.data(), d, in_b.data() + part * d);
      ++part;
    }
    w.insert(ours + ".in_proj_weight", std::move(in_w));
    w.insert(ours + ".in_proj_bias", std::move(in_b));
    linear(hf + ".out_proj", ours + ".out_proj", d, d);
  };
  if (c.embedding_norm) {
    norm("model.encoder.layernorm_embedding", "transformer.encoder.embed_norm");
    norm("model.decoder.layernorm_embedding", "transformer.decoder.embed_norm");
  }
  for (index_t i = 0; i < c.n_encoder_layers; ++i) {
    const std::string hf = "model.encoder.layers." + std::to_string(i), ours = "transformer.encoder.layers." + std::to_string(i);
    attention(hf + ".self_attn", ours + ".self_attn");
    norm(hf + ".self_attn_layer_norm", ours + ".norm1");
    linear(hf + ".fc1", ours + ".linear1", c.d_ff, d);
    linear(hf + ".fc2", ours + ".linear2", d, c.d_ff);
    norm(hf + ".final_layer_norm", ours + ".norm2");
  }
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    const std::string hf = "model.decoder.layers." + std::to_string(i), ours = "transformer.decoder.layers." + std::to_string(i);
    attention(hf + ".self_attn", ours + ".self_attn");
    norm(hf + ".self_attn_layer_norm", ours + ".norm1");
    attention(hf + ".encoder_attn", ours + ".multihead_attn");
    norm(hf + ".encoder_attn_layer_norm", ours + ".norm2");
    linear(hf + ".fc1", ours + ".linear1", c.d_ff, d);
    linear(hf + ".fc2", ours + ".linear2", d, c.d_ff);
    norm(hf + ".final_layer_norm", ours + ".norm3");
  }
  if (c.encoder_final_norm) norm("model.encoder.layer_norm", "transformer.encoder.norm");
  if (c.decoder_final_norm) norm("model.decoder.layer_norm", "transformer.decoder.norm");
  shards.check_all_read(model_type_);
  return w;
}

}  // namespace eigenformer::io

namespace eigenformer::io {

template <class Scalar>
weight_map<Scalar> hf_directory::read_lm_weights() const {
  if (model_type_ == "gpt2") return read_gpt2_weights<Scalar>();
  const model_config& c = config_;
  const index_t d = c.d_model, kvd = c.kv_heads() * c.d_head(), rows = d + 2 * kvd;
  detail_hf::shard_reader<Scalar> shards(dir_, shard_of_);
  auto has = [&](const std::string& name) { return shards.has(name); };
  auto read = [&](const std::string& name, const tensor_shape& shape) { return shards.read(name, shape); };
  weight_map<Scalar> w(dir_.string());
  w.insert("tgt_embed.weight", read("model.embed_tokens.weight", {c.tgt_vocab_size, d}));
  if (!c.tie_output) {
    w.insert("generator.weight", read("lm_head.weight", {c.tgt_vocab_size, d}));
  } else if (has("lm_head.weight")) {
    read("lm_head.weight", {c.tgt_vocab_size, d});  // tied: transformers replaces it by the embedding
  }
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i), ours = "transformer.decoder.layers." + std::to_string(i);
    // q, k and v stacked into one [d + 2 kv_dim, d] projection: rows q, then k, then v.
    tensor<Scalar> in_w({rows, d}), in_b({rows});
    index_t at = 0;
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
      const index_t out = std::string_view(p) == "q_proj" ? d : kvd;
      const auto wt = read(hf + ".self_attn." + p + ".weight", {out, d});
      std::copy_n(wt.data(), out * d, in_w.data() + at * d);
      if (c.attn_bias != attention_bias::none) {
        const auto bs = read(hf + ".self_attn." + p + ".bias", {out});
        std::copy_n(bs.data(), out, in_b.data() + at);
      }
      at += out;
    }
    w.insert(ours + ".self_attn.in_proj_weight", std::move(in_w));
    if (c.attn_bias != attention_bias::none) w.insert(ours + ".self_attn.in_proj_bias", std::move(in_b));
    w.insert(ours + ".self_attn.out_proj.weight", read(hf + ".self_attn.o_proj.weight", {d, d}));
    if (c.attn_bias == attention_bias::all) w.insert(ours + ".self_attn.out_proj.bias", read(hf + ".self_attn.o_proj.bias", {d}));
    w.insert(ours + ".norm1.weight", read(hf + ".input_layernorm.weight", {d}));
    w.insert(ours + ".norm3.weight", read(hf + ".post_attention_layernorm.weight", {d}));
    if (c.moe) {  // mixtral: router and SwiGLU experts (w1 = gate, w3 = up, w2 = down: MixtralBlockSparseTop2MLP)
      const std::string moe = hf + ".block_sparse_moe";
      w.insert(ours + ".moe.gate.weight", read(moe + ".gate.weight", {c.moe->n_experts, d}));
      for (index_t e = 0; e < c.moe->n_experts; ++e) {
        const std::string ex = moe + ".experts." + std::to_string(e), ex_ours = ours + ".moe.experts." + std::to_string(e);
        w.insert(ex_ours + ".gate_proj.weight", read(ex + ".w1.weight", {c.d_ff, d}));
        w.insert(ex_ours + ".up_proj.weight", read(ex + ".w3.weight", {c.d_ff, d}));
        w.insert(ex_ours + ".down_proj.weight", read(ex + ".w2.weight", {d, c.d_ff}));
      }
      continue;
    }
    w.insert(ours + ".gate_proj.weight", read(hf + ".mlp.gate_proj.weight", {c.d_ff, d}));
    w.insert(ours + ".up_proj.weight", read(hf + ".mlp.up_proj.weight", {c.d_ff, d}));
    w.insert(ours + ".down_proj.weight", read(hf + ".mlp.down_proj.weight", {d, c.d_ff}));
  }
  w.insert("transformer.decoder.norm.weight", read("model.norm.weight", {d}));
  shards.check_all_read(model_type_);
  return w;
}

template <class Scalar>
weight_map<Scalar> hf_directory::read_gpt2_weights() const {
  const model_config& c = config_;
  const index_t d = c.d_model, f = c.d_ff;
  detail_hf::shard_reader<Scalar> shards(dir_, shard_of_);
  auto has = [&](const std::string& name) { return shards.has(name); };
  auto read = [&](const std::string& name, const tensor_shape& shape) { return shards.read(name, shape); };
  // A Conv1D weight, stored [in, out] (y = x W + b), as the [out, in] matrix linear() reads
  // (y = x W^T + b): one transpose at load, none per call.
  auto conv1d = [&](const std::string& name, index_t in, index_t out) {
    const auto stored = read(name, {in, out});  // [in, out]
    tensor<Scalar> t({out, in});                // [out, in]
    t.matrix() = stored.matrix().transpose();
    return t;
  };
  const std::string p = "transformer.";
  weight_map<Scalar> w(dir_.string());
  w.insert("tgt_embed.weight", read(p + "wte.weight", {c.tgt_vocab_size, d}));  // [V, d]
  w.insert("tgt_pos.weight", read(p + "wpe.weight", {c.max_positions, d}));     // [n_positions, d]
  if (!c.tie_output) {
    w.insert("generator.weight", read("lm_head.weight", {c.tgt_vocab_size, d}));
  } else if (has("lm_head.weight")) {
    read("lm_head.weight", {c.tgt_vocab_size, d});  // tied: transformers replaces it by wte
  }
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    const std::string hf = p + "h." + std::to_string(i), ours = "transformer.decoder.layers." + std::to_string(i);
    // c_attn's output columns are q, k, v: after the transpose, rows q, k, v, the in_proj layout.
    w.insert(ours + ".self_attn.in_proj_weight", conv1d(hf + ".attn.c_attn.weight", d, 3 * d));  // [3 d, d]
    w.insert(ours + ".self_attn.in_proj_bias", read(hf + ".attn.c_attn.bias", {3 * d}));          // [3 d]
    w.insert(ours + ".self_attn.out_proj.weight", conv1d(hf + ".attn.c_proj.weight", d, d));      // [d, d]
    w.insert(ours + ".self_attn.out_proj.bias", read(hf + ".attn.c_proj.bias", {d}));
    w.insert(ours + ".norm1.weight", read(hf + ".ln_1.weight", {d}));
    w.insert(ours + ".norm1.bias", read(hf + ".ln_1.bias", {d}));
    w.insert(ours + ".norm3.weight", read(hf + ".ln_2.weight", {d}));
    w.insert(ours + ".norm3.bias", read(hf + ".ln_2.bias", {d}));
    w.insert(ours + ".linear1.weight", conv1d(hf + ".mlp.c_fc.weight", d, f));  // [d_ff, d]
    w.insert(ours + ".linear1.bias", read(hf + ".mlp.c_fc.bias", {f}));
    w.insert(ours + ".linear2.weight", conv1d(hf + ".mlp.c_proj.weight", f, d));  // [d, d_ff]
    w.insert(ours + ".linear2.bias", read(hf + ".mlp.c_proj.bias", {d}));
    // Older checkpoints store the causal mask buffers (attn.bias [1, 1, n, n], attn.masked_bias):
    // constants the attention computes itself, so they are accepted and not read.
    for (const char* buffer : {".attn.bias", ".attn.masked_bias"}) shards.skip(hf + buffer);
  }
  w.insert("transformer.decoder.norm.weight", read(p + "ln_f.weight", {d}));
  w.insert("transformer.decoder.norm.bias", read(p + "ln_f.bias", {d}));
  shards.check_all_read(model_type_);
  return w;
}

}  // namespace eigenformer::io
