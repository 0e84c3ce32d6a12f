// eigenformer/io/npy.hpp: reads and writes NumPy .npy arrays, the format the command-line tool takes
// and gives arrays in (docs/cli.md) and the golden outputs of the tests are stored in.
//
// Format (numpy/lib/format.py): the magic "\x93NUMPY", a version byte pair (1.0, 2.0 or 3.0), the
// header length (u16 little-endian in 1.0, u32 in 2.0 and 3.0), the header: a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with spaces and ended by '\n',
// then the elements, C order, nothing after them.
//
// Why our own parser: the header is a Python literal, not JSON. We accept exactly what NumPy writes
// (either quote style, any key order, a trailing comma, old "3L" integers) and reject the rest with a
// format_error "<path>: <what>": structured, object, complex, string and big-endian dtypes,
// fortran_order True (unless the layout equals C order), a shape whose size overflows, data shorter
// or longer than the shape says. The writer emits NumPy's own bytes (its 64-byte alignment and the
// spare spaces np.save leaves for growing the first axis), whole or not at all (detail/file.hpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/file.hpp"
#include "../detail/half.hpp"
#include "../error.hpp"
#include "../tensor.hpp"
#include "../types.hpp"

namespace eigenformer::io {

static_assert(std::endian::native == std::endian::little, "eigenformer's io assumes a little-endian host");

/// A validated .npy header.
struct npy_header {
  std::string descr;            ///< as written: "<f4", "|u1", ...
  char kind = 'f';              ///< 'f' float, 'i' signed, 'u' unsigned integer, 'b' bool
  std::size_t item_size = 4;    ///< bytes per element
  bool fortran_order = false;   ///< true only where the layout is the same as C order
  std::vector<index_t> shape;   ///< rank 0 to npy_max_rank
  index_t numel = 1;            ///< product of shape
  std::size_t data_offset = 0;  ///< bytes before the first element
};

/// Largest rank accepted (NumPy's own limit is 64 since 2.0, 32 before).
inline constexpr std::size_t npy_max_rank = 64;
/// Largest header accepted, in bytes. np.load refuses headers past 10,000 bytes by default.
inline constexpr std::size_t npy_max_header_bytes = 65536;

/// "()", "(3,)", "(3, 4)": a shape as Python writes a tuple.
inline std::string npy_shape_string(std::span<const index_t> shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace eigenformer::io

namespace eigenformer::detail {

/// Reads the Python literals of a .npy header dict; every error names the file and the offset.
class npy_header_reader {
 public:
  npy_header_reader(std::string_view text, std::string where) : text_(text), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw format_error(where_ + "header: " + what + " at offset " + std::to_string(pos_) + " of \"" +
                       text_excerpt(text_, 80) + "\"");
  }
  void skip_space() {
    while (pos_ < text_.size() && std::string_view(" \t\r\n").find(text_[pos_]) != std::string_view::npos) ++pos_;
  }
  char peek() {
    skip_space();
    return pos_ < text_.size() ? text_[pos_] : '\0';
  }
  bool consume(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    if (!consume(c)) fail(std::string("expected '") + c + "'");
  }
  bool at_end() { return peek() == '\0' && pos_ == text_.size(); }

  /// 'text' or "text"; escapes never occur in the keys and dtypes NumPy writes, so none are accepted.
  std::string string_literal() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail("expected a string");
    const std::size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) fail("unterminated string");
    const std::string_view s = text_.substr(pos_ + 1, end - pos_ - 1);
    if (s.find('\\') != std::string_view::npos) fail("escape sequence in a string");
    pos_ = end + 1;
    return std::string(s);
  }
  bool boolean() {
    skip_space();
    for (const bool value : {true, false}) {
      const std::string_view word = value ? "True" : "False";
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    fail("expected True or False");
  }
  /// A tuple of non-negative integers: (), (3,), (3, 4) or (3, 4,); "3L" as old NumPy wrote.
  std::vector<index_t> shape_tuple() {
    expect('(');
    std::vector<index_t> shape;
    bool trailing_comma = false;
    while (!consume(')')) {
      if (!shape.empty() && !trailing_comma) fail("expected ',' or ')'");
      if (shape.size() == io::npy_max_rank) fail("shape has more than " + std::to_string(io::npy_max_rank) + " axes");
      shape.push_back(non_negative_integer());
      trailing_comma = consume(',');
    }
    if (shape.size() == 1 && !trailing_comma) fail("(n) is not a tuple, expected (n,)");
    return shape;
  }

 private:
  index_t non_negative_integer() {
    if (peek() == '-') fail("negative extent in the shape");
    if (peek() < '0' || peek() > '9') fail("expected a non-negative integer");
    std::uint64_t v = 0;
    while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
      const auto digit = static_cast<std::uint64_t>(text_[pos_] - '0');
      if (v > (static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()) - digit) / 10) {
        fail("extent too large");
      }
      v = v * 10 + digit;
      ++pos_;
    }
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;
    return static_cast<index_t>(v);
  }

  std::string_view text_;
  std::string where_;
  std::size_t pos_ = 0;
};

