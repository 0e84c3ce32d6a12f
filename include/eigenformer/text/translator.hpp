// text/translator.hpp: a translation model with its tokenizer: text in, text out.
//
//   #include <eigenformer/text/translator.hpp>     // needs SentencePiece (target eigenformer::text)
//   const eigenformer::text::translator t("opus-mt-en-de/");            // Hugging Face or CTranslate2 directory
//   std::string de = t.translate("a red cat");                          // greedy
//   eigenformer::generation_options beam;  beam.beam_size = 4;
//   std::vector<std::string> out = t.translate(lines, beam);             // a batch
//
// The model comes from load_model() (io/model_loader.hpp), the tokenizer from the same directory
// (text/tokenizer.hpp); generation is generate() (decode.hpp) with the target language applied:
// a language chosen by the caller replaces the model's own start token (mBART) or forced first
// token (M2M100, NLLB); without one, the model's own apply, and tokenizer_config.json's tgt_lang
// only where the model has none (CTranslate2 conversions, which leave it to the caller).
#pragma once

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../batch.hpp"
#include "../decode.hpp"
#include "../error.hpp"
#include "../io/model_loader.hpp"
#include "../model.hpp"
#include "tokenizer.hpp"

namespace eigenformer::text {

class translator {
 public:
  /// Loads the model and the tokenizer of `dir`; errors as load_model() and tokenizer::load() throw them.
  /// `weights`: load_options::weights (unset: load_model's default).
  explicit translator(const std::filesystem::path& dir, const languages& langs = {},
                      std::optional<weight_type> weights = std::nullopt)
      : tokenizer_(tokenizer::load(dir, langs)), model_(load_model<float>(dir, load_options_for(dir, tokenizer_, weights))) {
    const auto& c = model_.config();
    if (tokenizer_.source_vocabulary().size() > c.src_vocab_size) {
      throw config_error(dir.string() + ": the tokenizer has " + std::to_string(tokenizer_.source_vocabulary().size()) +
                         " source tokens, the model " + std::to_string(c.src_vocab_size));
    }
  }

  const eigenformer::model<float>& model() const noexcept { return model_; }
  const text::tokenizer& tokenizer() const noexcept { return tokenizer_; }

  /// The source ids of `text`; throws invalid_argument "text: N tokens, expected at most M" past
  /// the model's max_positions.
  std::vector<token_id> encode(std::string_view text) const {
    auto ids = tokenizer_.encode(text);
    const index_t longest = model_.config().max_sequence_length();
    if (static_cast<index_t>(ids.size()) > longest) {
      throw invalid_argument("text", std::to_string(ids.size()) + " tokens, expected at most " + std::to_string(longest) +
                                         " (the model's max_positions)");
    }
    return ids;
  }

  /// `o` with the target language applied (see the top) for `batch` sequences; a start token or
  /// prefix the caller set is kept.
  generation_options with_target(generation_options o, index_t batch) const {
    const target_language& t = tokenizer_.target();
    const auto& c = model_.config();
    if (t.token.empty()) return o;
    if (t.start_token && !o.start_token && t.explicit_choice) o.start_token = t.start_token;
    if (!t.prefix.empty() && o.prefix.empty() && (t.explicit_choice || !c.forced_bos_id)) {
      o.prefix.assign(static_cast<std::size_t>(batch), t.prefix);
    }
    return o;
  }

  /// Generates for source ids (encode()) with the target language applied.
  std::vector<generation_result> generate(std::span<const std::vector<token_id>> sources, const generation_options& o) const {
    const std::vector<std::vector<token_id>> s(sources.begin(), sources.end());
    return eigenformer::generate(model_, token_batch::from_sequences(s), with_target(o, static_cast<index_t>(s.size())));
  }

  /// The text of a hypothesis (special tokens, language codes included, dropped).
  std::string decode(const hypothesis& h) const { return tokenizer_.decode(h.tokens); }

  /// Translates every text of `texts` in one batch; one string per text, in order (the best hypothesis).
  std::vector<std::string> translate(std::span<const std::string> texts, const generation_options& o = {}) const {
    std::vector<std::vector<token_id>> ids;
    ids.reserve(texts.size());
    for (const auto& t : texts) ids.push_back(encode(t));
    const auto results = generate(ids, o);
    std::vector<std::string> out;
    out.reserve(results.size());
    for (const auto& r : results) out.push_back(decode(r.best()));
    return out;
  }
  std::string translate(std::string_view text, const generation_options& o = {}) const {
    const std::string one(text);
    return translate(std::span<const std::string>(&one, 1), o).front();
  }

 private:
  /// A CTranslate2 mBART conversion leaves its start token to the caller: the target language.
  static load_options load_options_for(const std::filesystem::path& dir, const text::tokenizer& t,
                                       std::optional<weight_type> weights) {
    load_options o;
    o.weights = weights;
    if (io::is_ct2_directory(dir) && t.target().start_token) o.decoder_start_token = t.target().token;
    return o;
  }

  text::tokenizer tokenizer_;
  eigenformer::model<float> model_;
};

}  // namespace eigenformer::text
