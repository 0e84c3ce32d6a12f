// text/tokenizer.hpp: text to token ids and back, as the model's own transformers tokenizer does,
// from the tokenizer files beside the weights (Hugging Face or CTranslate2 directory).
//
//   const text::tokenizer tok = text::tokenizer::load("m2m100_418M/", {.source = "en", .target = "de"});
//   std::vector<token_id> src = tok.encode("a red cat");      // __en__ ▁a ▁red ▁cat </s>, as ids
//   ... generate with tok.target() applied (text/translator.hpp does it) ...
//   std::string text = tok.decode(result.best().tokens);      // special tokens dropped
//
// The families, by tokenizer_config.json's "tokenizer_class" (transformers 4.46 semantics):
//
// | class | files | source ids | target language |
// |---|---|---|---|
// | MarianTokenizer | source.spm, target.spm, vocab.json | [>>xx<< code] pieces </s> | a ">>xx<<" code opening the text |
// | MBartTokenizer(Fast) | sentencepiece.bpe.model | pieces </s> src_lang | decoder start token = tgt_lang |
// | M2M100Tokenizer | sentencepiece.bpe.model, vocab.json | __src__ pieces </s> | forced first token __tgt__ |
// | NllbTokenizer(Fast) | sentencepiece.bpe.model | src_lang pieces </s> (legacy_behaviour: pieces </s> src_lang) | forced first token tgt_lang |
// | LlamaTokenizer(Fast) | tokenizer.model | [<s>] pieces [</s>] (add_bos_token, add_eos_token) | none: a decoder-only model's text is its prompt |
//
// Pieces are SentencePiece's segmentation; a piece maps to its id through the vocabulary, an
// unknown piece to the unknown token. The vocabulary (id -> token) is vocab.json (Marian, M2M100),
// fairseq's layout over the SentencePiece model (mBART, NLLB: <s> <pad> </s> <unk>, then piece i at
// id i + 1) or the SentencePiece model's own ids (Llama: piece i at id i, byte pieces included),
// with tokenizer_config.json's "added_tokens_decoder" (id -> token: the special tokens and
// language codes; transformers >= 4.34 writes it) laid over it. A CTranslate2 directory gives its
// own vocabulary (shared_vocabulary.* or source_/target_vocabulary.*) and takes the tokenizer files
// copied beside model.bin (ct2-transformers-converter --copy_files tokenizer_config.json source.spm ...).
//
// Llama (LlamaTokenizer, transformers 4.46): the text is first split at the added tokens
// (added_tokens_decoder: a literal "</s>" in a prompt is that token, as in transformers); each
// stretch between them is SentencePiece's segmentation. With "legacy": true (transformers' default)
// every stretch is encoded alone, SentencePiece's dummy prefix "▁" included; with "legacy": false
// only the text's start gets a "▁" (add_prefix_space) and a stretch that follows an added token gets
// none, which is computed as transformers does: encode "<unk>" + stretch and drop the pieces of
// "<unk>". Decoding drops the first piece's "▁" (add_prefix_space) and lets SentencePiece join the
// pieces (byte pieces <0xNN> become their bytes); the ends are not stripped.
//
// Decoding drops special tokens (transformers' skip_special_tokens=True), then joins the pieces as
// the family does (Marian, M2M100: SentencePiece's decode; mBART, NLLB: "▁" to space; Llama: above),
// strips the ends (not Llama), and applies clean_up_tokenization_spaces when tokenizer_config.json
// asks for it.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../detail/file.hpp"
#include "../detail/json_text.hpp"
#include "../error.hpp"
#include "../io/ct2_directory.hpp"
#include "../types.hpp"
#include "sentencepiece.hpp"

