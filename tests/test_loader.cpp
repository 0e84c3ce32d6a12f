// load_model() on malformed model files: every failure names the file and the key or tensor.
// (The safetensors container itself is tested in test_safetensors; here the files are valid
// safetensors whose metadata, config or tensors do not make a model.)
#include <eigenformer/io/model_loader.hpp>

#include <cmath>
#include <filesystem>
#include <limits>

#include "support/hostile_files.hpp"
#include "support/random_model.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using namespace ef::testing;

namespace {

/// A model file in the making: metadata and tensors that a test breaks one at a time.
struct model_file {
  ef::model_config config = small_config();
  std::map<std::string, std::string> metadata{{"format", "eigenformer"}, {"config", small_config().to_json().dump()}};
  std::map<std::string, ef::tensor<float>> tensors;

  model_file() {
    random_weights<float> rw(config, 3);
    for (const auto& name : rw.map().remaining()) tensors.emplace(name, *rw.map().find(name));
  }

  std::string write(const std::string& name, ef::io::dtype storage = ef::io::dtype::f32) const {
    std::vector<ef::io::named_tensor<float>> list;
    for (const auto& [n, t] : tensors) list.push_back({n, t});
    const auto path = (test_dir("loader") / (name + ".safetensors")).string();
    ef::io::write_safetensors<float>(path, list, metadata, storage);
    return path;
  }

  void set_config(const std::string& key, const nlohmann::json& value) {
    auto j = nlohmann::json::parse(metadata["config"]);
    j[key] = value;
    metadata["config"] = j.dump();
  }
};

}  // namespace

TEST(Loader, ValidFileLoadsInEveryStorageType) {
  model_file f;
  for (auto storage : {ef::io::dtype::f32, ef::io::dtype::f16, ef::io::dtype::bf16, ef::io::dtype::f64}) {
    const auto m = ef::load_model<double>(f.write("valid", storage));
    EXPECT_EQ(m.config().d_model, 16);
  }
}

TEST(Loader, MetadataErrors) {
  model_file f;
  f.metadata.erase("format");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("no_format")), ef::format_error,
                                "no_format.safetensors: __metadata__ has no 'format' entry");
  f = {};
  f.metadata["format"] = "pytorch";
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("bad_format")), ef::format_error,
                                "bad_format.safetensors: __metadata__ 'format' is \"pytorch\", expected \"eigenformer\"");
  f = {};
  f.metadata.erase("config");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("no_config")), ef::format_error, "has no 'config' entry");
  f = {};
  f.metadata["config"] = "{\"d_model\": 16,";
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("bad_json")), ef::config_error,
                                "bad_json.safetensors: config: not valid JSON");
}

