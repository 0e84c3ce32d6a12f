// eigenformer: the command-line tool of docs/cli.md.
//
//   eigenformer info     --model M
//   eigenformer score    --model M --src-file S --tgt-file T (--out O.npy | --summary | both) [--batch-size B]
//                        [--threads N]
//                        (a decoder-only model: --tgt-file alone; generate: each --src-file line is a prompt)
//   eigenformer generate --model M --src-file S [--max-new-tokens N] [sampling options] [--beam-size K]
//                        [--length-penalty A] [--target-prefix-file P] [--batch-size B] [--threads N]
//                        [--max-cache-bytes SIZE] [--stop-ids ID[,ID...]]
//   eigenformer translate --model DIR [--src-file S] [--src-lang L] [--tgt-lang L] [options of generate]
//   eigenformer sample   --logits L.npy --n N [sampling options]
//   sampling options: --temperature T (0 = greedy) --top-k K --top-p P --min-p P --seed S
//
// Token ids go in and out as text (one sequence a line, ids separated by spaces); arrays as
// float32 .npy. Every error is one line on stderr naming the file, line, tensor or option at
// fault, with exit status 1 (2 for a command-line mistake); so is a failed write to standard output
// (a full disk: "standard output: write error (...)"; a closed pipe ends the tool by SIGPIPE). Output files appear whole or
// not at all; --out writes through a symbolic link to its target and never replaces a read-only file.
#include <eigenformer/eigenformer.hpp>
#include <eigenformer/io/npy.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <unistd.h>

#include "token_file.hpp"

#if EIGENFORMER_HAVE_TEXT
#include <eigenformer/text/translator.hpp>
#endif

namespace ef = eigenformer;
namespace efs = eigenformer::sampling;
using ef::index_t;
using ef::token_id;
using eigenformer_cli::read_token_file;  // token_file.hpp: "src.txt:3: 'x1' is not a token id"

