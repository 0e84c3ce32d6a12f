// Text in, text out (include/eigenformer/text/): the tokenizers of the Marian, mBART and M2M100
// fixtures against what transformers' own tokenizers recorded (tests/fixtures/hf/<case>/text_*.txt,
// tools/hf/make_hf_fixtures.py), the translator on Hugging Face and CTranslate2 directories, the
// target language, and hostile tokenizer files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <eigenformer/text/translator.hpp>

#include "support/hf_fixtures.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
namespace fs = std::filesystem;
using ef::token_id;
using ef::text::tokenizer;
using ef::text::translator;
using namespace ef::testing;

namespace {

std::vector<std::string> text_lines(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

const char* const text_cases[] = {"marian", "mbart", "m2m100"};

/// A CTranslate2 fixture folder with the tokenizer files of its Hugging Face case copied beside
/// model.bin, as `ct2-transformers-converter --copy_files` leaves them.
fs::path ct2_with_tokenizer(const std::string& ct2_name, const std::string& hf_name) {
  const fs::path dir = scratch_copy(ct2_name, "text", ct2_name);
  for (const char* f : {"tokenizer_config.json", "source.spm", "target.spm", "sentencepiece.bpe.model"}) {
    if (fs::exists(hf_root() / hf_name / f)) fs::copy_file(hf_root() / hf_name / f, dir / f);
  }
  return dir;
}

/// Expects `f` to throw E whose message contains every needle, on one line.
template <class E, class F>
void expect_throw(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << what << "\nexpected: " << n;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

}  // namespace

// Source ids equal transformers' tokenizer(text)["input_ids"]. Catches: a missing </s>, the language
// code on the wrong side (mBART after </s>, M2M100 first), no fairseq offset (mBART piece i at i + 1),
// pieces mapped by SentencePiece's ids instead of vocab.json (Marian, M2M100).
TEST(Tokenizer, EncodesAsTransformers) {
  for (const std::string name : text_cases) {
    const fs::path dir = hf_root() / name;
    const tokenizer t = tokenizer::load(dir);
    const auto texts = text_lines(dir / "text_src.txt");
    const auto want = id_lines(dir / "text_src_ids.txt");
    ASSERT_EQ(texts.size(), want.size()) << name;
    for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(t.encode(texts[i]), want[i]) << name << " line " << i;
  }
}

// NLLB-200's tokenizer (tests/fixtures/hf/nllb_tokenizer, tools/hf/make_nllb_tokenizer_fixture.py):
// fairseq ids over the SentencePiece model, 202 language codes from added_tokens_decoder, the source
// code first (legacy_behaviour: after </s>), the target code forced first. Catches the M2M100 rule
// (__xx__ tokens, vocab.json) applied to NLLB, codes at the wrong ids, the legacy order ignored.
TEST(Tokenizer, NllbEncodesAndDecodesAsTransformers) {
  const fs::path dir = hf_root() / "nllb_tokenizer";
  const auto texts = text_lines(dir / "text_src.txt");
  for (const std::string src : {"eng_Latn", "fra_Latn"}) {
    const tokenizer t = tokenizer::load(dir, {.source = src});
    const auto want = id_lines(dir / (src + "_ids.txt"));
    ASSERT_EQ(texts.size(), want.size());
    for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(t.encode(texts[i]), want[i]) << src << " line " << i;
  }
  const tokenizer t = tokenizer::load(dir, {.target = "deu_Latn"});
  ASSERT_EQ(t.target().prefix.size(), 1u);
  EXPECT_EQ(t.target().prefix[0], 103);  // deu_Latn, forced as the first token
  EXPECT_FALSE(t.target().start_token);
  const auto ids = id_lines(dir / "decode_ids.txt");
  const auto want = text_lines(dir / "decode.txt");
  ASSERT_EQ(ids.size(), want.size());
  for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(t.decode(ids[i]), want[i]) << "line " << i;

  const fs::path legacy = scratch_copy("nllb_tokenizer", "text", "nllb_legacy");
  nlohmann::json config = nlohmann::json::parse(std::ifstream(legacy / "tokenizer_config.json"));
  config["legacy_behaviour"] = true;
  std::ofstream(legacy / "tokenizer_config.json") << config.dump();
  const tokenizer old = tokenizer::load(legacy);
  const auto want_legacy = id_lines(dir / "legacy_ids.txt");
  for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(old.encode(texts[i]), want_legacy[i]) << "line " << i;
}

// Llama's tokenizer (tests/fixtures/lm/llama_text, tools/hf/make_llama_text_fixture.py): a BPE
// SentencePiece model with byte fallback, saved by transformers' LlamaTokenizer with "legacy": false.
// Catches: no <s> (add_bos_token), the dummy prefix given to every stretch in non-legacy mode or to
// none in legacy mode (the " a leading space", "stop </s> inside" and "<s>starts with bos" lines
// differ between the two), a literal "</s>" or "<s>" read as text instead of as its token, byte
// pieces (<0xF0> ... for the emoji and CJK) mapped to <unk>, a "▁" for the empty line.
TEST(Tokenizer, LlamaEncodesAndDecodesAsTransformers) {
  const fs::path dir = fixture_root() / "lm" / "llama_text";
  const auto texts = text_lines(dir / "text.txt");
  const tokenizer t = tokenizer::load(dir);
  EXPECT_EQ(t.family(), ef::text::tokenizer_family::llama);
  const auto want = id_lines(dir / "ids.txt");
  ASSERT_EQ(texts.size(), want.size());
  for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(t.encode(texts[i]), want[i]) << "line " << i << ": " << texts[i];

  const auto ids = id_lines(dir / "decode_ids.txt");
  const auto decoded = text_lines(dir / "decode.txt");
  ASSERT_EQ(ids.size(), decoded.size());
  for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(t.decode(ids[i]), decoded[i]) << "line " << i;

  const fs::path legacy = fs::path(EIGENFORMER_TEST_TMP) / "text" / "llama_legacy";
  fs::remove_all(legacy);
  fs::create_directories(legacy.parent_path());
  fs::copy(dir, legacy, fs::copy_options::recursive);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(legacy / "tokenizer_config.json"));
  config["legacy"] = true;
  std::ofstream(legacy / "tokenizer_config.json") << config.dump();
  const tokenizer old = tokenizer::load(legacy);
  const auto want_legacy = id_lines(dir / "legacy_ids.txt");
  ASSERT_EQ(texts.size(), want_legacy.size());
  std::size_t differ = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(old.encode(texts[i]), want_legacy[i]) << "legacy line " << i << ": " << texts[i];
    differ += want[i] != want_legacy[i];
  }
  EXPECT_GT(differ, 0u) << "the fixture no longer tells legacy from non-legacy tokenization";
  expect_throw<ef::invalid_argument>([&] { (void)tokenizer::load(dir, {.source = "en"}); }, {"--src-lang", "no language"});
}