namespace eigenformer::text {

/// Whose rules the tokenizer follows (tokenizer_config.json's tokenizer_class).
enum class tokenizer_family { marian, mbart, m2m100, nllb, llama };

inline const char* family_name(tokenizer_family f) noexcept {
  switch (f) {
    case tokenizer_family::marian: return "MarianTokenizer";
    case tokenizer_family::mbart: return "MBartTokenizer";
    case tokenizer_family::m2m100: return "M2M100Tokenizer";
    case tokenizer_family::nllb: return "NllbTokenizer";
    case tokenizer_family::llama: return "LlamaTokenizer";
  }
  return "?";
}

/// Source and target language of a multilingual model, as its tokenizer names them ("en" for
/// M2M100, "en_XX" for mBART, "eng_Latn" for NLLB). Empty: tokenizer_config.json's src_lang /
/// tgt_lang.
struct languages {
  std::string source{};  // (default initialisers: {.target = "de"} leaves source empty without a warning)
  std::string target{};
};

/// What the decoder is told about the target language.
struct target_language {
  std::string token;                    // the language token ("ro_RO", "__de__"); empty: none
  bool explicit_choice = false;         // given by the caller, not tokenizer_config.json's default
  std::optional<token_id> start_token;  // mBART: the decoder starts from the language code
  std::vector<token_id> prefix;         // M2M100, NLLB: the language token forced as the first token
};

/// One side's tokens: id -> token, token -> id, which ids are special.
struct vocabulary {
  std::vector<std::string> tokens;                  // [size] "" where an id has no token
  std::unordered_map<std::string, token_id> ids;    // token -> id (the first id of a token listed twice)
  std::vector<char> special;                        // [size] 1: dropped when decoding
  index_t size() const noexcept { return static_cast<index_t>(tokens.size()); }
  std::optional<token_id> find(std::string_view token) const {
    const auto it = ids.find(std::string(token));
    if (it == ids.end()) return std::nullopt;
    return it->second;
  }
};

class tokenizer {
 public:
  /// Reads the tokenizer files of the Hugging Face or CTranslate2 directory `dir` (see the top).
  /// Throws config_error / format_error naming the file and key, and invalid_argument naming
  /// "--src-lang"/"--tgt-lang" for a language the vocabulary does not have.
  static tokenizer load(const std::filesystem::path& dir, const languages& langs = {});

  tokenizer_family family() const noexcept { return family_; }
  /// The source language in use ("" for Marian) and the target language's treatment.
  const std::string& source_language() const noexcept { return source_lang_; }
  const target_language& target() const noexcept { return target_; }
  const vocabulary& source_vocabulary() const noexcept { return src_; }
  const vocabulary& target_vocabulary() const noexcept { return separate_tgt_ ? *separate_tgt_ : src_; }

  /// The source token strings of `text`, special tokens added as the family's tokenizer adds them.
  std::vector<std::string> source_tokens(std::string_view text) const;
  /// The ids of source_tokens(text) (unknown pieces: the unknown token's id).
  std::vector<token_id> encode(std::string_view text) const;
  /// The text of generated ids (special tokens dropped; ids past the vocabulary read as the unknown token).
  std::string decode(std::span<const token_id> ids) const;

  tokenizer(tokenizer&&) noexcept = default;
  tokenizer& operator=(tokenizer&&) noexcept = default;

 private:
  tokenizer() = default;
  token_id source_id(const std::string& token) const {
    const auto id = src_.find(token);
    return id ? *id : src_unk_;
  }
  /// Llama: the pieces of `text` as LlamaTokenizer gives them (see the top).
  void llama_pieces(std::string_view text, std::vector<std::string>& tokens) const;

  tokenizer_family family_ = tokenizer_family::marian;
  std::filesystem::path dir_;
  std::optional<sentencepiece_model> source_sp_, target_sp_;  // the same file twice for all but Marian
  vocabulary src_;
  std::optional<vocabulary> separate_tgt_;   // CTranslate2 source_/target_vocabulary; unset: src_ serves both
  token_id src_unk_ = 0;
  std::string unk_token_, eos_token_, bos_token_;
  std::string source_lang_, source_lang_token_;
  target_language target_;
  bool nllb_legacy_ = false;       // NLLB's legacy_behaviour: the language code after </s>
  bool add_bos_ = false, add_eos_ = false;  // CTranslate2 config.json add_source_bos / add_source_eos
  bool clean_up_spaces_ = false;  // clean_up_tokenization_spaces
  // Llama only:
  bool llama_legacy_ = true;             // tokenizer_config.json "legacy" (transformers' default: true)
  bool add_prefix_space_ = true;         // "add_prefix_space"
  std::size_t unk_pieces_ = 0;           // how many pieces SentencePiece makes of the unknown token's text
  std::vector<std::string> added_texts_; // added_tokens_decoder's contents: the text splits at them
};

// ---------------------------------------------------------------------------------------------
// Implementation

namespace detail_text {

/// A special token's text in tokenizer_config.json: a string, or an AddedToken object {"content": ...}.
inline std::optional<std::string> token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) {
    const auto c = v.find("content");
    if (c != v.end() && c->is_string()) return c->get<std::string>();
  }
  return std::nullopt;
}