namespace {

/// A mistake on the command line (exit status 2).
struct usage_error : ef::error {
  using ef::error::error;
};

const char* const usage_text =
    "usage: eigenformer <command> [options]\n"
    "\n"
    "commands:\n"
    "  info      --model M                                   print the config, parameter count and tensor dtypes\n"
    "  score     --model M --src-file S --tgt-file T --out O.npy\n"
    "                                                        teacher-forced log-probabilities [B, T_max, V]\n"
    "                                                        (--summary: per-line NLL and perplexity)\n"
    "  generate  --model M --src-file S                      decode every line of S, print one line of ids each\n"
    "  translate --model DIR [--src-file S]                  text in, text out, with the model's own tokenizer\n"
    "  sample    --logits L.npy --n N                        draw N tokens from logits [V], print V counts\n"
    "\n"
    "run 'eigenformer <command> --help' for the options of a command\n";

const std::map<std::string, std::string> command_help = {
    {"info",
     "usage: eigenformer info --model M [--weights TYPE]\n"
     "  Prints the model's config, its parameter count, the weight type in use with the bytes the parameters\n"
     "  take in memory, the KV cache bytes per token (float32, key/value heads only) and how many tensors are\n"
     "  stored in each dtype.\n"
     "  --weights TYPE            how weight matrices are held and multiplied: float32 (default, exact),\n"
     "                            bfloat16, float16 or int8, converted once at load (a CTranslate2 model\n"
     "                            stored in int8 loads as int8 unless told otherwise)\n"},
    {"score",
     "usage: eigenformer score --model M --src-file S --tgt-file T [--out O.npy] [--summary] [--batch-size B]\n"
     "                         [--threads N]\n"
     "  Teacher forcing: line n of T is the decoder input for line n of S, used as given (no BOS added).\n"
     "  A decoder-only model (Llama family) takes --tgt-file alone: row t of a line predicts its token t + 1.\n"
     "  --out O.npy   writes float32 log-probabilities [lines, longest T line, tgt_vocab_size]; positions past\n"
     "                a line's end hold 0\n"
     "  --summary     prints, per line of T, the number of predicted tokens (its T - 1 tokens after the first),\n"
     "                their mean negative log-likelihood in nats (natural log) and the perplexity exp(nll),\n"
     "                tab-separated under a header, then a line 'all' (token-weighted over every line); a line\n"
     "                of fewer than 2 tokens predicts nothing: 0 and nan. One of --out and --summary is needed;\n"
     "                with both, the file is written first (whole or not at all), then the summary.\n"
     "  All lines run as one padded batch unless --batch-size splits them (the same numbers, to float rounding);\n"
     "  --summary alone: 32 lines a batch by default.\n"
     "  --threads N   threads to use (default: all cores; never more than the machine's cores)\n"
     "  --weights TYPE   how weight matrices are held and multiplied: float32 (default, exact),\n"
     "                 bfloat16, float16 or int8, converted once at load (a CTranslate2 model\n"
     "                 stored in int8 loads as int8 unless told otherwise)\n"},
    {"generate",
     "usage: eigenformer generate --model M --src-file S [options]\n"
     "  Decodes every line of S from bos_id until eos_id (not printed) or --max-new-tokens, and prints one\n"
     "  line of generated ids per source line, in order. Greedy unless a sampling option is given.\n"
     "  A decoder-only model takes each line of S as a prompt and prints only the ids that follow it.\n"
     "  --max-new-tokens N        default 128 (never more than the model's max_positions); a forced\n"
     "                            prefix counts towards it\n"
     "  --temperature T           0 = greedy\n"
     "  --top-k K                 keep the K most probable tokens (0 = off)\n"
     "  --top-p P                 keep the smallest set of most probable tokens with mass >= P, in (0, 1]\n"
     "  --min-p P                 keep tokens with probability >= P x the largest, in [0, 1]\n"
     "  --seed S                  same seed, same output (default 0)\n"
     "  --beam-size K             beam search with K beams (no sampling options)\n"
     "  --length-penalty A        beam search ranks hypotheses by score / length^A (default 1; accepted,\n"
     "                            and without effect, with one beam)\n"
     "  --target-prefix-file P    token ids, one line per line of S: line n's ids are forced as the first\n"
     "                            generated tokens of sequence n and printed with them (an empty line\n"
     "                            forces nothing)\n"
     "  --batch-size B            lines decoded together (default 32; the output does not depend on it)\n"
     "  --threads N               threads to use (default: all cores; never more than the machine's cores)\n"
     "  --max-cache-bytes SIZE    the most memory the KV cache and the search of one batch may take, checked\n"
     "                            before anything is allocated (default 16GiB; units kB MB GB TB KiB MiB GiB TiB)\n"
     "  --weights TYPE            how weight matrices are held and multiplied: float32 (default, exact),\n"
     "                            bfloat16, float16 or int8, converted once at load (a CTranslate2 model\n"
     "                            stored in int8 loads as int8 unless told otherwise)\n"
     "  --stop-ids ID[,ID...]     token ids that end a line as eos_id does (not printed); eos_id still ends it\n"
     "  Sampling options apply in the order temperature, top-k, top-p, min-p, then a draw.\n"},
    {"translate",
     "usage: eigenformer translate --model DIR [--src-file S] [--src-lang L] [--tgt-lang L] [options of generate]\n"
     "  Text in, text out: reads lines from S (default: standard input), tokenizes each with the model's own\n"
     "  tokenizer files (Hugging Face directory, or a CTranslate2 one with them copied beside model.bin:\n"
     "  tokenizer_config.json and the SentencePiece models), generates as generate does, and prints one\n"
     "  detokenized line per input line, in order (special tokens dropped).\n"
     "  --src-lang L   source language of a multilingual model: en (M2M100), en_XX (mBART), eng_Latn (NLLB);\n"
     "                 default tokenizer_config.json's src_lang\n"
     "  --tgt-lang L   target language: mBART starts the decoder from it, M2M100 and NLLB force it as the\n"
     "                 first token; default the model's own, else tokenizer_config.json's tgt_lang\n"
     "  Marian models take neither: a multilingual one reads a '>>xx<<' token opening the text.\n"
     "  Every option of generate applies (--target-prefix-file: token ids, replacing the language's prefix).\n"},
    {"sample",
     "usage: eigenformer sample --logits L.npy --n N [--temperature T] [--top-k K] [--top-p P] [--min-p P] [--seed S]\n"
     "  Applies the sampler chain to logits [V] (float32 or float64 .npy) and draws N tokens; prints one line\n"
     "  of V counts. It always draws: with no sampling option, from softmax(logits) (temperature 1);\n"
     "  --temperature 0 puts all N on the most probable token. Options as for generate; --length-penalty,\n"
     "  --batch-size and --threads are accepted and have no effect.\n"},
};

const std::map<std::string, std::set<std::string>> command_options = {
    {"info", {"model", "weights"}},
    {"score", {"model", "src-file", "tgt-file", "out", "batch-size", "threads", "summary", "weights"}},
    {"generate",
     {"model", "src-file", "max-new-tokens", "temperature", "top-k", "top-p", "min-p", "seed", "beam-size",
      "length-penalty", "target-prefix-file", "batch-size", "threads", "max-cache-bytes", "stop-ids", "weights"}},
    {"translate",
     {"model", "src-file", "src-lang", "tgt-lang", "max-new-tokens", "temperature", "top-k", "top-p", "min-p", "seed",
      "beam-size", "length-penalty", "target-prefix-file", "batch-size", "threads", "max-cache-bytes", "stop-ids",
      "weights"}},
    {"sample",
     {"logits", "n", "temperature", "top-k", "top-p", "min-p", "seed", "length-penalty", "batch-size", "threads"}},
};

/// Options that take no value (given or not): --summary.
const std::set<std::string> flag_options = {"summary"};

/// The options of one command: "--name value" pairs and flags, each given at most once.
class options {
 public:
  options(const std::string& command, int argc, char** argv) : command_(command) {
    const auto& allowed = command_options.at(command);
    for (int i = 2; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) throw usage_error(command + ": unexpected argument '" + ef::detail::text_excerpt(arg) + "'");
      std::string name = arg.substr(2), value;
      if (const auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        if (flag_options.count(name) && allowed.count(name)) throw usage_error("--" + name + ": takes no value");
      } else if (flag_options.count(name) && allowed.count(name)) {
        value = "1";  // a flag: present
      } else {
        if (!allowed.count(name)) throw usage_error(command + ": unknown option '--" + ef::detail::text_excerpt(name) + "'");
        if (i + 1 >= argc) throw usage_error("--" + name + ": missing value");
        value = argv[++i];
      }
      if (!allowed.count(name)) throw usage_error(command + ": unknown option '--" + ef::detail::text_excerpt(name) + "'");
      if (value.empty()) throw usage_error("--" + name + ": empty value");
      if (!values_.emplace(name, value).second) throw usage_error("--" + name + ": given twice");
    }
  }

