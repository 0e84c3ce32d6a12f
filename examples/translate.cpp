// translate: a host application translating text with a model it already has, in a few lines.
//   translate DIR [TEXT...] [--src-lang L] [--tgt-lang L] [--beam-size K] [--max-new-tokens N]
// DIR is a Hugging Face model directory (with its tokenizer files) or a CTranslate2 directory (with
// them copied beside model.bin). Prints one translation per TEXT (default: "a red cat").
// Link eigenformer::text (SentencePiece).
#include <eigenformer/text/translator.hpp>

#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
  namespace ef = eigenformer;
  if (argc < 2) {
    std::cerr << "usage: translate DIR [TEXT...] [--src-lang L] [--tgt-lang L] [--beam-size K] [--max-new-tokens N]\n";
    return 2;
  }
  ef::text::languages languages;   // multilingual models: {.source = "en", .target = "de"}; empty: the tokenizer's defaults
  ef::generation_options options;  // greedy unless beam_size > 1 (or a sampler) is set
  std::vector<std::string> texts;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--src-lang" || a == "--tgt-lang" || a == "--beam-size" || a == "--max-new-tokens") && i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--src-lang") languages.source = v;
      if (a == "--tgt-lang") languages.target = v;
      if (a == "--beam-size") options.beam_size = std::stoi(v);
      if (a == "--max-new-tokens") options.max_new_tokens = std::stoi(v);
    } else {
      texts.push_back(a);
    }
  }
  if (texts.empty()) texts.push_back("a red cat");

  const ef::text::translator translator(argv[1], languages);     // the model and its tokenizer
  for (const std::string& out : translator.translate(texts, options)) std::cout << out << '\n';
  return 0;
} catch (const std::exception& e) {   // eigenformer::error names the file, key, option or language at fault
  std::cerr << "translate: " << e.what() << '\n';
  return 1;
}
