// fuzz/make_inputs.cpp: writes the seed corpora fuzz/corpus/<target>/ and the generated part of
// fuzz/regressions/<target>/ (the hostile inputs of issue 10, each small enough to keep in the
// repository). Deterministic: the same bytes on every run.
//
//   cmake --build build/release --target fuzz_make_inputs && build/release/fuzz/fuzz_make_inputs fuzz
//
// Seeds are small valid files and near-valid ones (every dtype, rank 0 and 5, empty tables, every
// config option), written with the library's own writers where it has one, so that the fuzzer starts
// from inputs that reach deep into each parser. Regressions are the inputs that crashed, hung,
// exhausted memory or flooded a message before the fixes of issue 10; inputs that libFuzzer finds are
// added to fuzz/regressions/ by hand (docs/fuzzing.md) and are not touched here.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <eigenformer/io/model_loader.hpp>
#include <eigenformer/io/npy.hpp>
#include <eigenformer/io/safetensors.hpp>

#include "support/random_model.hpp"

namespace ef = eigenformer;
namespace fs = std::filesystem;
using ef::index_t;

namespace {

fs::path root;

void write_bytes(const std::string& target, const std::string& kind, const std::string& name, const std::string& bytes) {
  const fs::path dir = root / kind / target;
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error((dir / name).string() + ": cannot write");
  std::printf("%-60s %7zu bytes\n", (fs::path(kind) / target / name).c_str(), bytes.size());
}
void seed(const std::string& target, const std::string& name, const std::string& bytes) {
  write_bytes(target, "corpus", name, bytes);
}
void regression(const std::string& target, const std::string& name, const std::string& bytes) {
  write_bytes(target, "regressions", name, bytes);
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// ---------------------------------------------------------------------------------------------
// safetensors

/// 8-byte little-endian length, the header padded with spaces to 8 bytes, the data.
std::string safetensors_bytes(std::string header, const std::string& data = "") {
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, std::uint64_t begin,
                  std::uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

void safetensors_inputs() {
  const fs::path tmp = fs::temp_directory_path() / "eigenformer_make_inputs.safetensors";
  ef::testing::filler fill(5);
  const auto a = fill.make<float>({2, 3});
  const auto b = fill.make<float>({4});
  for (const auto storage : {ef::io::dtype::f32, ef::io::dtype::bf16}) {
    ef::io::write_safetensors<float>(tmp, {{"a", a}, {"b", b}}, {{"format", "eigenformer"}}, storage);
    seed("safetensors", "two_tensors_" + std::string(ef::io::dtype_name(storage)) + ".safetensors", read_bytes(tmp));
  }
  fs::remove(tmp);

  // One tensor of every dtype, tiled in file order: elements chosen so that each is whole bytes.
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::uint64_t offset = 0;
  for (const auto& d : ef::detail::safetensors_dtypes) {
    const int count = d.bits == 6 ? 4 : 2;
    const std::uint64_t bytes = static_cast<std::uint64_t>(count * d.bits / 8);
    // Built with += : GCC 12 warns falsely (-Wrestrict) on "[" + std::to_string(...).
    std::string name = "t_", shape = "[";
    name += d.name;
    shape += std::to_string(count);
    shape += "]";
    header += ",";
    header += entry(name, std::string(d.name), shape, offset, offset + bytes);
    offset += bytes;
  }
  header += "}";
  std::string data;
  for (std::uint64_t i = 0; i < offset; ++i) data += static_cast<char>(0x3C + i % 7);
  seed("safetensors", "every_dtype.safetensors", safetensors_bytes(header, data));

  seed("safetensors", "empty.safetensors", safetensors_bytes("{}"));
  seed("safetensors", "null_metadata_scalar.safetensors",
       safetensors_bytes("{\"__metadata__\":null," + entry("s", "F64", "[]", 0, 8) + "}", std::string(8, '\x01')));
  // Rank 5 (the file accepts up to 8, read() only up to 4), zero-sized tensors, offsets out of name order.
  seed("safetensors", "rank5_and_empty.safetensors",
       safetensors_bytes("{" + entry("z", "F16", "[1,1,1,1,2]", 0, 4) + "," + entry("a", "F32", "[0,3]", 4, 4) + "," +
                             entry("m", "F16", "[2]", 4, 8) + "}",
                         std::string("\x00\x3C\x00\xC0\x00\x7C\xFF\x7B", 8)));

  // Issue 10's hostile headers.
  // 5,000 levels (issue 10 had 70,000) overflow the stack of the ASan build in a recursive dump().
  regression("safetensors", "nested_shape_5000.safetensors",
             safetensors_bytes(R"({"w":{"dtype":"F32","shape":)" + std::string(5'000, '[') + "1" +
                                   std::string(5'000, ']') + R"(,"data_offsets":[0,4]}})",
                               std::string(4, '\0')));
  regression("safetensors", "unterminated_string.safetensors", safetensors_bytes("{\"" + std::string(4096, 'a')));
  regression("safetensors", "long_dtype.safetensors",
             safetensors_bytes(R"({"w":{"dtype":")" + std::string(4096, 'a') + R"(","shape":[1],"data_offsets":[0,4]}})",
                               std::string(4, '\0')));
  regression("safetensors", "long_name_with_newline.safetensors",
             safetensors_bytes("{\"" + std::string(2048, 'n') + "\\n" + std::string(2048, 'n') + "\":3}"));
  regression("safetensors", "shape_2e32_2e32-1_0.safetensors",
             safetensors_bytes("{" + entry("z", "F32", "[4294967296,4294967295,0]", 0, 0) + "}"));
  regression("safetensors", "element_count_overflow.safetensors",
             safetensors_bytes("{" + entry("w", "F32", "[1099511627776,1099511627776]", 0, 4) + "}", std::string(4, '\0')));
  regression("safetensors", "byte_count_overflow.safetensors",
             safetensors_bytes("{" + entry("w", "F32", "[4611686018427387904]", 0, 4) + "}", std::string(4, '\0')));
  regression("safetensors", "header_length_2e63.safetensors",
             std::string("\0\0\0\0\0\0\0\x80{}", 10));
  regression("safetensors", "nul_in_header.safetensors", safetensors_bytes(std::string("{}\0{\"w\":1}", 9)));
}

// ---------------------------------------------------------------------------------------------
// model files

ef::model_config tiny_config() {
  ef::model_config c = ef::testing::small_config(4, 2);
  c.d_ff = 5;
  c.n_encoder_layers = c.n_decoder_layers = 1;
  c.src_vocab_size = 7;
  c.tgt_vocab_size = 6;
  c.max_positions = 16;
  return c;
}

/// A complete model file for `c`, its config text replaced by `config_text` when given, after
/// `edit` changed its tensors.
template <class Edit>
std::string model_bytes(const ef::model_config& c, ef::io::dtype storage, std::uint64_t seed_value, Edit edit,
                        const std::string& config_text = "") {
  ef::testing::random_weights<float> rw(c, seed_value);
  std::map<std::string, ef::tensor<float>> tensors;
  for (const auto& name : rw.map().remaining()) tensors.emplace(name, *rw.map().find(name));
  edit(tensors);
  std::vector<ef::io::named_tensor<float>> list;
  for (const auto& [name, t] : tensors) list.push_back({name, t});
  const fs::path tmp = fs::temp_directory_path() / "eigenformer_make_inputs_model.safetensors";
  ef::io::write_safetensors<float>(tmp, list,
                                   {{"format", "eigenformer"}, {"config", config_text.empty() ? c.to_json().dump() : config_text}},
                                   storage);
  std::string bytes = read_bytes(tmp);
  fs::remove(tmp);
  return bytes;
}
std::string model_bytes(const ef::model_config& c, ef::io::dtype storage, std::uint64_t seed_value) {
  return model_bytes(c, storage, seed_value, [](auto&) {});
}

void model_inputs(std::vector<std::string>& configs) {
  const auto add = [&](const std::string& name, const ef::model_config& c, ef::io::dtype storage) {
    seed("loader", name + ".safetensors", model_bytes(c, storage, configs.size() + 1));
    configs.push_back(c.to_json().dump(1));
  };
  ef::model_config c = tiny_config();
  add("postln_relu_paper_f32", c, ef::io::dtype::f32);
  c = tiny_config();
  c.norm_first = true;
  c.activation_kind = ef::activation::gelu;
  c.positional = ef::positional_encoding::learned;
  c.max_positions = 5;
  c.position_offset = 2;
  c.src_vocab_size = c.tgt_vocab_size;
  c.share_embeddings = c.tie_output = true;
  add("preln_gelu_learned_tied_f16", c, ef::io::dtype::f16);
  c = tiny_config();
  c.activation_kind = ef::activation::gelu_tanh;
  c.sinusoidal = ef::sinusoidal_variant::marian;
  c.encoder_final_norm = c.decoder_final_norm = false;
  c.moe = ef::moe_config{.n_experts = 3, .top_k = 2, .gate_kind = ef::gate::noisy_top_k, .encoder_layers = {},
                         .decoder_layers = {0}};
  add("moe_noisy_top2_gelu_tanh_marian_bf16", c, ef::io::dtype::bf16);
  c = tiny_config();
  c.n_encoder_layers = 0;
  c.n_decoder_layers = 2;
  c.sinusoidal = ef::sinusoidal_variant::tensor2tensor;
  c.scale_embedding = false;
  c.moe = ef::moe_config{.n_experts = 2, .top_k = 1, .gate_kind = ef::gate::softmax, .encoder_layers = {},
                         .decoder_layers = {1}};
  add("no_encoder_layers_t2t_moe_softmax_f64", c, ef::io::dtype::f64);
  c = tiny_config();
  c.activation_kind = ef::activation::silu;
  c.embedding_norm = true;
  add("embedding_norm_silu_f16", c, ef::io::dtype::f16);

  // Issue 10's hostile model files.
  c = tiny_config();
  c.max_positions = std::numeric_limits<std::int32_t>::max();  // was a [max_positions, d_model] table
  regression("loader", "max_positions_2147483647.safetensors", model_bytes(c, ef::io::dtype::f16, 9));
  const std::string weight = "transformer.encoder.layers.0.linear1.weight";
  regression("loader", "nan_weight.safetensors", model_bytes(tiny_config(), ef::io::dtype::f32, 9, [&](auto& t) {
               t.at(weight)(3) = std::numeric_limits<float>::quiet_NaN();
             }));
  regression("loader", "inf_weight_f16.safetensors", model_bytes(tiny_config(), ef::io::dtype::f16, 9, [&](auto& t) {
               t.at("generator.bias")(1) = 70000.0f;  // beyond F16: stored as +Inf
             }));
  auto j = tiny_config().to_json();
  j["pad_id"] = 100000;
  regression("loader", "pad_id_out_of_range.safetensors", model_bytes(tiny_config(), ef::io::dtype::f16, 9, [](auto&) {}, j.dump()));
  j = tiny_config().to_json();
  j["architecture"] = nlohmann::json::parse(std::string(60, '[') + std::string(60, ']'));  // under the depth limit
  regression("loader", "nested_config_60.safetensors", model_bytes(tiny_config(), ef::io::dtype::f16, 9, [](auto&) {}, j.dump()));
  // Extra tensors at the end of the data section, of no elements: one whose shape the container
  // accepts but cannot index (2^32 x (2^32 - 1) x 0), one the model does not take, named at length.
  const auto with_extra_tensor = [&](const std::string& name, const std::string& shape) {
    const std::string bytes = model_bytes(tiny_config(), ef::io::dtype::f16, 9);
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    std::string header = bytes.substr(8, n);
    const std::string data = bytes.substr(8 + n);
    while (!header.empty() && header.back() == ' ') header.pop_back();
    header.pop_back();  // the closing brace
    header += "," + entry(name, "F32", shape, data.size(), data.size()) + "}";
    return safetensors_bytes(header, data);
  };
  regression("loader", "extra_tensor_2e32_2e32-1_0.safetensors", with_extra_tensor("zz", "[4294967296,4294967295,0]"));
  regression("loader", "unexpected_tensor_long_name.safetensors",
             with_extra_tensor(std::string(2048, 'x') + "\\n" + std::string(2048, 'x'), "[0]"));
}

// ---------------------------------------------------------------------------------------------
// config text

void config_inputs(const std::vector<std::string>& configs) {
  for (std::size_t i = 0; i < configs.size(); ++i) seed("config", "model_" + std::to_string(i) + ".json", configs[i]);
  seed("config", "required_keys_only.json",
       R"({"architecture":"encoder-decoder","d_model":8,"n_heads":2,"d_ff":16,"n_encoder_layers":1,)"
       R"("n_decoder_layers":1,"src_vocab_size":10,"tgt_vocab_size":10,"bos_id":1,"eos_id":2,"pad_id":0})");
  // "architecture" is read first: its value was quoted with a recursive dump(), which 5,000 levels
  // take past the stack of the ASan build (and past any sensible message length in every build).
  std::string nested = configs.front();
  const std::string architecture = "\"architecture\": \"encoder-decoder\"";
  nested.replace(nested.find(architecture), architecture.size(),
                 "\"architecture\": " + std::string(5'000, '[') + std::string(5'000, ']'));
  regression("config", "nested_architecture_5000.json", nested);
  regression("config", "unterminated_string.json", "{\"d_model\": \"" + std::string(4096, 'x'));
  auto j = tiny_config().to_json();
  j[std::string(2048, 'k') + "\n" + std::string(2048, 'k')] = 1;
  regression("config", "long_unknown_key.json", j.dump());
  j = tiny_config().to_json();
  j["max_positions"] = 2147483647;
  regression("config", "max_positions_2147483647.json", j.dump());
  j["max_positions"] = 2147483648LL;
  regression("config", "max_positions_2147483648.json", j.dump());
  j = tiny_config().to_json();
  j["pad_id"] = 100000;
  regression("config", "pad_id_out_of_range.json", j.dump());
  j = tiny_config().to_json();
  j["layer_norm_eps"] = -1e308;
  regression("config", "layer_norm_eps_-1e308.json", j.dump());
}

// ---------------------------------------------------------------------------------------------
// .npy

/// A version 1.0 .npy file with header dict `dict` (padded as NumPy pads it) and `data`.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  header.append(63 - (prefix + header.size()) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t i = 0; i < prefix - 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

void npy_inputs() {
  const fs::path tmp = fs::temp_directory_path() / "eigenformer_make_inputs.npy";
  ef::testing::filler fill(7);
  ef::io::write_npy(tmp, fill.make<float>({2, 3}));
  seed("npy", "f4_2x3.npy", read_bytes(tmp));
  ef::io::write_npy(tmp, fill.make<float>({3}), ef::io::npy_float::f16);
  seed("npy", "f2_3.npy", read_bytes(tmp));
  const std::vector<std::int64_t> ints{1, -2, 3, 4};
  const std::vector<index_t> shape{2, 2};
  ef::io::write_npy_ints(tmp, ints, shape);
  seed("npy", "i8_2x2.npy", read_bytes(tmp));
  fs::remove(tmp);
  seed("npy", "f8_rank0.npy", npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", std::string(8, '\x3F')));
  seed("npy", "b1_3_double_quotes.npy", npy_bytes(R"({"descr": "|b1", "shape": (3,), "fortran_order": False})", std::string("\x01\x00\x02", 3)));
  seed("npy", "u1_2L_v2.npy", npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2L,), }", "\xFF\x01", 2));
  seed("npy", "i4_fortran_1x2_v3.npy",
       npy_bytes("{'descr': '<i4', 'fortran_order': True, 'shape': (1, 2,), }", std::string(8, '\x02'), 3));
  seed("npy", "u8_2.npy", npy_bytes("{'descr': '<u8', 'fortran_order': False, 'shape': (2,), }", std::string(16, '\x7F')));
  seed("npy", "f4_0x5.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 5), }", ""));

  regression("npy", "shape_2e32_2e32-1_0.npy",
             npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967295, 0), }", ""));
  regression("npy", "element_count_overflow.npy",
             npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", ""));
  regression("npy", "unterminated_string.npy", npy_bytes("{'descr': '" + std::string(1024, 'f'), ""));
  regression("npy", "long_key.npy", npy_bytes("{'" + std::string(1024, 'k') + "': 1}", ""));
  regression("npy", "header_length_4294967295.npy", std::string("\x93NUMPY\x02\x00\xFF\xFF\xFF\xFF{}", 14));
  regression("npy", "nan_f4.npy",
             npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", std::string("\x00\x00\xC0\x7F", 4) +
                                                                                     std::string(8, '\0')));
}

// ---------------------------------------------------------------------------------------------
// token text

void token_inputs() {
  seed("token_file", "three_lines.txt", "5 6\n4\n1 3 4\n");
  seed("token_file", "tabs_crlf_empty_lines.txt", "3\t4  5\r\n\r\n\n12 0 2147483647\r\n7");
  seed("token_file", "negative_and_bad.txt", "1 -2 +3\n4 0x5 6\n");
  regression("token_file", "token_of_4096_digits.txt", "3 4\n5 " + std::string(4096, '7') + "\n");
  regression("token_file", "token_with_control_bytes.txt", std::string("1 \x01\x1b[2J\x7f\r2\n", 11));
  regression("token_file", "int32_overflow.txt", "2147483648 -2147483649\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FUZZ_DIR (the repository's fuzz/ folder)\n", argv[0]);
    return 2;
  }
  root = argv[1];
  std::vector<std::string> configs;
  safetensors_inputs();
  model_inputs(configs);
  config_inputs(configs);
  npy_inputs();
  token_inputs();
  return 0;
}