  bool has(const std::string& name) const { return values_.count(name) != 0; }

  std::string required(const std::string& name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) throw usage_error(command_ + ": missing option --" + name + " (see --help)");
    return it->second;
  }

  template <class T>
  std::optional<T> number(const std::string& name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return std::nullopt;
    const std::string& s = it->second;
    T value{};
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) {
      throw usage_error("--" + name + ": '" + ef::detail::text_excerpt(s) + "' is not " +
                        (std::is_integral_v<T> ? "an integer" : "a number"));
    }
    if constexpr (std::is_floating_point_v<T>) {
      if (!std::isfinite(value)) throw usage_error("--" + name + ": '" + ef::detail::text_excerpt(s) + "' is not a finite number");
    }
    return value;
  }

  /// A size in bytes: an integer, optionally followed by a unit, kB MB GB TB (powers of 1000) or
  /// KiB MiB GiB TiB (powers of 1024): "64GB", "64 GiB", "5000000000".
  std::optional<std::uint64_t> bytes(const std::string& name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return std::nullopt;
    const std::string& s = it->second;
    std::uint64_t count = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), count);
    std::string_view unit(end, static_cast<std::size_t>(s.data() + s.size() - end));
    while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
    static const std::map<std::string_view, std::uint64_t> units = {
        {"", 1},           {"B", 1},          {"kB", 1000},      {"MB", 1000'000},    {"GB", 1000'000'000},
        {"TB", 1000'000'000'000}, {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30}, {"TiB", 1ull << 40}};
    const auto u = units.find(unit);
    if (ec != std::errc() || end == s.data() || u == units.end()) {
      throw usage_error("--" + name + ": '" + ef::detail::text_excerpt(s) +
                        "' is not a size, expected bytes or a number with kB, MB, GB, TB, KiB, MiB, GiB or TiB");
    }
    if (count > std::numeric_limits<std::uint64_t>::max() / u->second) {
      throw usage_error("--" + name + ": '" + ef::detail::text_excerpt(s) + "' is more than 2^64 bytes");
    }
    return count * u->second;
  }

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
};

/// Writes `text` to standard output; throws "standard output: write error (<reason>)" on failure.
void write_stdout(const std::string& text) {
  errno = 0;
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) {
    throw ef::error("standard output", std::string("write error (") + std::strerror(errno ? errno : EIO) + ")");
  }
}

/// Flushes std::cout and stdout and throws if any write to standard output failed (a full disk:
/// `> /dev/full`, a closed pipe), so that the tool never exits 0 with its output lost.
void finish_stdout() {
  // std::cout (synced with stdio) writes through stdout, and its flush() flushes stdout: the first
  // flush that fails sets errno, so keep the first one set.
  errno = 0;
  std::cout.flush();
  int err = errno;
  errno = 0;
  const bool flushed = std::fflush(stdout) == 0;
  if (err == 0) err = errno;
  if (!flushed || std::ferror(stdout) || !std::cout) {
    throw ef::error("standard output", std::string("write error (") + std::strerror(err ? err : EIO) + ")");
  }
}

/// --out, checked before any work: the library's writer follows symbolic links and refuses to
/// replace a read-only file (detail::writable_target); asking now fails fast, naming the option.
std::filesystem::path out_target(const std::string& path) {
  try {
    return ef::detail::writable_target(path);
  } catch (const ef::error& e) {
    throw ef::error("--out", e.what());
  }
}