/// transformers' clean_up_tokenization: no space before punctuation and English contractions.
inline std::string clean_up_tokenization(std::string s) {
  static const std::pair<std::string_view, std::string_view> rules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
      {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : rules) {
    std::string out;
    std::size_t pos = 0;
    for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
      out.append(s, pos, hit - pos);
      out.append(to);
    }
    out.append(s, pos, std::string::npos);
    s = std::move(out);
  }
  return s;
}

inline std::string strip(std::string s) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  std::size_t b = 0, e = s.size();
  while (b < e && space(s[b])) ++b;
  while (e > b && space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

/// Sets vocabulary id `id` to `token`, growing it as needed (callers bound `id`).
inline void set_token(vocabulary& v, token_id id, const std::string& token, bool special) {
  const auto i = static_cast<std::size_t>(id);
  if (i >= v.tokens.size()) {
    v.tokens.resize(i + 1);
    v.special.resize(i + 1, 0);
  }
  if (!v.tokens[i].empty()) {
    const auto it = v.ids.find(v.tokens[i]);
    if (it != v.ids.end() && it->second == id) v.ids.erase(it);
  }
  v.tokens[i] = token;
  v.special[i] = special ? 1 : 0;
  v.ids.emplace(token, id);  // keeps an earlier id of the same token
}

/// vocab.json: {"token": id, ...}, ids dense from 0 (as transformers writes them).
inline vocabulary read_vocab_json(const std::filesystem::path& file) {
  const nlohmann::json j = detail::read_json_file(file);
  if (!j.is_object()) throw format_error(file.string() + ": expected a JSON object of token: id");
  const auto n = static_cast<token_id>(j.size());
  vocabulary v;
  v.tokens.resize(j.size());
  v.special.resize(j.size(), 0);
  std::vector<char> seen(j.size(), 0);
  for (const auto& [token, id] : j.items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() >= n) {
      throw format_error(file.string() + ": " + detail::quote_text(detail::text_excerpt(token)) + ": id " + detail::json_excerpt(id) +
                         ", expected 0 to " + std::to_string(n - 1) + " (one id per entry)");
    }
    const auto i = static_cast<std::size_t>(id.get<std::int64_t>());
    if (seen[i]) throw format_error(file.string() + ": id " + std::to_string(i) + " is given to two tokens");
    seen[i] = 1;
    v.tokens[i] = token;
    v.ids.emplace(token, static_cast<token_id>(i));
  }
  return v;
}

/// fairseq's layout over a SentencePiece model (mBART, NLLB): <s> 0, <pad> 1, </s> 2, <unk> 3, then
/// SentencePiece piece i at id i + 1 (its own <unk> <s> </s> at 0-2 give way to fairseq's).
inline vocabulary fairseq_vocabulary(const sentencepiece_model& sp) {
  vocabulary v;
  const std::string specials[] = {"<s>", "<pad>", "</s>", "<unk>"};
  for (token_id i = 0; i < 4; ++i) set_token(v, i, specials[i], true);
  for (index_t i = 0; i < sp.size(); ++i) {
    if (sp.is_control(i) || sp.is_unknown(i)) continue;
    const auto id = static_cast<token_id>(i + 1);
    if (id < 4) continue;
    set_token(v, id, sp.piece(i), false);
  }
  return v;
}

/// The SentencePiece model's own ids (Llama): piece i at id i; control and unknown pieces special.
inline vocabulary sentencepiece_vocabulary(const sentencepiece_model& sp) {
  vocabulary v;
  for (index_t i = 0; i < sp.size(); ++i) set_token(v, static_cast<token_id>(i), sp.piece(i), sp.is_control(i) || sp.is_unknown(i));
  return v;
}

}  // namespace detail_text