/// Parses and validates the header of the .npy file `bytes`; `where` is "<path>: ".
inline io::npy_header parse_npy_header(std::span<const std::byte> bytes, const std::string& where) {
  constexpr std::string_view magic = "\x93NUMPY";
  auto byte_at = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  const auto same = [](char c, std::byte b) { return static_cast<unsigned char>(c) == static_cast<unsigned char>(b); };
  if (bytes.size() < magic.size() + 2 || !std::equal(magic.begin(), magic.end(), bytes.begin(), same)) {
    throw format_error(where + "not a .npy file (no \\x93NUMPY magic)");
  }
  const unsigned major = byte_at(6), minor = byte_at(7);
  if ((major < 1 || major > 3) || minor != 0) {
    throw format_error(where + "version " + std::to_string(major) + "." + std::to_string(minor) +
                       ", expected 1.0, 2.0 or 3.0");
  }
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes) throw format_error(where + "file ends inside the header length");
  std::size_t header_bytes = 0;
  for (std::size_t i = 0; i < length_bytes; ++i) header_bytes |= static_cast<std::size_t>(byte_at(8 + i)) << (8 * i);
  if (header_bytes > io::npy_max_header_bytes) {
    throw format_error(where + "header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                       std::to_string(io::npy_max_header_bytes) + " bytes");
  }
  const std::size_t header_begin = 8 + length_bytes;
  if (header_bytes > bytes.size() - header_begin) {
    throw format_error(where + "header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                       std::to_string(bytes.size()) + " bytes)");
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + header_begin), header_bytes);
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x7F || (c < 0x20 && c != '\n' && c != '\r' && c != '\t')) {
      throw format_error(where + "header: byte " + std::to_string(c) + " at offset " + std::to_string(i) +
                         " is not printable ASCII");
    }
  }

  io::npy_header h;
  h.data_offset = header_begin + header_bytes;
  npy_header_reader in(text, where);
  std::set<std::string> seen;
  in.expect('{');
  while (!in.consume('}')) {
    const std::string key = in.string_literal();
    if (!seen.insert(key).second) in.fail("key '" + text_excerpt(key) + "' appears twice");
    in.expect(':');
    if (key == "descr") {
      if (in.peek() == '[') in.fail("structured dtypes (a list descr) are not supported");
      h.descr = in.string_literal();
    } else if (key == "fortran_order") {
      h.fortran_order = in.boolean();
    } else if (key == "shape") {
      h.shape = in.shape_tuple();
    } else {
      in.fail("unexpected key '" + text_excerpt(key) + "', expected only descr, fortran_order and shape");
    }
    if (!in.consume(',')) {
      in.expect('}');
      break;
    }
  }
  if (!in.at_end()) in.fail("text after the dict");
  for (const char* key : {"descr", "fortran_order", "shape"}) {
    if (!seen.count(key)) throw format_error(where + "header: missing key '" + key + "'");
  }

  // descr: byte order, kind, size ("<f4"). '|' is "not applicable" (1-byte types), '=' native.
  const std::string& d = h.descr;
  const std::string quoted = "dtype '" + text_excerpt(d) + "'";
  std::size_t size = 0;
  bool digits = d.size() >= 3;
  for (std::size_t i = 2; digits && i < d.size(); ++i) {
    digits = d[i] >= '0' && d[i] <= '9' && i < 6;
    if (digits) size = size * 10 + static_cast<std::size_t>(d[i] - '0');
  }
  if (!digits || (d[0] != '<' && d[0] != '>' && d[0] != '|' && d[0] != '=')) {
    throw format_error(where + quoted + " is not a NumPy type string");
  }
  h.kind = d[1];
  h.item_size = size;
  if (h.kind == 'O') throw format_error(where + quoted + ": object arrays (pickled Python objects) are not supported");
  const bool supported = (h.kind == 'f' && (size == 2 || size == 4 || size == 8)) ||
                         ((h.kind == 'i' || h.kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) ||
                         (h.kind == 'b' && size == 1);
  if (!supported) throw format_error(where + quoted + " is not supported, expected a float, integer or bool type");
  if (d[0] == '>' && size > 1) throw format_error(where + quoted + " is big-endian, expected little-endian ('<')");

  // Size, overflow-checked; the data must be exactly that long.
  std::uint64_t count = 1;
  bool overflow = false;
  for (index_t e : h.shape) overflow = overflow || __builtin_mul_overflow(count, static_cast<std::uint64_t>(e), &count);
  std::uint64_t data_bytes = 0;
  overflow = overflow || __builtin_mul_overflow(count, static_cast<std::uint64_t>(size), &data_bytes) ||
             count > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max());
  const std::string described = quoted + " shape " + io::npy_shape_string(h.shape);
  if (overflow) throw format_error(where + described + ": size overflows");
  h.numel = static_cast<index_t>(count);

  // Fortran order stores the first axis fastest; with at most one axis longer than 1 that is C order.
  const auto long_axes = std::count_if(h.shape.begin(), h.shape.end(), [](index_t e) { return e > 1; });
  if (h.fortran_order && long_axes > 1) {
    throw format_error(where + "fortran_order is True for shape " + io::npy_shape_string(h.shape) +
                       "; only C-order arrays are supported");
  }
  const std::uint64_t have = bytes.size() - h.data_offset;
  if (have < data_bytes) {
    throw format_error(where + "data is " + std::to_string(have) + " bytes, expected " + std::to_string(data_bytes) +
                       " for " + described + " (truncated)");
  }
  if (have > data_bytes) {
    throw format_error(where + std::to_string(have - data_bytes) + " bytes after the data of " + described);
  }
  return h;
}