/// Checks every line against a vocabulary and the model's longest sequence, naming file and line.
void check_lines(const std::string& path, const std::vector<std::vector<token_id>>& lines, index_t vocab, index_t longest,
                 const char* side, bool allow_empty) {
  for (std::size_t n = 0; n < lines.size(); ++n) {
    const std::string where = path + ":" + std::to_string(n + 1) + ": ";
    if (lines[n].empty() && !allow_empty) throw ef::format_error(where + "empty line, expected at least one token id");
    if (static_cast<index_t>(lines[n].size()) > longest) {
      throw ef::format_error(where + std::to_string(lines[n].size()) + " tokens, expected at most " + std::to_string(longest) +
                             " (max_positions)");
    }
    for (token_id id : lines[n]) {
      if (id < 0 || id >= vocab) {
        throw ef::format_error(where + "token id " + std::to_string(id) + " outside the " + side + " vocabulary (0 to " +
                               std::to_string(vocab - 1) + ")");
      }
    }
  }
}

void apply_threads(const options& o) {
  if (const auto n = o.number<int>("threads")) {
    if (*n < 1) throw usage_error("--threads: " + std::to_string(*n) + ", expected 1 or more");
    ef::set_num_threads(*n);
  }
}

/// --weights: the weight type to load with, or none (load_model's default).
std::optional<ef::weight_type> weights_option(const options& o) {
  if (!o.has("weights")) return std::nullopt;
  try {
    return ef::parse_weight_type(o.required("weights"), "--weights");
  } catch (const ef::invalid_argument& e) {
    throw usage_error(e.what());  // a bad option value: the usage status, as for the other options
  }
}

/// The model at `path`, its weight matrices as --weights says.
ef::model<float> load(const options& o, const std::string& path) {
  ef::load_options lo;
  lo.weights = weights_option(o);
  return ef::load_model<float>(path, lo);
}

index_t batch_size(const options& o, index_t fallback) {
  const auto b = o.number<index_t>("batch-size");
  if (b && *b < 1) throw usage_error("--batch-size: " + std::to_string(*b) + ", expected 1 or more");
  return b ? *b : fallback;
}

/// The library's names of the sampling options (the subject() of its errors) and the tool's.
const std::map<std::string, std::string> sampling_option_names = {
    {"temperature", "--temperature"}, {"top_k", "--top-k"}, {"top_p", "--top-p"}, {"min_p", "--min-p"}};

/// The sampler chain of the command line, or nullopt for greedy. With no sampling option the chain
/// is greedy, unless `draw_by_default`: then it draws from softmax(logits), as temperature 1 does.
/// Option errors name the option as the user typed it (--top-p). The seed is not the chain's: it
/// goes to the sampling context of each sequence (generation_options::seed).
std::optional<efs::chain> sampler_chain(const options& o, bool draw_by_default) {
  efs::sampling_options s;
  s.temperature = o.number<float>("temperature");
  s.top_k = o.number<index_t>("top-k");
  s.top_p = o.number<float>("top-p");
  s.min_p = o.number<float>("min-p");
  if (draw_by_default && !s.temperature && !s.top_k && !s.top_p && !s.min_p) s.temperature = 1.0f;
  try {
    auto chain = efs::make_chain(s);
    if (s.greedy()) return std::nullopt;
    return chain;
  } catch (const ef::invalid_argument& e) {
    const auto name = sampling_option_names.find(e.subject());
    if (name == sampling_option_names.end()) throw;
    throw usage_error(name->second, e.detail());  // the detail after the option the user typed
  }
}

/// One stored tensor, as info lists it.
struct stored_tensor {
  std::string name, dtype, shape;
};

/// What the model at `path` stores, and what kind of source it is: our file, a Hugging Face
/// directory's weight files or a CTranslate2 model.bin (told apart as load_model tells them).
std::vector<stored_tensor> stored_tensors(const std::string& path, std::string& kind) {
  std::vector<stored_tensor> out;
  if (ef::io::is_ct2_directory(path)) {
    const ef::io::ct2_directory dir(path);
    kind = "CTranslate2 " + dir.file().spec();
    static const char* const names[] = {"float32", "int8", "int16", "int32", "float16", "bfloat16"};
    for (const auto& [name, v] : dir.file().variables()) {
      const std::vector<index_t> dims(v.dims.begin(), v.dims.end());
      out.push_back({name, v.dtype < 6 ? names[v.dtype] : "?", ef::shape_string(dims)});
    }
    return out;
  }
  std::vector<ef::io::safetensors_file> files;
  if (ef::io::is_hf_directory(path)) {
    const ef::io::hf_directory dir(path);
    kind = "Hugging Face " + dir.model_type();
    for (const auto& f : dir.files()) files.emplace_back(f);
  } else {
    kind = "eigenformer";
    files.emplace_back(path);
  }
  for (const auto& file : files)
    for (const auto& t : file.tensors())
      out.push_back({t.name, std::string(ef::io::dtype_name(t.type)), ef::shape_string(t.shape)});
  return out;
}