inline tokenizer tokenizer::load(const std::filesystem::path& dir, const languages& langs) {
  tokenizer t;
  t.dir_ = dir;
  const std::filesystem::path cfile = dir / "tokenizer_config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(cfile, ec)) {
    throw format_error(cfile.string() + ": missing: the tokenizer's files are needed for text (a Hugging Face directory "
                       "saved with its tokenizer; for a CTranslate2 directory, copy them beside model.bin)");
  }
  const nlohmann::json tc = detail::read_json_file(cfile);
  if (!tc.is_object()) throw format_error(cfile.string() + ": expected a JSON object");
  const std::string where = cfile.string() + ": ";
  const auto str = [&](const char* key) -> std::optional<std::string> {
    const auto it = tc.find(key);
    if (it == tc.end() || it->is_null()) return std::nullopt;
    if (auto s = detail_text::token_text(*it)) return s;
    throw config_error(where + key + ": " + detail::json_excerpt(*it) + ", expected a string");
  };
  const auto flag = [&](const char* key, bool fallback) {
    const auto it = tc.find(key);
    if (it == tc.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) throw config_error(where + key + ": " + detail::json_excerpt(*it) + ", expected true or false");
    return it->get<bool>();
  };

  const auto cls = str("tokenizer_class");
  if (!cls) throw config_error(where + "tokenizer_class: missing");
  if (*cls == "MarianTokenizer") {
    t.family_ = tokenizer_family::marian;
  } else if (*cls == "MBartTokenizer" || *cls == "MBartTokenizerFast") {
    t.family_ = tokenizer_family::mbart;
  } else if (*cls == "M2M100Tokenizer") {
    t.family_ = tokenizer_family::m2m100;
  } else if (*cls == "NllbTokenizer" || *cls == "NllbTokenizerFast") {
    t.family_ = tokenizer_family::nllb;
  } else if (*cls == "LlamaTokenizer" || *cls == "LlamaTokenizerFast") {
    t.family_ = tokenizer_family::llama;  // the fast one computes what the slow one does from tokenizer.model
  } else {
    throw config_error(where + "tokenizer_class: " + detail::quote_text(detail::text_excerpt(*cls)) +
                       " is not supported (MarianTokenizer, MBartTokenizer, M2M100Tokenizer, NllbTokenizer, "
                       "LlamaTokenizer)");
  }
  if (t.family_ == tokenizer_family::marian && flag("separate_vocabs", false)) {
    throw config_error(where + "separate_vocabs: true is not supported (one vocab.json for both sides)");
  }
  t.unk_token_ = str("unk_token").value_or("<unk>");
  t.eos_token_ = str("eos_token").value_or("</s>");
  t.bos_token_ = str("bos_token").value_or("<s>");
  t.clean_up_spaces_ = flag("clean_up_tokenization_spaces", false);
  t.nllb_legacy_ = t.family_ == tokenizer_family::nllb && flag("legacy_behaviour", false);
  const bool llama = t.family_ == tokenizer_family::llama;
  if (llama) {
    t.llama_legacy_ = flag("legacy", true);
    t.add_prefix_space_ = flag("add_prefix_space", true);
    t.add_bos_ = flag("add_bos_token", true);
    t.add_eos_ = flag("add_eos_token", false);
  }

  // SentencePiece models.
  if (t.family_ == tokenizer_family::marian) {
    t.source_sp_.emplace(dir / "source.spm");
    t.target_sp_.emplace(dir / "target.spm");
  } else if (llama) {
    t.source_sp_.emplace(dir / "tokenizer.model");
  } else {
    t.source_sp_.emplace(dir / "sentencepiece.bpe.model");
  }

  // Vocabularies.
  const bool ct2 = std::filesystem::is_regular_file(dir / "model.bin", ec);
  if (ct2) {
    io::ct2_vocabularies v = io::read_ct2_vocabularies(dir);
    const auto fill = [](std::vector<std::string>&& tokens) {
      vocabulary out;
      out.special.assign(tokens.size(), 0);
      for (std::size_t i = 0; i < tokens.size(); ++i) out.ids.emplace(tokens[i], static_cast<token_id>(i));
      out.tokens = std::move(tokens);
      return out;
    };
    const bool shared = v.source == v.target;
    t.src_ = fill(std::move(v.source));
    if (!shared) t.separate_tgt_ = fill(std::move(v.target));
    const nlohmann::json cc = detail::read_json_file(dir / "config.json");
    const auto ct2_flag = [&](const char* key) {
      const auto it = cc.is_object() ? cc.find(key) : cc.end();
      return it != cc.end() && it->is_boolean() && it->get<bool>();
    };
    if (!llama) {  // a decoder-only conversion keeps the tokenizer's own add_bos_token / add_eos_token
      t.add_bos_ = ct2_flag("add_source_bos");
      t.add_eos_ = ct2_flag("add_source_eos");
    }
  } else if (llama) {
    t.src_ = detail_text::sentencepiece_vocabulary(*t.source_sp_);
  } else if (t.family_ == tokenizer_family::marian || t.family_ == tokenizer_family::m2m100) {
    t.src_ = detail_text::read_vocab_json(dir / "vocab.json");
  } else {
    t.src_ = detail_text::fairseq_vocabulary(*t.source_sp_);
  }

  // Special tokens and language codes: added_tokens_decoder {"id": {"content": ..., "special": ...}}.
  // A Hugging Face vocabulary takes them at their ids; a CTranslate2 one has them already and only
  // learns which are special.
  std::vector<std::string> special_texts = {t.unk_token_, t.eos_token_, t.bos_token_};
  if (auto pad = str("pad_token")) special_texts.push_back(*pad);
  if (const auto added = tc.find("added_tokens_decoder"); added != tc.end() && !added->is_null()) {
    if (!added->is_object()) throw config_error(where + "added_tokens_decoder: expected an object of id: token");
    const index_t base = t.src_.size();
    const index_t limit = base + static_cast<index_t>(added->size());  // ids past the base are dense
    for (const auto& [key, value] : added->items()) {
      token_id id = -1;
      const auto [end, err] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (err != std::errc() || end != key.data() + key.size() || id < 0 || id >= limit) {
        throw config_error(where + "added_tokens_decoder: id " + detail::quote_text(detail::text_excerpt(key)) +
                           ", expected 0 to " + std::to_string(limit - 1));
      }
      const auto text = detail_text::token_text(value);
      if (!text) throw config_error(where + "added_tokens_decoder: " + key + ": expected an object with a \"content\" string");
      const auto special_it = value.find("special");
      const bool special = special_it != value.end() && special_it->is_boolean() && special_it->get<bool>();
      if (ct2) {
        if (special) special_texts.push_back(*text);
      } else {
        detail_text::set_token(t.src_, id, *text, special);
      }
      if (!text->empty()) t.added_texts_.push_back(*text);
    }
  } else if (t.family_ != tokenizer_family::marian && !llama) {
    throw config_error(where + "added_tokens_decoder: missing (it gives the ids of the special and language tokens; "
                               "re-save the tokenizer with transformers >= 4.34)");
  }
  const auto mark_special = [&](vocabulary& v) {
    for (const auto& s : special_texts)
      if (const auto id = v.find(s)) v.special[static_cast<std::size_t>(*id)] = 1;
  };
  mark_special(t.src_);
  if (t.separate_tgt_) mark_special(*t.separate_tgt_);
  const auto unk = t.src_.find(t.unk_token_);
  if (!unk) throw config_error(where + "unk_token: " + detail::quote_text(t.unk_token_) + " is not in the vocabulary");
  t.src_unk_ = *unk;
  if (!t.src_.find(t.eos_token_)) {
    throw config_error(where + "eos_token: " + detail::quote_text(t.eos_token_) + " is not in the vocabulary");
  }

  // Languages.
  const auto lang_token = [&](const std::string& lang) {
    if (t.family_ == tokenizer_family::m2m100) return "__" + lang + "__";
    return lang;
  };
  const bool multilingual = t.family_ != tokenizer_family::marian && !llama;
  if (llama) {
    if (!langs.source.empty() || !langs.target.empty()) {
      throw invalid_argument(langs.source.empty() ? "--tgt-lang" : "--src-lang",
                             "a Llama-family model continues its prompt: it takes no language");
    }
    if (!t.llama_legacy_) t.unk_pieces_ = t.source_sp_->encode(t.unk_token_).size();
    if (t.added_texts_.empty()) t.added_texts_ = special_texts;  // no added_tokens_decoder: the special tokens
    std::erase_if(t.added_texts_, [](const std::string& s) { return s.empty(); });
  } else if (!multilingual) {
    if (!langs.source.empty()) {
      throw invalid_argument("--src-lang", "a Marian model has one source language (its tokenizer takes none)");
    }
    if (!langs.target.empty()) {
      throw invalid_argument("--tgt-lang", "a Marian model takes the target language as a '>>xx<<' token opening the "
                                           "source text (multilingual models), not as an option");
    }
  } else {
    t.source_lang_ = langs.source.empty() ? str("src_lang").value_or("") : langs.source;
    if (t.source_lang_.empty()) {
      throw invalid_argument("--src-lang", std::string("missing: ") + family_name(t.family_) +
                                               " needs the source language (tokenizer_config.json has no src_lang)");
    }
    t.source_lang_token_ = lang_token(t.source_lang_);
    if (!t.src_.find(t.source_lang_token_)) {
      throw invalid_argument("--src-lang", detail::quote_text(detail::text_excerpt(t.source_lang_)) + ": " +
                                               detail::quote_text(detail::text_excerpt(t.source_lang_token_)) +
                                               " is not a token of the vocabulary");
    }
    const std::string target = langs.target.empty() ? str("tgt_lang").value_or("") : langs.target;
    t.target_.explicit_choice = !langs.target.empty();
    if (!target.empty()) {
      t.target_.token = lang_token(target);
      const vocabulary& tv = t.separate_tgt_ ? *t.separate_tgt_ : t.src_;
      const auto id = tv.find(t.target_.token);
      if (!id) {
        throw invalid_argument("--tgt-lang", detail::quote_text(detail::text_excerpt(target)) + ": " +
                                                 detail::quote_text(detail::text_excerpt(t.target_.token)) +
                                                 " is not a token of the target vocabulary");
      }
      if (t.family_ == tokenizer_family::mbart) {
        t.target_.start_token = *id;
      } else {
        t.target_.prefix = {*id};
      }
    }
  }
  return t;
}