// A Llama model with its tokenizer.model continues text prompts as transformers' greedy generate()
// and decode(new ids, skip_special_tokens=True) do (greedy_ids.txt, greedy.txt). Catches: the prompt
// printed with the continuation, the prompt's <s> missing (other logits, other ids), the prefix
// space of the first new piece kept, ends stripped.
TEST(Translator, LlamaContinuesTextPrompts) {
  const fs::path dir = fixture_root() / "lm" / "llama_text";
  const translator t(dir);
  ASSERT_TRUE(t.model().config().decoder_only());
  const auto prompts = text_lines(dir / "prompts.txt");
  ef::generation_options o;
  o.max_new_tokens = 12;
  std::vector<std::vector<token_id>> ids;
  for (const auto& p : prompts) ids.push_back(t.encode(p));
  const auto results = t.generate(ids, o);
  const auto want_ids = id_lines(dir / "greedy_ids.txt");
  ASSERT_EQ(results.size(), want_ids.size());
  for (std::size_t i = 0; i < results.size(); ++i) EXPECT_EQ(results[i].best().tokens, want_ids[i]) << "prompt " << i;
  EXPECT_EQ(t.translate(prompts, o), text_lines(dir / "greedy.txt"));
}

// decode(ids) equals transformers' batch_decode(skip_special_tokens=True). Catches: special or
// language tokens left in, "▁" left in the text, pieces of the source side's vocabulary, no strip.
TEST(Tokenizer, DecodesAsTransformers) {
  for (const std::string name : text_cases) {
    const fs::path dir = hf_root() / name;
    const tokenizer t = tokenizer::load(dir);
    const auto ids = id_lines(dir / "text_greedy_ids.txt");
    const auto want = text_lines(dir / "text_greedy.txt");
    ASSERT_EQ(ids.size(), want.size()) << name;
    for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(t.decode(ids[i]), want[i]) << name << " line " << i;
  }
  // m2m100's text output starts with the forced __de__ (68): decoding drops it, and eos (2) and pad (1).
  const tokenizer m2m = tokenizer::load(hf_root() / "m2m100");
  const std::vector<token_id> with_specials = {68, 37, 2, 1};
  EXPECT_EQ(m2m.decode(with_specials), m2m.decode(std::vector<token_id>{37}));
  EXPECT_FALSE(m2m.decode(std::vector<token_id>{37}).empty());
}

