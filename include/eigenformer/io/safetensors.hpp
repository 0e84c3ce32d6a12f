// eigenformer/io/safetensors.hpp: reads and writes the safetensors format (the model file, see
// docs/model-format.md): an 8-byte little-endian header length N, N bytes of JSON header,
// then the raw tensor bytes ("data section").
//
// Why so strict: a model file comes from outside, so safetensors_file validates the whole header
// before a single tensor is used, and every error is a format_error that starts with the file path
// and names the tensor or key at fault. The rules are upstream's (huggingface/safetensors,
// safetensors/src/tensor.rs, Metadata::validate and read_metadata), plus a few of ours:
//   - the header is at most 100,000,000 bytes (upstream's MAX_HEADER_SIZE) and lies inside the file;
//   - it is a JSON object; `__metadata__` (optional, or null) maps strings to strings; every other
//     entry is an object with exactly the keys dtype, shape, data_offsets (ours: upstream ignores
//     extra keys); dtype is a known name; shape holds at most 8 (ours) non-negative integers;
//   - shape product x dtype size == end - begin, computed with overflow checks;
//   - sorted by offset, the tensors tile the data section exactly: the first starts at 0, each
//     starts where the previous one ended, the last ends at the end of the file. Upstream rejects
//     holes, overlaps and trailing bytes alike (InvalidOffset, MetadataIncompleteBuffer); so do we.
//   - a key given twice at any level is rejected (ours: JSON parsers silently keep one of the two).
//   - JSON nesting deeper than max_json_depth levels is rejected (ours: the header only needs 3, and
//     deeper input must never reach a recursive routine such as nlohmann's dump()).
// The file is not mapped but read with pread() (detail/file.hpp): tensor bytes are read into owned
// buffers at offsets validated against the size seen at open, so a file that another process truncates
// meanwhile gives an error naming the file, never SIGBUS. Messages quote the file's text only in short
// excerpts (detail::text_excerpt), so a hostile header cannot make a megabyte-long error message.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../detail/file.hpp"
#include "../detail/half.hpp"
#include "../detail/json_text.hpp"
#include "../error.hpp"
#include "../tensor.hpp"
#include "../types.hpp"

namespace eigenformer::io {

// The format is little-endian; so are the hosts we build for (x86-64, AArch64), which lets tensor
// bytes be copied without byte swapping.
static_assert(std::endian::native == std::endian::little, "eigenformer's io assumes a little-endian host");

/// Element types of the safetensors format; dtype_name() gives the file's spelling.
enum class dtype {
  boolean, u8, i8, u16, i16, u32, i32, u64, i64,
  f16, bf16, f32, f64, c64,
  f8_e4m3, f8_e5m2, f8_e8m0, f6_e2m3, f6_e3m2, f4,
};

}  // namespace eigenformer::io

namespace eigenformer::detail {
struct safetensors_dtype {
  io::dtype type;
  std::string_view name;
  int bits;
};
inline constexpr std::array<safetensors_dtype, 20> safetensors_dtypes{{
    {io::dtype::boolean, "BOOL", 8}, {io::dtype::u8, "U8", 8}, {io::dtype::i8, "I8", 8},
    {io::dtype::u16, "U16", 16}, {io::dtype::i16, "I16", 16}, {io::dtype::u32, "U32", 32},
    {io::dtype::i32, "I32", 32}, {io::dtype::u64, "U64", 64}, {io::dtype::i64, "I64", 64},
    {io::dtype::f16, "F16", 16}, {io::dtype::bf16, "BF16", 16}, {io::dtype::f32, "F32", 32},
    {io::dtype::f64, "F64", 64}, {io::dtype::c64, "C64", 64}, {io::dtype::f8_e4m3, "F8_E4M3", 8},
    {io::dtype::f8_e5m2, "F8_E5M2", 8}, {io::dtype::f8_e8m0, "F8_E8M0", 8}, {io::dtype::f6_e2m3, "F6_E2M3", 6},
    {io::dtype::f6_e3m2, "F6_E3M2", 6}, {io::dtype::f4, "F4", 4},
}};
constexpr const safetensors_dtype& safetensors_dtype_of(io::dtype t) noexcept {
  return safetensors_dtypes[static_cast<std::size_t>(t)];  // the table is in enum order (a test checks)
}
}  // namespace eigenformer::detail

