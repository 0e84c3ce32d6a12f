// g2p_eval: the demo's measurement on the bundled G2P models. Decodes the held-out words that
// tools/train_g2p.py set aside (never seen in training), and prints
//   - word error rate (WER) and phoneme error rate (PER) against CMUdict, greedy and beam search;
//   - agreement with PyTorch's own greedy output on the same words (recorded by the training
//     script with the smallest top-1 / top-2 log-probability margin seen while decoding): a word
//     may differ only where that margin is below --margin (float rounding can flip such a tie);
//   - throughput in words per second.
//
//   g2p_eval --model examples/models/g2p.safetensors [--heldout FILE] [--limit N] [--beam K] [--check]
//            [--weights float32|bfloat16|float16|int8] [--margin M]
// With --check the exit status is 1 when a word differs from PyTorch at a margin >= --margin.
#include <eigenformer/eigenformer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ef = eigenformer;
using ef::token_id;

namespace {

struct heldout_word {
  std::string word;
  std::vector<std::string> reference, pytorch;  // CMUdict; PyTorch greedy
  double margin = 0;
};

std::vector<std::string> split(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string t; in >> t;) out.push_back(t);
  return out;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ef::error(path + ": cannot open");
  std::vector<std::string> v;
  for (std::string line; std::getline(in, line);) v.push_back(line);
  return v;
}

std::vector<heldout_word> read_heldout(const std::string& path, std::size_t limit) {
  std::vector<heldout_word> words;
  std::size_t number = 0;
  for (const auto& line : read_lines(path)) {
    ++number;
    std::vector<std::string> cols;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, '\t');) cols.push_back(c);
    if (cols.size() != 4) throw ef::format_error(path + ":" + std::to_string(number) + ": expected 4 tab-separated columns");
    words.push_back({cols[0], split(cols[1]), split(cols[2]), std::stod(cols[3])});
    if (words.size() == limit) break;
  }
  return words;
}

std::size_t edit_distance(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

struct run_result {
  std::vector<std::vector<std::string>> output;
  double seconds = 0;
};

run_result decode(const ef::model<float>& m, const std::vector<std::vector<token_id>>& words,
                  const std::vector<std::string>& phonemes, ef::index_t beam) {
  ef::generation_options o;
  o.max_new_tokens = 32;
  o.beam_size = beam;
  run_result r;
  const auto start = std::chrono::steady_clock::now();
  constexpr std::size_t batch = 32;
  for (std::size_t first = 0; first < words.size(); first += batch) {
    const std::vector<std::vector<token_id>> part(words.begin() + long(first),
                                                  words.begin() + long(std::min(words.size(), first + batch)));
    for (const auto& res : ef::generate(m, ef::token_batch::from_sequences(part), o)) {
      std::vector<std::string> out;
      for (token_id t : res.best().tokens) out.push_back(phonemes.at(std::size_t(t)));
      r.output.push_back(out);
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

void report(const char* name, const run_result& r, const std::vector<heldout_word>& words) {
  std::size_t wrong = 0, edits = 0, total = 0;
  for (std::size_t i = 0; i < words.size(); ++i) {
    wrong += r.output[i] != words[i].reference;
    edits += edit_distance(r.output[i], words[i].reference);
    total += words[i].reference.size();
  }
  std::printf("  %-8s WER %5.1f%%   PER %5.1f%%   %7.0f words/s\n", name, 100.0 * double(wrong) / double(words.size()),
              100.0 * double(edits) / double(total), double(words.size()) / r.seconds);
}

}  // namespace

int main(int argc, char** argv) try {
  std::string model_path, heldout_path;
  std::size_t limit = 0;
  ef::index_t beam = 4;
  double margin_tolerance = 1e-3;
  bool check = false;
  ef::load_options load_options;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw ef::invalid_argument(a + ": missing value");
      return argv[++i];
    };
    if (a == "--model") model_path = value();
    else if (a == "--heldout") heldout_path = value();
    else if (a == "--limit") limit = std::stoul(value());
    else if (a == "--beam") beam = std::stol(value());
    else if (a == "--margin") margin_tolerance = std::stod(value());
    else if (a == "--check") check = true;
    else if (a == "--weights") load_options.weights = ef::parse_weight_type(value(), "--weights");
    else throw ef::invalid_argument("unknown option '" + a + "'");
  }
  if (model_path.empty()) throw ef::invalid_argument("usage: g2p_eval --model M [--heldout F] [--limit N] [--beam K] [--check]");
  const std::string stem = model_path.substr(0, model_path.size() - std::string(".safetensors").size());
  const std::string dir = model_path.substr(0, model_path.find_last_of('/') + 1);
  if (heldout_path.empty()) heldout_path = stem + ".heldout.tsv";

  const auto m = ef::load_model<float>(model_path, load_options);
  const auto chars = read_lines(dir + "g2p.src.vocab");
  const auto phonemes = read_lines(dir + "g2p.tgt.vocab");
  const auto words = read_heldout(heldout_path, limit);
  std::vector<std::vector<token_id>> ids;
  for (const auto& w : words) {
    std::vector<token_id> s;
    for (char c : w.word) {
      const auto it = std::find(chars.begin(), chars.end(), std::string(1, c));
      s.push_back(it == chars.end() ? 3 : token_id(it - chars.begin()));
    }
    ids.push_back(s);
  }

  std::printf("%s: %zu held-out words, %lld parameters, %s weights, %d thread(s)\n", model_path.c_str(), words.size(),
              static_cast<long long>(m.parameter_count()), ef::weight_type_name(m.weights()), ef::num_threads());
  // What PyTorch measured on the same words (tools/train_g2p.py records it in the file's metadata).
  const auto meta = ef::io::safetensors_file(model_path).metadata();
  auto pct = [&](const char* key) {
    const auto it = meta.find(key);
    if (it == meta.end()) return std::string("?");
    char text[32];
    std::snprintf(text, sizeof text, "%.1f%%", std::stod(it->second) * 100);
    return std::string(text);
  };
  if (limit == 0 && meta.count("heldout_wer_greedy")) {
    std::printf("  PyTorch  greedy WER %s PER %s; beam 4 WER %s PER %s (its own beam search)\n",
                pct("heldout_wer_greedy").c_str(), pct("heldout_per_greedy").c_str(), pct("heldout_wer_beam4").c_str(),
                pct("heldout_per_beam4").c_str());
  }
  const auto greedy = decode(m, ids, phonemes, 1);
  report("greedy", greedy, words);
  if (beam > 1) report(("beam " + std::to_string(beam)).c_str(), decode(m, ids, phonemes, beam), words);

  std::size_t differ = 0, differ_unexcused = 0;
  for (std::size_t i = 0; i < words.size(); ++i) {
    if (greedy.output[i] == words[i].pytorch) continue;
    ++differ;
    if (words[i].margin >= margin_tolerance) {
      ++differ_unexcused;
      std::printf("  differs from PyTorch at margin %.3g: %s -> %s\n", words[i].margin, words[i].word.c_str(),
                  [&] {
                    std::string s;
                    for (const auto& p : greedy.output[i]) s += p + " ";
                    return s;
                  }().c_str());
    }
  }
  std::printf("  greedy output equals PyTorch's on %zu of %zu words; %zu differ, %zu of them at a top-2 margin >= %g\n",
              words.size() - differ, words.size(), differ, differ_unexcused, margin_tolerance);
  return check && differ_unexcused > 0 ? 1 : 0;
} catch (const std::exception& e) {
  std::cerr << "g2p_eval: " << e.what() << '\n';
  return 1;
}