// The translator gives transformers' greedy text on every family: tokenizer, model, target language
// (m2m100 forces __de__ from its config) and detokenizer together. Catches any of them wrong, and a
// batch whose sequences leak into each other.
TEST(Translator, HuggingFaceGreedyText) {
  for (const std::string name : text_cases) {
    const fs::path dir = hf_root() / name;
    const translator t(dir);
    ef::generation_options g;
    g.max_new_tokens = 20;
    EXPECT_EQ(t.translate(text_lines(dir / "text_src.txt"), g), text_lines(dir / "text_greedy.txt")) << name;
    // One text at a time: the same strings.
    const auto texts = text_lines(dir / "text_src.txt");
    EXPECT_EQ(t.translate(texts[1], g), text_lines(dir / "text_greedy.txt")[1]) << name;
  }
}

// Beam search and n-best through the translator: the text of generate()'s hypotheses on the recorded
// source ids. Catches options dropped on the way (beam_size ignored), or the best hypothesis not
// the one decoded.
TEST(Translator, BeamSearchText) {
  const fs::path dir = hf_root() / "m2m100";
  const translator t(dir);
  ef::generation_options g;
  g.max_new_tokens = 20;
  g.beam_size = 4;
  const auto got = t.translate(text_lines(dir / "text_src.txt"), g);
  const auto results = ef::generate(t.model(), ef::token_batch::from_sequences(id_lines(dir / "text_src_ids.txt")), g);
  ASSERT_EQ(got.size(), results.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], t.tokenizer().decode(results[i].best().tokens)) << i;
  g.beam_size = 1;
  EXPECT_NE(got, t.translate(text_lines(dir / "text_src.txt"), g));  // the fixture's beams differ from greedy
}

// CTranslate2 directories with the tokenizer files copied in: the vocabulary comes from the
// conversion (Marian's lacks <pad>), the mBART start token (null in its config.json) from
// tokenizer_config.json's tgt_lang, m2m100's forced __de__ (CTranslate2 leaves it to the caller) too.
// Catches: ids taken from vocab.json instead of the conversion's vocabulary, a missing start token or
// target prefix.
TEST(Translator, CTranslate2GreedyText) {
  for (const std::string name : text_cases) {
    const fs::path dir = ct2_with_tokenizer(name + "_ct2_float32", name);
    const translator t(dir);
    ef::generation_options g;
    g.max_new_tokens = 20;
    EXPECT_EQ(t.translate(text_lines(hf_root() / name / "text_src.txt"), g), text_lines(hf_root() / name / "text_greedy.txt"))
        << name;
  }
}

// --tgt-lang: M2M100 forces the language token first (dropped from the text), mBART starts the
// decoder from the code (never generated). Catches: the language given as the wrong mechanism, or
// ignored (output equal to the default language's).
TEST(Translator, TargetLanguage) {
  const auto texts = text_lines(hf_root() / "m2m100" / "text_src.txt");
  const translator ru(hf_root() / "m2m100", {.source = "en", .target = "ru"});
  const auto ids = ru.encode(texts[0]);
  EXPECT_EQ(ids.front(), 61);  // __en__
  ef::generation_options g;
  g.max_new_tokens = 20;
  const auto r = ru.generate(std::vector<std::vector<token_id>>{ids}, g);
  ASSERT_FALSE(r[0].best().tokens.empty());
  EXPECT_EQ(r[0].best().tokens.front(), 66);  // __ru__ forced, in place of the config's __de__
  EXPECT_EQ(ru.decode(r[0].best()).find("__"), std::string::npos);
  const translator plain(hf_root() / "m2m100");  // the config's forced __de__ (68)
  EXPECT_EQ(plain.generate(std::vector<std::vector<token_id>>{ids}, g)[0].best().tokens.front(), 68);

  const translator de_de(hf_root() / "mbart", {.target = "de_DE"});
  const auto src = de_de.encode(texts[0]);
  const auto got = de_de.generate(std::vector<std::vector<token_id>>{src}, g);
  ef::generation_options manual = g;  // what the start token means: generate() from de_DE (67)
  manual.start_token = 67;
  const auto want = ef::generate(de_de.model(), ef::token_batch::from_sequences({src}), manual);
  EXPECT_EQ(got[0].best().tokens, want[0].best().tokens);
  EXPECT_TRUE(got[0].best().tokens.empty() || got[0].best().tokens.front() != 67);
  const auto default_start = ef::generate(de_de.model(), ef::token_batch::from_sequences({src}), g);
  EXPECT_NE(got[0].best().tokens, default_start[0].best().tokens);  // ro_RO (84) is the config's start
}