int run_info(const options& o) {
  const std::string path = o.required("model");
  std::string kind;
  const auto tensors = stored_tensors(path, kind);
  const auto m = load(o, path);
  std::map<std::string, index_t> dtypes;
  for (const auto& t : tensors) ++dtypes[t.dtype];
  std::ostringstream out;  // written at once: a failed write is seen with its reason (errno)
  out << "model: " << path << " (" << kind << ")\n";
  out << "config: " << m.config().to_json().dump(2) << "\n";
  out << "parameters: " << m.parameter_count() << "\n";
  out << "weights: " << ef::weight_type_name(m.weights()) << ", " << m.weight_bytes() << " bytes in memory\n";
  // The self-attention KV cache of one token of one sequence, float32 as loaded: only the key/value
  // heads are cached (grouped-query attention), and a sequence of max_positions tokens holds that many.
  const auto& c = m.config();
  out << "kv cache: " << m.kv_bytes_per_token() << " bytes per token (" << c.n_decoder_layers << " layers x 2 x "
      << c.kv_heads() << " kv heads x " << c.d_head() << " x 4 bytes), " << m.kv_bytes_per_token() * std::uint64_t(c.max_sequence_length())
      << " bytes (" << ef::detail::bytes_string(m.kv_bytes_per_token() * std::uint64_t(c.max_sequence_length()))
      << ") per sequence of " << c.max_sequence_length() << " tokens (max_positions)";
  if (!c.decoder_only()) {  // the decoder's cross-attention keys and values of each source token, all heads
    out << "; cross-attention: " << std::uint64_t(c.n_decoder_layers) * 2u * std::uint64_t(c.d_model) * 4u
        << " bytes per source token";
  }
  out << "\n";
  out << "tensors: " << tensors.size() << " (";
  bool first = true;
  for (const auto& [name, count] : dtypes) {
    out << (first ? "" : ", ") << name << ": " << count;
    first = false;
  }
  out << ")\n";
  for (const auto& t : tensors) out << "  " << t.name << " " << t.dtype << " " << t.shape << "\n";
  write_stdout(out.str());
  finish_stdout();
  return 0;
}

/// score: teacher-forced log-probabilities of the --tgt-file lines, given the --src-file lines for an
/// encoder-decoder model (a decoder-only model takes --tgt-file alone). --out writes them all;
/// --summary prints each line's mean negative log-likelihood of its tokens 2..T and its perplexity.
int run_score(const options& o) {
  const std::string model_path = o.required("model"), tgt_path = o.required("tgt-file");
  const bool summary = o.has("summary");
  std::optional<std::filesystem::path> out_file;
  if (!summary && !o.has("out")) throw usage_error("score: missing option --out or --summary (see --help)");
  if (o.has("out")) out_file = out_target(o.required("out"));  // now: a read-only output is refused before any work
  apply_threads(o);
  const bool has_src = o.has("src-file");
  const std::string src_path = has_src ? o.required("src-file") : std::string();
  const auto src = has_src ? read_token_file(src_path) : std::vector<std::vector<token_id>>();
  const auto tgt = read_token_file(tgt_path);
  if (has_src && src.size() != tgt.size()) {
    throw ef::format_error(tgt_path + ": " + std::to_string(tgt.size()) + " lines, expected " + std::to_string(src.size()) +
                           " (one per line of " + src_path + ")");
  }
  const auto m = load(o, model_path);
  const auto& c = m.config();
  if (c.decoder_only() && has_src) throw usage_error("score: --src-file: a decoder-only model scores --tgt-file alone");
  if (!c.decoder_only() && !has_src) throw usage_error("score: missing option --src-file (see --help)");
  if (has_src) check_lines(src_path, src, c.src_vocab_size, c.max_sequence_length(), "source", false);
  check_lines(tgt_path, tgt, c.tgt_vocab_size, c.max_sequence_length(), "target", true);
  const index_t lines = static_cast<index_t>(tgt.size()), V = c.tgt_vocab_size;
  index_t T = 0;
  for (const auto& t : tgt) T = std::max<index_t>(T, static_cast<index_t>(t.size()));
  // Zero-filled: positions past a line's end stay 0. Only with --out: --summary alone keeps one batch.
  ef::tensor<float> out = out_file ? ef::tensor<float>({lines, T, V}) : ef::tensor<float>();
  std::vector<double> nll(static_cast<std::size_t>(lines), 0.0);  // per line: the sum of -log p(token t+1 | tokens <= t)
  // --summary alone: 32 lines a batch by default, so that memory does not grow with the file.
  const index_t B = batch_size(o, std::max<index_t>(out_file ? lines : std::min<index_t>(lines, 32), 1));
  for (index_t first = 0; first < lines; first += B) {
    const index_t n = std::min(B, lines - first);
    const std::vector<std::vector<token_id>> t(tgt.begin() + first, tgt.begin() + first + n);
    const auto lp = has_src ? m.score(ef::token_batch::from_sequences(std::vector<std::vector<token_id>>(
                                          src.begin() + first, src.begin() + first + n)),
                                      ef::token_batch::from_sequences(t))
                            : m.score(ef::token_batch::from_sequences(t));
    for (index_t b = 0; b < n; ++b) {
      const auto& line = t[static_cast<std::size_t>(b)];
      for (std::size_t p = 0; p + 1 < line.size(); ++p)  // row p predicts token p + 1
        nll[static_cast<std::size_t>(first + b)] -= lp(b, static_cast<index_t>(p), line[p + 1]);
      if (out_file)
        for (index_t p = 0; p < lp.dim(1); ++p) std::copy_n(&lp(b, p, 0), V, &out(first + b, p, 0));
    }
  }
  if (out_file) ef::io::write_npy(*out_file, out);  // first: a failed write prints no summary
  if (!summary) return 0;
  std::string text = "line\ttokens\tnll\tperplexity\n";
  const auto row = [&text](const std::string& name, std::size_t tokens, double sum) {
    const double mean = tokens ? sum / static_cast<double>(tokens) : std::numeric_limits<double>::quiet_NaN();
    char buf[128];
    std::snprintf(buf, sizeof buf, "\t%zu\t%.6f\t%.6g\n", tokens, mean, std::exp(mean));
    text += name + buf;
  };
  std::size_t all_tokens = 0;
  double all_sum = 0;
  for (std::size_t n = 0; n < tgt.size(); ++n) {
    const std::size_t predicted = tgt[n].size() > 1 ? tgt[n].size() - 1 : 0;
    row(std::to_string(n + 1), predicted, nll[n]);
    all_tokens += predicted;
    all_sum += nll[n];
  }
  row("all", all_tokens, all_sum);
  write_stdout(text);
  finish_stdout();
  return 0;
}