namespace eigenformer::io {

/// "F32", "BF16", ... as written in a file.
constexpr std::string_view dtype_name(dtype t) noexcept { return detail::safetensors_dtype_of(t).name; }
/// Bits per element: 4 and 6 for the packed F4 / F6 types, a multiple of 8 for every other.
constexpr int dtype_bits(dtype t) noexcept { return detail::safetensors_dtype_of(t).bits; }
/// Bytes per element; 0 for F4 and F6, whose elements share bytes (use dtype_bits()).
constexpr std::size_t dtype_size(dtype t) noexcept {
  return dtype_bits(t) % 8 ? 0 : static_cast<std::size_t>(dtype_bits(t) / 8);
}
/// The dtype a file spells `name`, or nullopt for an unknown name (names are case-sensitive).
constexpr std::optional<dtype> parse_dtype(std::string_view name) noexcept {
  for (const auto& e : detail::safetensors_dtypes) {
    if (e.name == name) return e.type;
  }
  return std::nullopt;
}
/// True for the dtypes read() converts: F16, BF16, F32, F64.
constexpr bool is_float_dtype(dtype t) noexcept {
  return t == dtype::f16 || t == dtype::bf16 || t == dtype::f32 || t == dtype::f64;
}

/// One tensor as the header describes it (validated).
struct tensor_info {
  std::string name;
  dtype type = dtype::f32;
  std::vector<index_t> shape;  ///< as in the file: rank 0 to 8
  std::uint64_t begin = 0;     ///< byte offsets into the data section: [begin, end)
  std::uint64_t end = 0;

  /// The element count: 0 if any extent is 0 (the file accepts [4294967296, 4294967295, 0], whose
  /// other extents multiply past index_t), else the product, which fits for a validated file; a
  /// hand-made shape whose product overflows gives numeric_limits<index_t>::max() (never UB).
  index_t numel() const noexcept {
    for (index_t d : shape) {
      if (d == 0) return 0;
    }
    index_t n = 1;
    for (index_t d : shape) {
      if (__builtin_mul_overflow(n, d, &n)) return std::numeric_limits<index_t>::max();
    }
    return n;
  }
};

}  // namespace eigenformer::io

namespace eigenformer::detail {
/// Decodes `n` little-endian elements of float dtype `type` at `src` (any alignment) into `dst`.
template <class Scalar>
void decode_floats(io::dtype type, const std::byte* src, Scalar* dst, std::size_t n) noexcept {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);
  if (n == 0) return;  // dst may be null for an empty tensor; memcpy must not see it
  auto each = [&]<class Stored>(Stored, auto widen) {
    for (std::size_t i = 0; i < n; ++i) {
      Stored v;
      std::memcpy(&v, src + i * sizeof(Stored), sizeof(Stored));
      dst[i] = static_cast<Scalar>(widen(v));
    }
  };
  auto identity = [](auto v) { return v; };
  switch (type) {
    case io::dtype::f32:
      if constexpr (std::is_same_v<Scalar, float>) std::memcpy(dst, src, n * sizeof(float));
      else each(float{}, identity);
      break;
    case io::dtype::f64:
      if constexpr (std::is_same_v<Scalar, double>) std::memcpy(dst, src, n * sizeof(double));
      else each(double{}, identity);
      break;
    case io::dtype::f16: each(std::uint16_t{}, half_to_float); break;
    case io::dtype::bf16: each(std::uint16_t{}, bfloat16_to_float); break;
    default: break;  // callers check is_float_dtype() first
  }
}

/// Encodes `n` values as little-endian float dtype `type` (F16/BF16 rounded to nearest even).
template <class Scalar>
void encode_floats(io::dtype type, const Scalar* src, std::byte* dst, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(src[i]);  // exact for float and double
    if (type == io::dtype::f32) {
      const auto f = static_cast<float>(src[i]);
      std::memcpy(dst + 4 * i, &f, 4);
    } else if (type == io::dtype::f64) {
      std::memcpy(dst + 8 * i, &v, 8);
    } else {
      const std::uint16_t h = type == io::dtype::f16 ? double_to_half(v) : double_to_bfloat16(v);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  }
}


}  // namespace eigenformer::detail