inline std::vector<std::string> tokenizer::source_tokens(std::string_view text) const {
  std::vector<std::string> tokens;
  if (add_bos_) tokens.push_back(bos_token_);
  if (family_ == tokenizer_family::m2m100 || (family_ == tokenizer_family::nllb && !nllb_legacy_)) {
    tokens.push_back(source_lang_token_);
  }
  if (family_ == tokenizer_family::llama) {
    llama_pieces(text, tokens);
    if (add_eos_) tokens.push_back(eos_token_);
    return tokens;
  }
  std::string body(text);
  if (family_ == tokenizer_family::marian) {
    // MarianTokenizer: a ">>xx<<" opening the text is a token of its own (the target language of a
    // multilingual model); every ">>...<<" anywhere is removed from the text that SentencePiece reads.
    const auto code_end = [&](std::size_t from) -> std::size_t {  // one past "<<" of a ">>x+<<" at `from`
      if (body.compare(from, 2, ">>") != 0) return std::string::npos;
      const std::size_t close = body.find("<<", from + 3);
      return close == std::string::npos ? close : close + 2;
    };
    if (const std::size_t end = code_end(0); end != std::string::npos) tokens.push_back(body.substr(0, end));
    std::string rest;
    for (std::size_t i = 0; i < body.size();) {
      const std::size_t end = code_end(i);
      if (end != std::string::npos) {
        i = end;
      } else {
        rest.push_back(body[i++]);
      }
    }
    body = std::move(rest);
  }
  for (auto& piece : source_sp_->encode(body)) tokens.push_back(std::move(piece));
  tokens.push_back(eos_token_);  // every family ends the source with </s>
  if (family_ == tokenizer_family::mbart || (family_ == tokenizer_family::nllb && nllb_legacy_)) {
    tokens.push_back(source_lang_token_);
  }
  if (add_eos_) tokens.push_back(eos_token_);  // CTranslate2 adds them to whatever tokens it is given
  return tokens;
}