/// Where a batch of lines comes from: the file and the index of its first line (0-based).
struct line_origin {
  const std::string& path;
  index_t first = 0;
};

/// generate() on one batch of lines, its errors told in the tool's terms: the memory limit names
/// --max-cache-bytes, non-finite logits name the source file's line.
std::vector<ef::generation_result> generate_lines(const ef::model<float>& m, const std::vector<std::vector<token_id>>& lines,
                                                  const ef::generation_options& g, const line_origin& origin) {
  try {
    return ef::generate(m, ef::token_batch::from_sequences(lines), g);
  } catch (const ef::numeric_error& e) {
    throw ef::error(origin.path + ":" + std::to_string(origin.first + e.sequence() + 1),
                    "step " + std::to_string(e.step()) + ": the model's logits are not finite (NaN or Inf)");
  } catch (const ef::invalid_argument& e) {
    if (e.subject() != "max_cache_bytes") throw;
    throw ef::error("--max-cache-bytes", e.detail());
  }
}

/// The generation options of the command line (all but the prefix file); `chain` must outlive them.
ef::generation_options generation_from(const options& o, const std::optional<efs::chain>& chain) {
  ef::generation_options g;
  if (const auto n = o.number<index_t>("max-new-tokens")) {
    if (*n < 1) throw usage_error("--max-new-tokens: " + std::to_string(*n) + ", expected 1 or more");
    g.max_new_tokens = *n;
  }
  if (const auto k = o.number<index_t>("beam-size")) {
    if (*k < 1) throw usage_error("--beam-size: " + std::to_string(*k) + ", expected 1 or more");
    if (*k > 1 && chain) throw usage_error("--beam-size: beam search is deterministic, it takes no sampling option");
    g.beam_size = *k;
  }
  if (const auto a = o.number<double>("length-penalty")) g.length_penalty = *a;  // finite: number() checks
  if (const auto seed = o.number<std::uint64_t>("seed")) g.seed = *seed;
  if (chain) g.sampler = &*chain;
  if (const auto limit = o.bytes("max-cache-bytes")) g.max_cache_bytes = *limit;
  return g;
}

/// --stop-ids ID[,ID...]: the ids, checked against the model's target vocabulary, become end tokens
/// beside eos_id (which still ends a line). Without the option the model's eos_id alone ends a line.
void apply_stop_ids(const options& o, const ef::model_config& c, ef::generation_options& g) {
  if (!o.has("stop-ids")) return;
  const std::string s = o.required("stop-ids");
  g.end_tokens = {c.eos_id};
  std::size_t begin = 0;
  while (true) {
    const std::size_t end = std::min(s.find(',', begin), s.size());
    const std::string item = s.substr(begin, end - begin);
    long long id = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size()) {
      throw usage_error("--stop-ids: '" + ef::detail::text_excerpt(item) + "' is not a token id (expected ID[,ID...])");
    }
    if (id < 0 || id >= c.tgt_vocab_size) {
      throw usage_error("--stop-ids: token id " + std::to_string(id) + " outside the target vocabulary (0 to " +
                        std::to_string(c.tgt_vocab_size - 1) + ")");
    }
    g.end_tokens.push_back(static_cast<token_id>(id));
    if (end == s.size()) break;
    begin = end + 1;
  }
}