/// One element of kind/size at `p` (any alignment), widened.
template <class T>
T npy_load(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

/// "<dtype>" header dict + padding in NumPy's exact layout (numpy/lib/format.py, _write_array_header
/// and _wrap_header, format version 1.0): spare spaces for growing axis 0, then spaces and '\n' so that
/// magic + length + header is a multiple of 64 bytes.
inline std::string npy_header_bytes(std::string_view descr, std::span<const index_t> shape) {
  std::string dict = "{'descr': '";
  dict += std::string(descr) + "', 'fortran_order': False, 'shape': " + io::npy_shape_string(shape) + ", }";
  constexpr std::size_t growth_axis_max_digits = 21;
  if (!shape.empty()) dict.append(growth_axis_max_digits - std::to_string(shape[0]).size(), ' ');
  const std::size_t hlen = dict.size() + 1;       // with the final '\n'
  const std::size_t pad = 64 - (10 + hlen) % 64;   // 10: magic, version, u16 length; NumPy pads 64 if aligned
  const std::size_t length = hlen + pad;           // < 65536 for any shape we write (rank <= 64)
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(length & 0xFF);
  out += static_cast<char>(length >> 8);
  return out + dict + std::string(pad, ' ') + "\n";
}

}  // namespace eigenformer::detail

namespace eigenformer::io {

/// The validated header of the .npy file at `path` (the data length included).
inline npy_header read_npy_header(const std::filesystem::path& path) {
  const std::vector<std::byte> bytes = detail::input_file(path).read_all();
  return detail::parse_npy_header(bytes, path.string() + ": ");
}

/// A float array ('<f2', '<f4' or '<f8') converted to Scalar. Rank 0 reads as shape [1]. Throws
/// eigenformer::error if the file cannot be read, format_error "<path>: ..." if it is malformed, of
/// another dtype or of rank above 4.
template <class Scalar>
tensor<Scalar> read_npy(const std::filesystem::path& path) {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);
  const std::string where = path.string() + ": ";
  const std::vector<std::byte> bytes = detail::input_file(path).read_all();  // owned: no SIGBUS if it shrinks
  const npy_header h = detail::parse_npy_header(bytes, where);
  if (h.kind != 'f') {
    throw format_error(where + "dtype '" + h.descr + "', expected a float array ('<f2', '<f4' or '<f8')");
  }
  if (h.shape.size() > static_cast<std::size_t>(tensor_shape::max_rank)) {
    throw format_error(where + "rank " + std::to_string(h.shape.size()) + " shape " + npy_shape_string(h.shape) +
                       ", expected 0 to 4 to read it as a tensor");
  }
  tensor<Scalar> out;
  tensor_shape shape{1};
  if (!h.shape.empty()) {
    try {
      shape = tensor_shape(std::span<const index_t>(h.shape));
    } catch (const shape_error& e) {  // e.g. (4294967296, 4294967295, 0): 0 elements, but too many to index
      throw format_error(where + e.what());
    }
  }
  out.resize(shape);
  const std::byte* src = bytes.data() + h.data_offset;
  auto convert = [&](auto load) {
    for (index_t i = 0; i < h.numel; ++i) {
      out(i) = static_cast<Scalar>(load(src + static_cast<std::size_t>(i) * h.item_size));
    }
  };
  auto load_half = [](const std::byte* p) { return detail::half_to_float(detail::npy_load<std::uint16_t>(p)); };
  switch (h.item_size) {
    case 2: convert(load_half); break;
    case 4: convert(detail::npy_load<float>); break;
    default: convert(detail::npy_load<double>); break;
  }
  return out;
}