TEST(Loader, ConfigErrorsNameTheKey) {
  struct bad_case {
    const char* key;
    nlohmann::json value;
    const char* message;
  };
  const bad_case cases[] = {
      {"d_model", "16", "config.d_model: expected an integer, got \"16\""},
      {"n_heads", 3, "config.n_heads: 3 does not divide d_model 16"},
      {"d_ff", 0, "config.d_ff: 0, expected a positive integer"},
      {"activation", "swish", "config.activation: 'swish', expected one of 'relu', 'gelu'"},
      {"norm_first", 1, "config.norm_first: expected true or false, got 1"},
      {"norm_frist", true, "config.norm_frist: unknown key"},
      {"architecture", "encoder-only", "config.architecture: 'encoder-only', expected one of 'encoder-decoder', 'decoder-only'"},
      // Catches: a decoder-only config accepted with encoder layers it would never run.
      {"architecture", "decoder-only", "config.n_encoder_layers: 2, expected 0 (decoder-only)"},
      {"eos_id", 19, "config.eos_id: 19, expected 0 to 18"},
      // Catches: pad_id checked only for >= 0, not against the vocabulary as bos_id and eos_id are.
      {"pad_id", 19, "config.pad_id: 19, expected 0 to 18"},
      {"pad_id", -1, "config.pad_id: -1, expected 0 to 18"},
      {"layer_norm_eps", -1.0, "config.layer_norm_eps"},
      {"share_embeddings", true, "config.share_embeddings: src_vocab_size 23 differs from tgt_vocab_size 19"},
      {"moe", nlohmann::json{{"n_experts", 4}, {"top_k", 5}, {"gate", "top_k"}}, "config.moe.top_k: 5, expected 1 to n_experts 4"},
      {"moe", nlohmann::json{{"n_experts", 4}, {"gate", "hash"}}, "config.moe.gate: 'hash'"},
      {"moe", nlohmann::json{{"n_experts", 4}, {"gate", "top_k"}, {"decoder_layers", {7}}}, "config.moe.decoder_layers: layer 7, expected 0 to 1"},
  };
  for (const auto& c : cases) {
    model_file f;
    f.set_config(c.key, c.value);
    EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("config")), ef::config_error, c.message);
  }
  model_file f;
  auto j = nlohmann::json::parse(f.metadata["config"]);
  j.erase("tgt_vocab_size");
  f.metadata["config"] = j.dump();
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("missing_key")), ef::config_error,
                                "config.tgt_vocab_size: missing (required)");
}

TEST(Loader, TensorErrorsNameTheTensor) {
  model_file f;
  f.tensors.erase("transformer.encoder.layers.1.self_attn.in_proj_bias");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("missing")), ef::format_error,
                                "missing.safetensors: tensor 'transformer.encoder.layers.1.self_attn.in_proj_bias' is missing");
  f = {};
  f.tensors.emplace("decoder.extra.weight", ef::tensor<float>({3}));
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("unexpected")), ef::format_error,
                                "unexpected.safetensors: unexpected tensor 'decoder.extra.weight'");
  f = {};
  f.tensors["generator.weight"] = ef::tensor<float>({16, 19});
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("shape")), ef::shape_error,
                                "shape.safetensors: tensor 'generator.weight': shape [16, 19], expected [19, 16]");
  f = {};
  f.set_config("tie_output", true);  // generator.weight is now one tensor too many
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("tied")), ef::format_error, "unexpected tensor 'generator.weight'");
  f = {};
  f.set_config("positional_encoding", "learned");  // the learned tables are missing
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("learned")), ef::format_error, "tensor 'src_pos.weight' is missing");
}

TEST(Loader, IntegerTensorIsRejected) {
  model_file f;
  const auto path = f.write("ints");
  // Rewrite one tensor's dtype in the header: same size, I32 instead of F32.
  auto bytes = read_file(path);
  const auto at = bytes.find("\"generator.bias\":{\"dtype\":\"F32\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at + std::string("\"generator.bias\":{\"dtype\":\"").size(), 3, "I32");
  write_file(path, bytes);
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(path), ef::format_error,
                                "ints.safetensors: tensor 'generator.bias': dtype I32, expected F32, F16, BF16 or F64");
}

TEST(Loader, MissingFileNamesThePath) {
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>("/nonexistent/model.safetensors"), ef::error, "/nonexistent/model.safetensors");
}

// ---------------------------------------------------------------------------------------------
// Hostile files (the container's own cases are in test_safetensors). Each test names the wrong
// implementation it catches.

TEST(LoaderHostile, DeeplyNestedConfigIsRejectedNotACrash) {
  // Catches: quoting the value in "expected an integer, got <dump()>" with nlohmann's recursive dump(),
  // which overflows the stack (SIGSEGV) on 70,000 levels; and parsing the config without a depth limit.
  model_file f;
  std::string text = f.metadata["config"];  // "architecture" is read first
  const std::string key = R"("architecture":"encoder-decoder")";
  ASSERT_NE(text.find(key), std::string::npos);
  f.metadata["config"] = text.replace(text.find(key), key.size(), R"("architecture":)" + nested_arrays(70'000));
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("deep")), ef::config_error,
                                "deep.safetensors: config: JSON nests arrays and objects more than 64 levels deep");
  f.metadata["config"] = nested_arrays(70'000);
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("deep")), ef::config_error, "more than 64 levels deep");
  // Under the limit, the value is described, not dumped.
  f = {};
  f.set_config("d_model", nlohmann::json::parse(nested_arrays(40)));
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("nested")), ef::config_error,
                                "config.d_model: expected an integer, got an array of 1 element(s)");
}

