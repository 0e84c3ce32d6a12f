// g2p: the host-application example. Loads the bundled grapheme-to-phoneme model, turns each word
// on the command line into character ids with the model's vocabulary, generates, prints phonemes.
//
//   g2p examples/models/g2p.safetensors hello eigenformer
//   hello        HH AX L OW
//   eigenformer  ...
#include <eigenformer/eigenformer.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace ef = eigenformer;

// One token per line; the line number is the id.
std::vector<std::string> read_vocab(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ef::error(path + ": cannot open");
  std::vector<std::string> v;
  for (std::string line; std::getline(in, line);) v.push_back(line);
  return v;
}

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::cerr << "usage: g2p MODEL.safetensors WORD...\n";
    return 2;
  }
  const std::string model_path = argv[1];
  const auto model = ef::load_model<float>(model_path);
  const std::string dir = model_path.substr(0, model_path.find_last_of('/') + 1);
  const auto chars = read_vocab(dir + "g2p.src.vocab");    // <pad> <s> </s> <unk> a b ... z
  const auto phonemes = read_vocab(dir + "g2p.tgt.vocab");  // <pad> <s> </s> AA AE ...

  std::vector<std::vector<ef::token_id>> words;
  for (int i = 2; i < argc; ++i) {
    std::vector<ef::token_id> ids;
    for (char c : std::string(argv[i])) {
      const auto it = std::find(chars.begin(), chars.end(), std::string(1, char(std::tolower(c))));
      ids.push_back(it == chars.end() ? 3 : ef::token_id(it - chars.begin()));  // 3 = <unk>
    }
    words.push_back(ids);
  }
  ef::generation_options options;
  options.max_new_tokens = 32;
  options.beam_size = 4;
  const auto results = ef::generate(model, ef::token_batch::from_sequences(words), options);
  for (std::size_t w = 0; w < results.size(); ++w) {
    std::cout << argv[w + 2] << "\t";
    for (ef::token_id p : results[w].best().tokens) std::cout << phonemes.at(std::size_t(p)) << ' ';
    std::cout << '\n';
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "g2p: " << e.what() << '\n';
  return 1;
}