inline void tokenizer::llama_pieces(std::string_view text, std::vector<std::string>& tokens) const {
  if (text.empty()) return;  // transformers: no pieces, not even the prefix space
  // transformers' non-legacy tokenize(): the text opens with "▁" (it also turns "▁" in the text into
  // spaces, which SentencePiece turns back: both read alike)
  std::string body;
  if (!llama_legacy_ && add_prefix_space_) body = "\xe2\x96\x81";
  body += text;
  const std::size_t first_piece = tokens.size();
  // SentencePiece's pieces of one stretch of text between added tokens
  const auto encode_stretch = [&](std::string_view stretch) {
    if (stretch.empty()) return;
    if (llama_legacy_) {
      for (auto& p : source_sp_->encode(stretch)) tokens.push_back(std::move(p));
      return;
    }
    // no dummy prefix: "<unk>" + stretch, the pieces of "<unk>" dropped (transformers' own method)
    auto pieces = source_sp_->encode(unk_token_ + std::string(stretch));
    const std::size_t skip = pieces.size() >= unk_pieces_ ? unk_pieces_ : 0;
    for (std::size_t i = skip; i < pieces.size(); ++i) tokens.push_back(std::move(pieces[i]));
  };
  std::size_t start = 0;
  for (std::size_t i = 0; i < body.size();) {
    std::size_t longest = 0;  // the longest added token starting at i
    for (const auto& a : added_texts_)
      if (a.size() > longest && body.compare(i, a.size(), a) == 0) longest = a.size();
    if (longest == 0) {
      ++i;
      continue;
    }
    encode_stretch(std::string_view(body).substr(start, i - start));
    tokens.push_back(body.substr(i, longest));
    i += longest;
    start = i;
  }
  encode_stretch(std::string_view(body).substr(start));
  // non-legacy: a lone "▁" before an added token that opens the text is dropped
  if (!llama_legacy_ && tokens.size() > first_piece + 1 && tokens[first_piece] == "\xe2\x96\x81" &&
      std::find(added_texts_.begin(), added_texts_.end(), tokens[first_piece + 1]) != added_texts_.end()) {
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(first_piece));
  }
}

