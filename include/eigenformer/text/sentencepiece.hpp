// text/sentencepiece.hpp: a SentencePiece model (libsentencepiece, Debian's libsentencepiece-dev),
// read through eigenformer's checked file reads.
//
//   const text::sentencepiece_model sp("opus-mt-en-de/source.spm");
//   std::vector<std::string> pieces = sp.encode("a red cat");   // {"▁a", "▁red", "▁cat"}
//   std::string text = sp.decode(pieces);                       // "a red cat"
//
// Why a wrapper: the library's errors name the file (SentencePiece's status messages do not), the
// file is read with a size limit before its bytes reach the protobuf parser, and the processor is
// held so that the tokenizer stays movable. Encoding and decoding are const and safe to call from
// several threads at once (SentencePiece's Encode and Decode are const and keep no state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <sentencepiece_processor.h>

#include "../detail/file.hpp"
#include "../error.hpp"
#include "../types.hpp"

namespace eigenformer::text {

/// The largest SentencePiece model file read (NLLB-200's, the largest in use, is 4.8 MB).
inline constexpr std::uint64_t max_sentencepiece_bytes = std::uint64_t{64} << 20;

class sentencepiece_model {
 public:
  /// Reads and parses the model; throws format_error "<file>: not a SentencePiece model (...)" or
  /// error "<file>: cannot open" / "larger than 64 MiB".
  explicit sentencepiece_model(std::filesystem::path file) : path_(std::move(file)) {
    const detail::input_file f(path_);
    if (f.size() > max_sentencepiece_bytes) {
      throw format_error(path_.string() + ": " + std::to_string(f.size()) + " bytes, larger than the " +
                         std::to_string(max_sentencepiece_bytes >> 20) + " MiB a SentencePiece model may take");
    }
    const auto bytes = f.read_all();
    const std::string_view serialized(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = sp_->LoadFromSerializedProto(serialized);
    if (!status.ok() || sp_->GetPieceSize() <= 0) {
      throw format_error(path_.string() + ": not a SentencePiece model (" +
                         detail::text_excerpt(status.ok() ? "no pieces" : status.ToString(), 160) + ")");
    }
  }

  const std::filesystem::path& path() const noexcept { return path_; }

  /// The pieces of `text`, as SentencePiece segments it (its normaliser included).
  std::vector<std::string> encode(std::string_view text) const {
    std::vector<std::string> pieces;
    const auto status = sp_->Encode(text, &pieces);
    if (!status.ok()) throw error(path_.string() + ": cannot encode text (" + detail::text_excerpt(status.ToString(), 160) + ")");
    return pieces;
  }

  /// The text of `pieces` (SentencePiece's detokenisation: "▁" becomes a space, the first one dropped;
  /// pieces it does not know decode as its unknown surface " ⁇ ").
  std::string decode(const std::vector<std::string>& pieces) const {
    std::string text;
    const auto status = sp_->Decode(pieces, &text);
    if (!status.ok()) throw error(path_.string() + ": cannot decode pieces (" + detail::text_excerpt(status.ToString(), 160) + ")");
    return text;
  }

  /// How many pieces the model has; piece i's text and kind.
  index_t size() const noexcept { return static_cast<index_t>(sp_->GetPieceSize()); }
  const std::string& piece(index_t id) const { return sp_->IdToPiece(static_cast<int>(id)); }
  /// Control pieces (<s>, </s>) and the unknown piece never come out of encode() as themselves.
  bool is_control(index_t id) const { return sp_->IsControl(static_cast<int>(id)); }
  bool is_unknown(index_t id) const { return sp_->IsUnknown(static_cast<int>(id)); }

 private:
  std::filesystem::path path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;  // never null after construction
};

}  // namespace eigenformer::text