// generation_options::start_token: the model's own start token changes nothing; an id outside the
// vocabulary is refused by name. Catches a start token read but not validated, or applied twice.
TEST(Translator, StartTokenOption) {
  const auto m = ef::load_model<float>(hf_root() / "mbart");
  const auto src = ef::token_batch::from_sequences(id_lines(hf_root() / "mbart" / "src.txt"));
  ef::generation_options g;
  g.max_new_tokens = 20;
  const auto plain = ef::generate(m, src, g);
  g.start_token = m.config().bos_id;
  const auto same = ef::generate(m, src, g);
  for (std::size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(plain[i].best().tokens, same[i].best().tokens);
  g.start_token = 91;
  expect_throw<ef::invalid_argument>([&] { ef::generate(m, src, g); }, {"start_token", "91"});
}

// A Marian ">>xx<<" code opening the text is a token of its own, the rest SentencePiece's (as
// MarianTokenizer); unknown to this vocabulary it maps to <unk>. Catches the code fed to
// SentencePiece as text, or dropped.
TEST(Tokenizer, MarianLanguageCode) {
  const tokenizer t = tokenizer::load(hf_root() / "marian");
  auto tokens = t.source_tokens(">>de<< the red cat");
  ASSERT_FALSE(tokens.empty());
  EXPECT_EQ(tokens.front(), ">>de<<");
  tokens.erase(tokens.begin());
  EXPECT_EQ(tokens, t.source_tokens("the red cat"));
  EXPECT_EQ(t.encode(">>de<< the red cat").front(), 1);  // <unk>
}

// transformers' clean_up_tokenization (clean_up_tokenization_spaces true). Catches rules missing or
// applied to the wrong side of the space.
TEST(Tokenizer, CleanUpTokenizationSpaces) {
  using ef::text::detail_text::clean_up_tokenization;
  EXPECT_EQ(clean_up_tokenization("Hello , world . Is it ? yes ! I do n't , I 'm , it 's , we 've , they 're"),
            "Hello, world. Is it? yes! I don't, I'm, it's, we've, they're");
  EXPECT_EQ(clean_up_tokenization("no change"), "no change");
}

// A text whose ids exceed max_positions is refused, naming "text" and both counts.
TEST(Translator, TooLongText) {
  const translator t(hf_root() / "marian");
  std::string text;
  for (int i = 0; i < 80; ++i) text += "the ";
  expect_throw<ef::invalid_argument>([&] { t.encode(text); }, {"text", "expected at most 64"});
}

// Hostile tokenizer files: one-line errors naming the file and key or option.
TEST(Tokenizer, HostileFiles) {
  // Missing tokenizer_config.json (a model saved without its tokenizer).
  expect_throw<ef::format_error>([] { tokenizer::load(hf_root() / "bart"); }, {"tokenizer_config.json", "missing"});
  // Unknown tokenizer class.
  {
    const fs::path d = scratch_copy("m2m100", "text", "unknown_class");
    std::ofstream(d / "tokenizer_config.json") << R"({"tokenizer_class": "T5Tokenizer"})";
    expect_throw<ef::config_error>([&] { tokenizer::load(d); }, {"tokenizer_config.json", "tokenizer_class", "T5Tokenizer"});
  }
  // M2M100 without added_tokens_decoder: the language tokens' ids are unknown.
  {
    const fs::path d = scratch_copy("m2m100", "text", "no_added");
    std::ofstream(d / "tokenizer_config.json") << R"({"tokenizer_class": "M2M100Tokenizer", "src_lang": "en"})";
    expect_throw<ef::config_error>([&] { tokenizer::load(d); }, {"added_tokens_decoder", "missing"});
  }
  // A SentencePiece model that is not one.
  {
    const fs::path d = scratch_copy("mbart", "text", "bad_spm");
    std::ofstream(d / "sentencepiece.bpe.model", std::ios::binary) << "not a protobuf \x01\x02\x03";
    expect_throw<ef::format_error>([&] { tokenizer::load(d); }, {"sentencepiece.bpe.model", "not a SentencePiece model"});
  }
  // vocab.json with an id past its entries.
  {
    const fs::path d = scratch_copy("marian", "text", "bad_vocab");
    std::ofstream(d / "vocab.json") << R"({"</s>": 0, "<unk>": 1, "x": 7})";
    expect_throw<ef::format_error>([&] { tokenizer::load(d); }, {"vocab.json", "\"x\"", "id 7"});
  }
  // Languages the vocabulary lacks, or a Marian model given one.
  expect_throw<ef::invalid_argument>([] { tokenizer::load(hf_root() / "m2m100", {.source = "xx"}); }, {"--src-lang", "__xx__"});
  expect_throw<ef::invalid_argument>([] { tokenizer::load(hf_root() / "mbart", {.target = "de"}); }, {"--tgt-lang", "de"});
  expect_throw<ef::invalid_argument>([] { tokenizer::load(hf_root() / "marian", {.target = "de"}); }, {"--tgt-lang", ">>xx<<"});
}