/// --target-prefix-file, read and checked against `lines` source lines and the model: one line per
/// source line, each at most --max-new-tokens ids of the target vocabulary, none the end token.
/// Empty when the option is not given.
std::vector<std::vector<token_id>> read_prefixes(const options& o, std::size_t lines, const std::string& src_name,
                                                 const ef::model_config& c, const ef::generation_options& g) {
  if (!o.has("target-prefix-file")) return {};
  const std::string path = o.required("target-prefix-file");
  auto prefixes = read_token_file(path);
  if (prefixes.size() != lines) {
    throw ef::format_error(path + ": " + std::to_string(prefixes.size()) + " lines, expected " + std::to_string(lines) +
                           " (one per line of " + src_name + ")");
  }
  // A prefix counts towards --max-new-tokens and may not hold the end token (it would end the line).
  check_lines(path, prefixes, c.tgt_vocab_size, c.max_sequence_length(), "target", true);
  for (std::size_t n = 0; n < prefixes.size(); ++n) {
    if (static_cast<index_t>(prefixes[n].size()) > g.max_new_tokens) {
      throw ef::format_error(path + ":" + std::to_string(n + 1) + ": " + std::to_string(prefixes[n].size()) +
                             " tokens, expected at most " + std::to_string(g.max_new_tokens) + " (--max-new-tokens)");
    }
    for (token_id id : prefixes[n]) {
      if (id == c.eos_id) {
        throw ef::format_error(path + ":" + std::to_string(n + 1) + ": token id " + std::to_string(id) +
                               " is the end token (eos_id), expected ids to force before it");
      }
      if (std::find(g.end_tokens.begin(), g.end_tokens.end(), id) != g.end_tokens.end()) {
        throw ef::format_error(path + ":" + std::to_string(n + 1) + ": token id " + std::to_string(id) +
                               " is one of --stop-ids, expected ids to force before it");
      }
    }
  }
  return prefixes;
}

/// Runs `lines` in batches of `batch`: each batch's options get that batch's prefixes (when there are
/// any) and its random streams, `prepare` may adjust them (translate: the target language), and
/// `print` turns each result into one output line; a batch is written before the next one runs.
template <class Prepare, class Print>
void generate_in_batches(const ef::model<float>& m, const std::vector<std::vector<token_id>>& lines, index_t batch,
                         ef::generation_options g, const std::vector<std::vector<token_id>>& prefixes,
                         const std::string& src_name, Prepare prepare, Print print) {
  const index_t n_lines = static_cast<index_t>(lines.size());
  std::string text;
  for (index_t first = 0; first < n_lines; first += batch) {
    const index_t n = std::min(batch, n_lines - first);
    const std::vector<std::vector<token_id>> s(lines.begin() + first, lines.begin() + first + n);
    if (!prefixes.empty()) g.prefix.assign(prefixes.begin() + first, prefixes.begin() + first + n);  // this batch's lines
    g.stream_offset = static_cast<std::uint64_t>(first);  // line i always draws from stream (seed, i)
    const auto results = generate_lines(m, s, prepare(g, n), {src_name, first});
    text.clear();
    for (const auto& r : results) print(text, r.best());
    write_stdout(text);
  }
  finish_stdout();
}

int run_generate(const options& o) {
  const std::string model_path = o.required("model"), src_path = o.required("src-file");
  apply_threads(o);
  const auto chain = sampler_chain(o, /*draw_by_default=*/false);
  ef::generation_options g = generation_from(o, chain);
  const index_t B = batch_size(o, 32);
  const auto src = read_token_file(src_path);
  const auto m = load(o, model_path);
  const auto& c = m.config();
  apply_stop_ids(o, c, g);
  check_lines(src_path, src, c.src_vocab_size, c.max_sequence_length(), "source", false);
  const auto prefixes = read_prefixes(o, src.size(), src_path, c, g);
  generate_in_batches(
      m, src, B, g, prefixes, src_path, [](const ef::generation_options& x, index_t) { return x; },
      [](std::string& text, const ef::hypothesis& h) {
        for (std::size_t i = 0; i < h.tokens.size(); ++i) {
          if (i) text += ' ';
          text += std::to_string(h.tokens[i]);
        }
        text += '\n';
      });
  return 0;
}

/// Lines of text from `in` ("\r\n" ends accepted); `name` starts the message of a read error.
std::vector<std::string> read_text_lines(std::istream& in, const std::string& name) {
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  if (in.bad()) throw ef::error(name + ": read error");
  return lines;
}