namespace eigenformer::io {

/// A safetensors file, open read-only and validated on construction; tensors are read from it on
/// demand (pread, detail/file.hpp). Movable, not copyable.
class safetensors_file {
 public:
  /// Largest header accepted, in bytes (upstream's limit).
  static constexpr std::uint64_t max_header_bytes = 100'000'000;
  /// Largest rank accepted in the file (read() takes rank 0 to 4; raw() any).
  static constexpr std::size_t max_rank = 8;
  /// Deepest JSON nesting accepted in the header (a valid one nests 3 levels: header, entry, shape).
  static constexpr int max_json_depth = 64;

  /// Opens and validates `path`. Throws eigenformer::error if it cannot be opened or read or is not a
  /// regular file, and format_error "<path>: ..." naming the tensor or key if anything in it is malformed.
  explicit safetensors_file(std::filesystem::path path) : path_(std::move(path)), file_(path_) { parse(); }

  const std::filesystem::path& path() const noexcept { return path_; }
  /// The `__metadata__` map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Every tensor, sorted by name.
  std::span<const tensor_info> tensors() const noexcept { return tensors_; }

  /// The tensor called `name`, or nullptr.
  const tensor_info* find(std::string_view name) const noexcept {
    const auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                     [](const tensor_info& t, std::string_view n) { return t.name < n; });
    return it != tensors_.end() && it->name == name ? &*it : nullptr;
  }
  bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }
  /// The tensor called `name`; throws format_error "<path>: tensor '<name>' not found" if absent.
  const tensor_info& info(std::string_view name) const {
    if (const tensor_info* t = find(name)) return *t;
    throw format_error(where(name) + "not found");
  }

  /// The stored bytes of tensor `name` (any dtype, any rank), read from the file. Throws
  /// eigenformer::error naming the file if it has shrunk since it was opened.
  std::vector<std::byte> raw(std::string_view name) const {
    const tensor_info& t = info(name);
    std::vector<std::byte> bytes(static_cast<std::size_t>(t.end - t.begin));
    file_.read_at(data_begin_ + t.begin, bytes.data(), bytes.size());
    return bytes;
  }

  /// Tensor `name` converted to Scalar (float or double) from F16, BF16, F32 or F64. Rank 0 in the
  /// file reads as shape [1]. Throws format_error naming the file and tensor if it is missing, of
  /// another dtype or of rank above 4.
  template <class Scalar>
  tensor<Scalar> read(std::string_view name) const {
    tensor<Scalar> out;
    read_into(name, out);
    return out;
  }
  /// As read(name), and throws shape_error "<path>: tensor '<name>': shape [..], expected [..]"
  /// unless the tensor has shape `expected`.
  template <class Scalar>
  tensor<Scalar> read(std::string_view name, const tensor_shape& expected) const {
    check_shape(path_.string() + ": tensor '" + std::string(name) + "'", shape_of(info(name)).dims(), expected.dims());
    return read<Scalar>(name);
  }
  /// As read(name), into `out` (resized; its storage is reused when large enough).
  template <class Scalar>
  void read_into(std::string_view name, tensor<Scalar>& out) const {
    read_into(name, out, [](std::span<const Scalar>, std::size_t) {});
  }
  /// As read_into(name, out), and calls `visit(values, first)` on each block of converted values
  /// (out's elements [first, first + values.size()), in order) while it is still in cache: a check of
  /// every value costs no second pass over memory. What `visit` throws propagates.
  template <class Scalar, class Visitor>
  void read_into(std::string_view name, tensor<Scalar>& out, Visitor&& visit) const {
    static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                  "safetensors_file::read converts to float or double");
    const tensor_info& t = info(name);
    if (!is_float_dtype(t.type)) {
      throw format_error(where(name) + "dtype " + std::string(dtype_name(t.type)) +
                         ", expected F16, BF16, F32 or F64");
    }
    out.resize(shape_of(t));
    const auto n = static_cast<std::size_t>(out.size());
    const std::uint64_t at = data_begin_ + t.begin;
    const std::size_t element_bytes = dtype_size(t.type);
    constexpr std::size_t chunk_elements = 32768;  // 128 KiB of float: fits in L2 with its source
    if ((std::is_same_v<Scalar, float> && t.type == dtype::f32) ||
        (std::is_same_v<Scalar, double> && t.type == dtype::f64)) {
      for (std::size_t first = 0; first < n; first += chunk_elements) {  // stored as is: read in place
        const std::size_t m = std::min(chunk_elements, n - first);
        file_.read_at(at + first * sizeof(Scalar), reinterpret_cast<std::byte*>(out.data() + first), m * sizeof(Scalar));
        visit(std::span<const Scalar>(out.data() + first, m), first);
      }
      return;
    }
    std::vector<std::byte> chunk;
    for (std::size_t first = 0; first < n; first += chunk_elements) {
      const std::size_t m = std::min(chunk_elements, n - first);
      chunk.resize(m * element_bytes);
      file_.read_at(at + first * element_bytes, chunk.data(), chunk.size());
      detail::decode_floats(t.type, chunk.data(), out.data() + first, m);
      visit(std::span<const Scalar>(out.data() + first, m), first);
    }
  }

 private:
  std::string where() const { return path_.string() + ": "; }
  std::string where(std::string_view tensor) const {
    return where() + "tensor '" + detail::text_excerpt(tensor, 128) + "': ";
  }

  /// The shape a tensor reads as: rank 0 becomes [1]; rank above 4 is a format_error.
  tensor_shape shape_of(const tensor_info& t) const {
    if (t.shape.empty()) return tensor_shape{1};
    if (t.shape.size() > static_cast<std::size_t>(tensor_shape::max_rank)) {
      throw format_error(where(t.name) + "rank " + std::to_string(t.shape.size()) + " " + shape_string(t.shape) +
                         ", expected 0 to 4 to read it as a tensor");
    }
    try {
      return tensor_shape(std::span<const index_t>(t.shape));
    } catch (const shape_error& e) {  // [4294967296, 4294967295, 0]: no elements, yet too many to index
      throw format_error(where(t.name) + e.what());
    }
  }

  void parse() {
    const std::uint64_t file_bytes = file_.size();
    if (file_bytes < 8) {
      throw format_error(where() + "file is " + std::to_string(file_bytes) +
                         " bytes, expected at least 8 (the header length)");
    }
    std::uint64_t header_bytes = 0;
    file_.read_at(0, reinterpret_cast<std::byte*>(&header_bytes), 8);
    if (header_bytes > max_header_bytes) {
      throw format_error(where() + "header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                         std::to_string(max_header_bytes) + " bytes");
    }
    if (header_bytes > file_bytes - 8) {
      throw format_error(where() + "header length " + std::to_string(header_bytes) +
                         " runs past the end of the file (" + std::to_string(file_bytes) + " bytes)");
    }
    data_begin_ = 8 + header_bytes;
    const std::uint64_t data_bytes = file_bytes - data_begin_;

    std::vector<std::byte> header_text(static_cast<std::size_t>(header_bytes));
    file_.read_at(8, header_text.data(), header_text.size());
    const nlohmann::json header = parse_json(header_text);
    if (!header.is_object()) {
      throw format_error(where() + "header is a JSON " + std::string(header.type_name()) + ", expected an object");
    }
    for (const auto& [key, value] : header.items()) {
      if (key == "__metadata__") {
        parse_metadata(value);
      } else {
        tensors_.push_back(parse_entry(key, value, data_bytes));
      }
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    check_tiling(data_bytes);
  }

  /// Parses the header (detail/json_text.hpp): a key twice in one object, a NUL byte or nesting
  /// deeper than max_json_depth is an error.
  nlohmann::json parse_json(std::span<const std::byte> text) const {
    return detail::parse_strict_json(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()),
                                     where() + "header", max_json_depth);
  }

  void parse_metadata(const nlohmann::json& value) {
    if (value.is_null()) return;  // as upstream: null means no metadata
    if (!value.is_object()) {
      throw format_error(where() + "__metadata__ is a JSON " + std::string(value.type_name()) +
                         ", expected an object of strings");
    }
    for (const auto& [key, v] : value.items()) {
      if (!v.is_string()) {
        throw format_error(where() + "__metadata__ '" + detail::text_excerpt(key) + "': value " + detail::json_excerpt(v) +
                           " is not a string");
      }
      metadata_.emplace(key, v.get<std::string>());
    }
  }

  /// A non-negative integer that fits index_t, or a format_error "<what> is <v>, expected ...".
  std::uint64_t non_negative(const nlohmann::json& v, const std::string& context, const std::string& what,
                             std::uint64_t limit) const {
    const bool ok = v.is_number_integer() && (v.is_number_unsigned() || v.get<std::int64_t>() >= 0);
    if (!ok) {
      throw format_error(context + what + " is " + detail::json_excerpt(v) + ", expected a non-negative integer");
    }
    const auto u = v.is_number_unsigned() ? v.get<std::uint64_t>() : std::uint64_t{0};  // "-0" is 0
    if (u > limit) throw format_error(context + what + " is " + std::to_string(u) + ", too large");
    return u;
  }

  tensor_info parse_entry(const std::string& name, const nlohmann::json& entry, std::uint64_t data_bytes) const {
    const std::string context = where(name);
    if (!entry.is_object()) {
      throw format_error(context + "entry is a JSON " + std::string(entry.type_name()) + ", expected an object");
    }
    for (const auto& [key, v] : entry.items()) {
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        throw format_error(context + "unexpected key '" + detail::text_excerpt(key) +
                           "', expected only dtype, shape and data_offsets");
      }
    }
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) throw format_error(context + "missing key '" + key + "'");
    }

    tensor_info t;
    t.name = name;
    const auto& type = entry["dtype"];
    if (!type.is_string()) throw format_error(context + "dtype " + detail::json_excerpt(type) + " is not a string");
    const auto parsed_type = parse_dtype(type.get_ref<const std::string&>());
    if (!parsed_type) throw format_error(context + "unknown dtype " + detail::json_excerpt(type));
    t.type = *parsed_type;

    const auto& shape = entry["shape"];
    if (!shape.is_array()) throw format_error(context + "shape " + detail::json_excerpt(shape) + " is not an array");
    if (shape.size() > max_rank) {
      throw format_error(context + "shape has rank " + std::to_string(shape.size()) + ", expected at most " +
                         std::to_string(max_rank));
    }
    constexpr auto index_max = static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
    for (std::size_t i = 0; i < shape.size(); ++i) {
      t.shape.push_back(static_cast<index_t>(
          non_negative(shape[i], context, "shape[" + std::to_string(i) + "]", index_max)));
    }
    // Element count, then bits, in order and overflow-checked, as upstream (a zero after an
    // overflowing prefix still counts as overflow).
    std::uint64_t bits = 1;
    bool overflow = false;
    for (index_t d : t.shape) overflow = overflow || __builtin_mul_overflow(bits, static_cast<std::uint64_t>(d), &bits);
    overflow = overflow || __builtin_mul_overflow(bits, static_cast<std::uint64_t>(dtype_bits(t.type)), &bits);
    const std::string described = std::string(dtype_name(t.type)) + " " + shape_string(t.shape);
    if (overflow) throw format_error(context + described + ": size overflows");
    if (bits % 8 != 0) {
      throw format_error(context + described + " is " + std::to_string(bits) + " bits, not whole bytes");
    }

    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      throw format_error(context + "data_offsets " + detail::json_excerpt(offsets) + ", expected [begin, end]");
    }
    constexpr auto u64_max = std::numeric_limits<std::uint64_t>::max();
    t.begin = non_negative(offsets[0], context, "data_offsets[0]", u64_max);
    t.end = non_negative(offsets[1], context, "data_offsets[1]", u64_max);
    const std::string range = "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.begin > t.end) throw format_error(context + range + " are reversed (begin > end)");
    if (t.end > data_bytes) {
      throw format_error(context + range + " run past the end of the data section (" + std::to_string(data_bytes) +
                         " bytes)");
    }
    if (t.end - t.begin != bits / 8) {
      throw format_error(context + range + " cover " + std::to_string(t.end - t.begin) + " bytes, expected " +
                         std::to_string(bits / 8) + " for " + described);
    }
    return t;
  }

  /// Sorted by offset, the tensors must cover the data section exactly once (see the top of the file).
  void check_tiling(std::uint64_t data_bytes) const {
    std::vector<const tensor_info*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](const tensor_info* a, const tensor_info* b) {
      return std::pair(a->begin, a->end) < std::pair(b->begin, b->end);
    });
    auto range = [](const tensor_info& t) {
      return "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    };
    std::uint64_t covered = 0;  // the data section is tiled up to here
    const tensor_info* previous = nullptr;
    for (const tensor_info* t : by_offset) {
      if (t->begin < covered) {
        throw format_error(where(t->name) + "data_offsets " + range(*t) + " overlap tensor '" + detail::text_excerpt(previous->name, 128) +
                           "' " + range(*previous));
      }
      if (t->begin > covered) {
        throw format_error(where() + "bytes [" + std::to_string(covered) + ", " + std::to_string(t->begin) +
                           ") of the data section belong to no tensor (a hole before tensor '" + detail::text_excerpt(t->name, 128) + "')");
      }
      covered = t->end;
      previous = t;
    }
    if (covered != data_bytes) {
      throw format_error(where() + "bytes [" + std::to_string(covered) + ", " + std::to_string(data_bytes) +
                         ") at the end of the data section belong to no tensor");
    }
  }

  std::filesystem::path path_;
  detail::input_file file_;
  std::map<std::string, std::string> metadata_;
  std::vector<tensor_info> tensors_;  // sorted by name
  std::uint64_t data_begin_ = 0;      // file offset of the data section: 8 + header length
};