/// An integer or bool array (any of '|i1' '<i2' '<i4' '<i8' '|u1' '<u2' '<u4' '<u8' '|b1') as int64,
/// in C order; its shape goes to `*shape` if given. Throws like read_npy, and format_error naming the
/// element for a '<u8' value beyond int64.
inline std::vector<std::int64_t> read_npy_ints(const std::filesystem::path& path,
                                               std::vector<index_t>* shape = nullptr) {
  const std::string where = path.string() + ": ";
  const std::vector<std::byte> bytes = detail::input_file(path).read_all();  // owned: no SIGBUS if it shrinks
  const npy_header h = detail::parse_npy_header(bytes, where);
  if (h.kind == 'f') throw format_error(where + "dtype '" + h.descr + "', expected an integer or bool array");
  std::vector<std::int64_t> out(static_cast<std::size_t>(h.numel));  // validated: the bytes are in the file
  const std::byte* src = bytes.data() + h.data_offset;
  auto convert = [&]<class Stored>(Stored) {
    for (std::size_t i = 0; i < out.size(); ++i) {
      const auto v = detail::npy_load<Stored>(src + i * sizeof(Stored));
      if constexpr (std::is_same_v<Stored, std::uint64_t>) {
        if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          throw format_error(where + "element " + std::to_string(i) + " is " + std::to_string(v) + ", beyond int64");
        }
      }
      out[i] = static_cast<std::int64_t>(v);
    }
  };
  const bool is_signed = h.kind == 'i';
  switch (h.item_size) {
    case 1: is_signed ? convert(std::int8_t{}) : convert(std::uint8_t{}); break;
    case 2: is_signed ? convert(std::int16_t{}) : convert(std::uint16_t{}); break;
    case 4: is_signed ? convert(std::int32_t{}) : convert(std::uint32_t{}); break;
    default: is_signed ? convert(std::int64_t{}) : convert(std::uint64_t{}); break;
  }
  if (h.kind == 'b') {
    for (auto& v : out) v = v != 0;
  }
  if (shape) *shape = h.shape;
  return out;
}

/// Float types write_npy can store.
enum class npy_float { f16, f32, f64 };

/// Writes `t` as a C-order .npy array of `storage` ('<f2', '<f4', '<f8'; narrowing rounds to nearest
/// even), in NumPy's byte layout; by default float as '<f4' and double as '<f8'. Whole or not at all;
/// throws eigenformer::error naming the path if it cannot be written.
template <class Scalar>
void write_npy(const std::filesystem::path& path, const tensor<Scalar>& t,
               npy_float storage = std::is_same_v<Scalar, float> ? npy_float::f32 : npy_float::f64) {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);
  const char* descr = storage == npy_float::f16 ? "<f2" : storage == npy_float::f32 ? "<f4" : "<f8";
  detail::atomic_file_writer out(path);
  out.write(detail::npy_header_bytes(descr, t.shape().dims()));
  const auto values = t.values();
  if ((storage == npy_float::f32 && std::is_same_v<Scalar, float>) ||
      (storage == npy_float::f64 && std::is_same_v<Scalar, double>)) {
    out.write(std::as_bytes(values));
  } else {
    for (const Scalar v : values) {
      if (storage == npy_float::f16) {
        const std::uint16_t h = detail::double_to_half(static_cast<double>(v));
        out.write(std::as_bytes(std::span(&h, 1)));
      } else if (storage == npy_float::f32) {
        const auto f = static_cast<float>(v);
        out.write(std::as_bytes(std::span(&f, 1)));
      } else {
        const auto d = static_cast<double>(v);
        out.write(std::as_bytes(std::span(&d, 1)));
      }
    }
  }
  out.commit();
}

/// Writes `values` with `shape` (any rank up to npy_max_rank; rank 0 holds one value) as a C-order
/// '<i8' .npy array, in NumPy's byte layout, whole or not at all. Throws invalid_argument naming the
/// path if the shape does not hold values.size() elements.
inline void write_npy_ints(const std::filesystem::path& path, std::span<const std::int64_t> values,
                           std::span<const index_t> shape) {
  std::uint64_t count = 1;
  bool bad = shape.size() > npy_max_rank;
  for (index_t e : shape) bad = bad || e < 0 || __builtin_mul_overflow(count, static_cast<std::uint64_t>(e), &count);
  if (bad || count != values.size()) {
    throw invalid_argument(path.string() + ": shape " + npy_shape_string(shape) + " does not hold " +
                           std::to_string(values.size()) + " values");
  }
  detail::atomic_file_writer out(path);
  out.write(detail::npy_header_bytes("<i8", shape));
  out.write(std::as_bytes(values));
  out.commit();
}

}  // namespace eigenformer::io