TEST(LoaderHostile, ConfigMessagesQuoteShortExcerpts) {
  // Catches: quoting a hostile config's text whole (a multi-megabyte, multi-line error message).
  const std::string long_text(5'000'000, 'x');
  model_file f;
  f.metadata["config"] = "{\"d_model\": \"" + long_text;  // unterminated string
  const std::string values[] = {long_text, long_text + "\n"};
  for (int i = 0; i < 3; ++i) {
    if (i > 0) {
      f = {};
      f.set_config("activation", values[i - 1]);
    }
    try {
      (void)ef::load_model<float>(f.write("long"));
      ADD_FAILURE() << "accepted";
    } catch (const ef::config_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("long.safetensors: config"), std::string::npos) << what.substr(0, 300);
      EXPECT_LT(what.size(), 500u) << what.substr(0, 300);
      EXPECT_NE(what.find("xxx..."), std::string::npos) << what.substr(0, 300);
      EXPECT_EQ(what.find('\n'), std::string::npos) << what.substr(0, 300);
    }
  }
}

TEST(LoaderHostile, NonFiniteWeightsAreRefused) {
  // Catches: loading NaN or infinite weights without a check; the model then computes NaN logits and
  // greedy decoding prints token 0 forever, with no error.
  const std::string name = "transformer.encoder.layers.0.linear1.weight";
  model_file f;
  f.tensors[name](17) = std::numeric_limits<float>::quiet_NaN();
  const auto nan_path = f.write("nan");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(nan_path), ef::format_error,
                                "nan.safetensors: tensor '" + name + "': NaN at element 17");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<double>(nan_path), ef::format_error, "': NaN at element 17");
  for (auto storage : {ef::io::dtype::f16, ef::io::dtype::bf16, ef::io::dtype::f64}) {
    EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("nan", storage)), ef::format_error, "NaN at element 17");
  }
  f = {};
  f.tensors["generator.bias"](18) = std::numeric_limits<float>::infinity();
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<double>(f.write("inf")), ef::format_error,
                                "inf.safetensors: tensor 'generator.bias': +Inf at element 18");
  f = {};
  f.tensors["transformer.decoder.norm.bias"](0) = -std::numeric_limits<float>::infinity();
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("inf")), ef::format_error,
                                "tensor 'transformer.decoder.norm.bias': -Inf at element 0");
  // Stored as F16, 70000 overflows to +Inf (the writer rounds it so): refused as well.
  f = {};
  f.tensors["generator.bias"](3) = 70000.0f;
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(f.write("f16", ef::io::dtype::f16)), ef::format_error,
                                "tensor 'generator.bias': +Inf at element 3");
  EXPECT_NO_THROW((void)ef::load_model<float>(f.write("f32")));
}

TEST(LoaderHostile, TruncatedOrOddFilesNameTheFile) {
  // Catches: a truncated file read through a memory map (SIGBUS) or reported without its name.
  model_file f;
  const auto path = f.write("cut");
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(path), ef::format_error, path + ": ");
  // Catches: open() before the file type check, blocking forever on a FIFO.
  const auto fifo = std::filesystem::path(path).replace_filename("fifo.safetensors");
  EXPECT_EQ(message_for_fifo(fifo, [&] { (void)ef::load_model<float>(fifo); }), fifo.string() + ": not a regular file");
  // Catches: passing "" to open(), which reports ": cannot open: No such file or directory".
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(""), ef::error, "empty path");
}