/// A tensor to write, by name. The tensor is referenced, not copied: keep it alive for the call.
template <class Scalar>
struct named_tensor {
  std::string name;
  const tensor<Scalar>& value;
};

/// Writes `tensors` and `metadata` to `path` as safetensors, each tensor stored as `storage` (F32,
/// F64, F16 or BF16; narrowing rounds to nearest even). Tensors are laid out in name order, the
/// header padded with spaces to a multiple of 8 bytes (so the data of every tensor stays aligned),
/// `__metadata__` omitted when empty. Whole or not at all (detail/file.hpp). Throws invalid_argument
/// naming the path for a bad storage dtype, a duplicate or reserved name, or text that is not UTF-8;
/// eigenformer::error naming the path if the file cannot be written.
template <class Scalar>
void write_safetensors(const std::filesystem::path& path, const std::vector<named_tensor<Scalar>>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, dtype storage = dtype::f32) {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);
  const std::string where = path.string() + ": ";
  if (!is_float_dtype(storage)) {
    throw invalid_argument(where + "storage dtype " + std::string(dtype_name(storage)) +
                           ", expected F16, BF16, F32 or F64");
  }
  std::vector<const named_tensor<Scalar>*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->name < b->name; });

  const std::size_t element_bytes = dtype_size(storage);
  std::string header = "{";
  std::uint64_t offset = 0;
  try {
    if (!metadata.empty()) header += "\"__metadata__\":" + nlohmann::json(metadata).dump();
    for (std::size_t i = 0; i < order.size(); ++i) {
      const auto& t = *order[i];
      if (t.name == "__metadata__") throw invalid_argument(where + "tensor name '__metadata__' is reserved");
      if (i > 0 && t.name == order[i - 1]->name) throw invalid_argument(where + "tensor '" + t.name + "' given twice");
      const std::uint64_t bytes = static_cast<std::uint64_t>(t.value.size()) * element_bytes;  // fits: in memory
      std::string shape;
      for (index_t d : t.value.shape().dims()) {
        if (!shape.empty()) shape += ',';
        shape += std::to_string(d);
      }
      if (header.size() > 1) header += ",";
      header += nlohmann::json(t.name).dump() + ":{\"dtype\":\"" + std::string(dtype_name(storage)) +
                "\",\"shape\":[" + shape + "],\"data_offsets\":[" + std::to_string(offset) + "," +
                std::to_string(offset + bytes) + "]}";
      offset += bytes;
    }
  } catch (const nlohmann::json::exception& e) {  // a name or metadata string that is not UTF-8
    throw invalid_argument(where + "cannot encode the header: " + e.what());
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > safetensors_file::max_header_bytes) {
    throw invalid_argument(where + "header of " + std::to_string(header.size()) + " bytes exceeds the limit");
  }

  detail::atomic_file_writer out(path);
  const std::uint64_t header_bytes = header.size();
  out.write(std::as_bytes(std::span(&header_bytes, 1)));
  out.write(header);
  std::vector<std::byte> chunk;
  for (const auto* t : order) {
    const auto values = t->value.values();
    if (storage == (std::is_same_v<Scalar, float> ? dtype::f32 : dtype::f64)) {
      out.write(std::as_bytes(values));  // stored as is
      continue;
    }
    constexpr std::size_t chunk_elements = 16384;
    for (std::size_t first = 0; first < values.size(); first += chunk_elements) {
      const std::size_t n = std::min(chunk_elements, values.size() - first);
      chunk.resize(n * element_bytes);
      detail::encode_floats(storage, values.data() + first, chunk.data(), n);
      out.write(chunk);
    }
  }
  out.commit();
}

}  // namespace eigenformer::io