inline std::vector<token_id> tokenizer::encode(std::string_view text) const {
  const auto tokens = source_tokens(text);
  std::vector<token_id> ids;
  ids.reserve(tokens.size());
  for (const auto& t : tokens) ids.push_back(source_id(t));
  return ids;
}

inline std::string tokenizer::decode(std::span<const token_id> ids) const {
  const vocabulary& v = target_vocabulary();
  std::vector<std::string> pieces;
  for (token_id id : ids) {
    if (id >= 0 && id < v.size()) {
      const auto i = static_cast<std::size_t>(id);
      if (v.special[i] || v.tokens[i].empty()) continue;
      pieces.push_back(v.tokens[i]);
    } else {
      pieces.push_back(unk_token_);  // transformers: an id without a token reads as the unknown token
    }
  }
  std::string text;
  if (family_ == tokenizer_family::llama) {
    // LlamaTokenizer.convert_tokens_to_string: the prefix space it adds is taken off the first piece,
    // then SentencePiece joins the pieces (and drops its own dummy prefix from a first piece that
    // starts with "▁"). A first piece that is "▁" alone would become empty, which SentencePiece
    // versions join differently (0.2.0, transformers' own: the next piece keeps its space); left
    // whole, SentencePiece drops its "▁" as the dummy prefix, which is the same text on every version.
    const std::string_view space = "\xe2\x96\x81";
    if (add_prefix_space_ && !pieces.empty() && pieces.front().starts_with(space) && pieces.front() != space) {
      pieces.front().erase(0, space.size());
    }
    text = source_sp_->decode(pieces);
    if (clean_up_spaces_) text = detail_text::clean_up_tokenization(std::move(text));
    return text;
  }
  if (family_ == tokenizer_family::marian || family_ == tokenizer_family::m2m100) {
    text = (target_sp_ ? *target_sp_ : *source_sp_).decode(pieces);
  } else {
    for (const auto& p : pieces) text += p;
    std::string spaced;  // "▁" (U+2581, e2 96 81) becomes a space
    for (std::size_t i = 0; i < text.size();) {
      if (text.compare(i, 3, "\xe2\x96\x81") == 0) {
        spaced.push_back(' ');
        i += 3;
      } else {
        spaced.push_back(text[i++]);
      }
    }
    text = std::move(spaced);
  }
  text = detail_text::strip(std::move(text));
  if (clean_up_spaces_) text = detail_text::clean_up_tokenization(std::move(text));
  return text;
}

}  // namespace eigenformer::text