int run_translate(const options& o) {
#if EIGENFORMER_HAVE_TEXT
  const std::string model_path = o.required("model");
  apply_threads(o);
  const auto chain = sampler_chain(o, /*draw_by_default=*/false);
  ef::generation_options g = generation_from(o, chain);
  const index_t B = batch_size(o, 32);
  std::string src_name = "standard input";
  std::vector<std::string> texts;
  if (o.has("src-file")) {
    src_name = o.required("src-file");
    std::ifstream in(src_name, std::ios::binary);
    if (!in) throw ef::error(src_name + ": cannot open");
    texts = read_text_lines(in, src_name);
  } else {
    texts = read_text_lines(std::cin, src_name);
  }
  ef::text::languages langs;
  if (o.has("src-lang")) langs.source = o.required("src-lang");
  if (o.has("tgt-lang")) langs.target = o.required("tgt-lang");
  const ef::text::translator t(model_path, langs, weights_option(o));
  apply_stop_ids(o, t.model().config(), g);
  std::vector<std::vector<token_id>> src;
  src.reserve(texts.size());
  for (std::size_t n = 0; n < texts.size(); ++n) {
    try {
      src.push_back(t.encode(texts[n]));
    } catch (const ef::invalid_argument& e) {
      if (e.subject() != "text") throw;
      throw ef::format_error(src_name + ":" + std::to_string(n + 1) + ": " + std::string(e.detail()));
    }
  }
  const auto prefixes = read_prefixes(o, src.size(), src_name, t.model().config(), g);
  generate_in_batches(
      t.model(), src, B, g, prefixes, src_name,
      [&t](const ef::generation_options& x, index_t n) { return t.with_target(x, n); },
      [&t](std::string& text, const ef::hypothesis& h) {
        std::string line = t.decode(h);
        for (char& ch : line)
          if (ch == '\n' || ch == '\r') ch = ' ';  // one output line per input line, whatever the pieces hold
        text += line;
        text += '\n';
      });
  return 0;
#else
  (void)o;
  throw ef::error("this eigenformer was built without SentencePiece (Debian: libsentencepiece-dev), which text needs");
#endif
}

int run_sample(const options& o) {
  const std::string logits_path = o.required("logits");
  const auto n = o.number<index_t>("n");
  if (!n) throw usage_error("sample: missing option --n (see --help)");
  if (*n < 0) throw usage_error("--n: " + std::to_string(*n) + ", expected 0 or more");
  apply_threads(o);
  batch_size(o, 1);
  (void)o.number<double>("length-penalty");  // a common option (docs/cli.md): validated, no beams here
  auto chain = sampler_chain(o, /*draw_by_default=*/true);
  const auto logits = ef::io::read_npy<float>(logits_path);
  if (logits.rank() != 1) {
    throw ef::format_error(logits_path + ": shape " + logits.shape().str() + ", expected [V] (one row of logits)");
  }
  const index_t V = logits.size();
  efs::chain greedy_chain;  // --temperature 0
  greedy_chain.add(efs::greedy());
  efs::sampler& s = chain ? static_cast<efs::sampler&>(*chain) : greedy_chain;
  efs::candidates buffer(V);
  auto ctx = efs::sampling_context::for_sequence(o.number<std::uint64_t>("seed").value_or(0), 0);
  std::vector<std::int64_t> counts(static_cast<std::size_t>(V), 0);
  try {
    for (index_t i = 0; i < *n; ++i) {
      const token_id t = efs::sample(s, logits.values(), buffer, ctx);
      ++counts[static_cast<std::size_t>(t)];
    }
  } catch (const ef::invalid_argument& e) {
    if (e.subject() != "logits") throw;
    throw ef::format_error(logits_path, e.detail());  // "L.npy: NaN at token 1, expected a number"
  }
  std::string text;
  for (index_t v = 0; v < V; ++v) {
    if (v) text += ' ';
    text += std::to_string(counts[static_cast<std::size_t>(v)]);
  }
  text += '\n';
  write_stdout(text);
  finish_stdout();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << usage_text;
    return 2;
  }
  const std::string command = argv[1];
  // Help and version: exit 1 too if they could not be written.
  const auto print = [](const std::string& who, const std::string& text) {
    try {
      write_stdout(text);
      finish_stdout();
      return 0;
    } catch (const std::exception& e) {
      std::cerr << who << ": " << e.what() << "\n";
      return 1;
    }
  };
  if (command == "--help" || command == "-h" || command == "help") return print("eigenformer", usage_text);
  if (command == "--version") return print("eigenformer", std::string("eigenformer ") + EIGENFORMER_VERSION_STRING + "\n");
  if (!command_options.count(command)) {
    std::cerr << "eigenformer: unknown command '" << command << "' (expected info, score, generate, translate or sample)\n";
    return 2;
  }
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return print("eigenformer " + command, command_help.at(command));
  }
  try {
    const options o(command, argc, argv);
    if (command == "info") return run_info(o);
    if (command == "score") return run_score(o);
    if (command == "generate") return run_generate(o);
    if (command == "translate") return run_translate(o);
    return run_sample(o);
  } catch (const usage_error& e) {
    std::cerr << "eigenformer " << command << ": " << e.what() << "\n";
    return 2;
  } catch (const ef::error& e) {
    // The library's errors about the whole call (generate: ...) name the command already.
    std::cerr << "eigenformer " << command << ": " << (e.subject() == command ? std::string(e.detail()) : std::string(e.what()))
              << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "eigenformer " << command << ": " << e.what() << "\n";
    return 1;
  }
}
