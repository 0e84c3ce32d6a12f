// io/npy.hpp: round trips, NumPy's exact byte layout (the committed fixtures were written by np.save),
// headers of versions 1.0 / 2.0 / 3.0 in the spellings NumPy has used, every integer dtype, and each
// malformed file rejected with a format_error that starts with the path and names what is wrong.
#include <eigenformer/io/npy.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "support/hostile_files.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
namespace fs = std::filesystem;
using ef::index_t;
using namespace ef::testing;

namespace {

template <class T>
std::string le_bytes(std::initializer_list<T> values) {
  std::string s;
  for (T v : values) s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return s;
}

/// A .npy file of `version` (1, 2 or 3) with header text `dict` (padded to 64 as NumPy does) and `data`.
std::string npy_bytes(const std::string& dict, const std::string& data, int version = 1) {
  const std::size_t prefix = version == 1 ? 10 : 12;
  std::string header = dict;
  header.append(63 - (prefix + header.size()) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(version);
  out += '\0';
  for (std::size_t i = 0; i < prefix - 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

std::string dict(const std::string& descr, const std::string& shape, const std::string& fortran = "False") {
  return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
}

/// Expects reading `bytes` (as floats, or as ints) to throw a format_error that starts with the path
/// and contains `needle`.
void expect_rejected(const std::string& bytes, const std::string& needle, bool as_ints = false) {
  const fs::path path = test_dir("npy") / "bad.npy";
  write_file(path, bytes);
  try {
    if (as_ints) {
      (void)ef::io::read_npy_ints(path);
    } else {
      (void)ef::io::read_npy<float>(path);
    }
    ADD_FAILURE() << "accepted a malformed file; expected an error containing: " << needle;
  } catch (const ef::format_error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(path.string() + ": ", 0), 0u) << "message does not start with the path: " << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "message: " << what << "\nexpected to contain: " << needle;
  }
}

// ---------------------------------------------------------------------------------------------
// Round trips

template <class Scalar>
class NpyRoundTrip : public ::testing::Test {};
TYPED_TEST_SUITE(NpyRoundTrip, scalar_types);

TYPED_TEST(NpyRoundTrip, EveryRankAndStorage) {
  using Scalar = TypeParam;
  const fs::path dir = test_dir("npy");
  filler fill(3);
  for (const auto& t : {fill.make<Scalar>({5}), fill.make<Scalar>({2, 3}), fill.make<Scalar>({2, 1, 3}),
                        fill.make<Scalar>({2, 2, 2, 3}), ef::tensor<Scalar>({0, 4})}) {
    SCOPED_TRACE(t.shape().str());
    const fs::path path = dir / "a.npy";
    ef::io::write_npy(path, t);
    const std::string native = std::is_same_v<Scalar, float> ? "<f4" : "<f8";
    EXPECT_EQ(ef::io::read_npy_header(path).descr, native);
    const auto same = ef::io::read_npy<Scalar>(path);
    ASSERT_EQ(same.shape(), t.shape());
    EXPECT_EQ(max_abs_diff(same.values(), t.values()), 0.0);

    ef::io::write_npy(path, t, ef::io::npy_float::f32);
    const auto as_f32 = ef::io::read_npy<double>(path);
    ef::io::write_npy(path, t, ef::io::npy_float::f16);
    EXPECT_EQ(ef::io::read_npy_header(path).descr, "<f2");
    const auto as_f16 = ef::io::read_npy<Scalar>(path);
    for (index_t i = 0; i < t.size(); ++i) {
      EXPECT_EQ(as_f32(i), static_cast<double>(static_cast<float>(t(i))));
      EXPECT_EQ(as_f16(i), static_cast<Scalar>(ef::detail::half_to_float(ef::detail::double_to_half(t(i)))));
    }
    ef::io::write_npy(path, t, ef::io::npy_float::f64);
    EXPECT_EQ(max_abs_diff(ef::io::read_npy<Scalar>(path).values(), t.values()), 0.0);
  }
}

TEST(NpyRoundTrip, Integers) {
  const fs::path path = test_dir("npy") / "ids.npy";
  const std::vector<std::int64_t> values = {1, -2, std::numeric_limits<std::int64_t>::max(),
                                            std::numeric_limits<std::int64_t>::min(), 0, 7};
  const std::vector<index_t> shape = {2, 3};
  ef::io::write_npy_ints(path, values, shape);
  std::vector<index_t> back_shape;
  EXPECT_EQ(ef::io::read_npy_ints(path, &back_shape), values);
  EXPECT_EQ(back_shape, shape);
  // Rank 0: one value, empty shape.
  const std::vector<std::int64_t> one = {42};
  ef::io::write_npy_ints(path, one, {});
  EXPECT_EQ(ef::io::read_npy_ints(path, &back_shape), one);
  EXPECT_TRUE(back_shape.empty());
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::write_npy_ints(path, values, std::vector<index_t>{4}), ef::invalid_argument,
                                "ids.npy: shape (4,) does not hold 6 values");
}

// ---------------------------------------------------------------------------------------------
// NumPy's bytes

TEST(NpyLayout, WriterEmitsNumpysBytes) {
  // np.save of np.arange(1, 7, dtype='<f4').reshape(2, 3): header padded so magic + length + header
  // is 128 bytes (64-byte alignment, after 20 spare spaces for axis 0), data right after.
  const std::string expected = std::string("\x93NUMPY\x01\x00v\x00", 10) +
                               "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" +
                               std::string(58, ' ') + "\n" + le_bytes<float>({1, 2, 3, 4, 5, 6});
  const auto t = ef::tensor<float>::from_values(ef::tensor_shape{2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  const fs::path path = test_dir("npy") / "numpy.npy";
  ef::io::write_npy(path, t);
  EXPECT_EQ(read_file(path), expected);
  const auto h = ef::io::read_npy_header(path);
  EXPECT_EQ(h.data_offset, 128u);
  EXPECT_EQ(h.shape, (std::vector<index_t>{2, 3}));
  EXPECT_EQ(h.numel, 6);
}

TEST(NpyLayout, CommittedFixturesRewriteByteForByte) {
  // tests/fixtures/*/*.npy were written by np.save (tools/make_fixtures.py): '<f8' and '<i8' arrays.
  int floats = 0, ints = 0;
  for (const auto& dir : fs::directory_iterator(EIGENFORMER_TEST_DATA)) {
    if (!dir.is_directory()) continue;
    for (const auto& file : fs::directory_iterator(dir.path())) {
      if (file.path().extension() != ".npy") continue;
      SCOPED_TRACE(file.path().string());
      const auto h = ef::io::read_npy_header(file.path());
      const fs::path copy = test_dir("npy") / "copy.npy";
      if (h.descr == "<f8") {
        ef::io::write_npy(copy, ef::io::read_npy<double>(file.path()));
        ++floats;
      } else {
        ASSERT_EQ(h.descr, "<i8");
        std::vector<index_t> shape;
        const auto values = ef::io::read_npy_ints(file.path(), &shape);
        EXPECT_EQ(shape, h.shape);
        ef::io::write_npy_ints(copy, values, shape);
        ++ints;
      }
      ASSERT_EQ(read_file(copy), read_file(file.path()));
    }
  }
  EXPECT_GT(floats, 10);
  EXPECT_GT(ints, 10);
}

TEST(NpyLayout, ReadsEverySpellingNumpyHasUsed) {
  const fs::path path = test_dir("npy") / "v.npy";
  const std::string data = le_bytes<float>({1.5f, -2.0f});
  const std::vector<std::string> headers = {
      dict("<f4", "(2,)"),
      "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}",        // any key order, no trailing comma
      "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2L,)}",  // double quotes, Python 2 longs
      "{'descr':'<f4','fortran_order':False,'shape':(2,),}",
      "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",        // rank 1: Fortran order is C order
      "{'descr': '=f4', 'fortran_order': False, 'shape': (1, 2, 1), }",
  };
  for (int version : {1, 2, 3}) {
    for (const auto& h : headers) {
      SCOPED_TRACE(h + " version " + std::to_string(version));
      write_file(path, npy_bytes(h, data, version));
      const auto t = ef::io::read_npy<double>(path);
      ASSERT_EQ(t.size(), 2);
      EXPECT_EQ(t(0), 1.5);
      EXPECT_EQ(t(1), -2.0);
    }
  }
  write_file(path, npy_bytes(dict("<f8", "()"), le_bytes<double>({0.25})));
  const auto scalar = ef::io::read_npy<float>(path);
  EXPECT_EQ(scalar.shape(), (ef::tensor_shape{1}));  // rank 0 reads as [1]
  EXPECT_EQ(scalar(0), 0.25f);
  write_file(path, npy_bytes(dict("<f2", "(2,)"), le_bytes<std::uint16_t>({0x3C00, 0xFC00})));
  const auto halves = ef::io::read_npy<float>(path);
  EXPECT_EQ(halves(0), 1.0f);
  EXPECT_EQ(halves(1), -std::numeric_limits<float>::infinity());
}

TEST(NpyLayout, EveryIntegerDtype) {
  const fs::path path = test_dir("npy") / "i.npy";
  auto check = [&](const std::string& descr, const std::string& data, std::vector<std::int64_t> want) {
    SCOPED_TRACE(descr);
    std::string shape = "(";
    shape += std::to_string(want.size()) + ",)";
    write_file(path, npy_bytes(dict(descr, shape), data));
    EXPECT_EQ(ef::io::read_npy_ints(path), want);
  };
  check("|i1", le_bytes<std::int8_t>({-128, 127}), {-128, 127});
  check("|u1", le_bytes<std::uint8_t>({0, 255}), {0, 255});
  check("<i2", le_bytes<std::int16_t>({-32768, 5}), {-32768, 5});
  check("<u2", le_bytes<std::uint16_t>({65535}), {65535});
  check("<i4", le_bytes<std::int32_t>({-2147483647 - 1, 3}), {-2147483648LL, 3});
  check("<u4", le_bytes<std::uint32_t>({4294967295u}), {4294967295LL});
  check("<i8", le_bytes<std::int64_t>({-5, 1LL << 40}), {-5, 1LL << 40});
  check("<u8", le_bytes<std::uint64_t>({9223372036854775807ull}), {9223372036854775807LL});
  check("|b1", le_bytes<std::uint8_t>({0, 1, 1}), {0, 1, 1});
  check(">u1", le_bytes<std::uint8_t>({9}), {9});  // byte order means nothing for one byte
}

TEST(NpyLayout, UnalignedDataIsCopiedNotDereferenced) {
  // A header whose length is not a multiple of 8 puts '<f8' data at an odd address (UBSan checks).
  std::string header = dict("<f8", "(2,)");
  header.append(63 - (10 + header.size()) % 64 + 3, ' ');
  header += '\n';
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size());
  bytes += '\0';
  const fs::path path = test_dir("npy") / "odd.npy";
  write_file(path, bytes + header + le_bytes<double>({3.0, -1.0}));
  EXPECT_EQ(ef::io::read_npy<double>(path)(1), -1.0);
}

// ---------------------------------------------------------------------------------------------
// Malformed files

TEST(NpyMalformed, MissingShortAndBadPreamble) {
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::read_npy<float>(test_dir("npy") / "missing.npy"), ef::error,
                                "missing.npy: cannot open: No such file or directory");
  expect_rejected("", "not a .npy file (no \\x93NUMPY magic)");
  expect_rejected("\x93NUMPY", "not a .npy file");
  expect_rejected(std::string("\x93NUMPZ\x01\x00\x10\x00", 10), "not a .npy file");
  expect_rejected(std::string("\x93NUMPY\x04\x00\x10\x00", 10), "version 4.0, expected 1.0, 2.0 or 3.0");
  expect_rejected(std::string("\x93NUMPY\x01\x01\x10\x00", 10), "version 1.1");
  expect_rejected(std::string("\x93NUMPY\x02\x00\x10\x00", 10), "file ends inside the header length");
  expect_rejected(std::string("\x93NUMPY\x01\x00\x10\x00{}", 12), "header length 16 runs past the end of the file (12 bytes)");
  expect_rejected(std::string("\x93NUMPY\x02\x00\x00\x00\x00\x01{}", 14), "header length 16777216 exceeds the limit");
}

TEST(NpyMalformed, HeaderDict) {
  const std::string data = le_bytes<float>({1, 2});
  expect_rejected(npy_bytes("[1, 2]", data), "header: expected '{' at offset 0");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': False}", data), "header: missing key 'shape'");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", data),
                  "header: unexpected key 'extra', expected only descr, fortran_order and shape");
  expect_rejected(npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", data),
                  "header: key 'descr' appears twice");
  expect_rejected(npy_bytes("{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", data), "header: expected ':'");
  expect_rejected(npy_bytes("{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}", data), "header: expected '}'");
  expect_rejected(npy_bytes("{'descr': '<f4", data), "unterminated string");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", data), "expected True or False");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk", data), "text after the dict");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", data), "expected '}'");
  expect_rejected(npy_bytes("{'descr': '<\\x66\\x34', 'fortran_order': False, 'shape': (2,)}", data), "escape sequence");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\x01", data), "byte 1 at offset");
  expect_rejected(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\xC3\xA9", data),
                  "byte 195 at offset");
}

TEST(NpyMalformed, Shapes) {
  const std::string data = le_bytes<float>({1, 2});
  expect_rejected(npy_bytes(dict("<f4", "(2, -1)"), data), "negative extent in the shape");
  expect_rejected(npy_bytes(dict("<f4", "(2.0,)"), data), "expected ',' or ')'");
  expect_rejected(npy_bytes(dict("<f4", "[2]"), data), "expected '('");
  expect_rejected(npy_bytes(dict("<f4", "(2)"), data), "(n) is not a tuple, expected (n,)");
  expect_rejected(npy_bytes(dict("<f4", "(2 3)"), data), "expected ',' or ')'");
  expect_rejected(npy_bytes(dict("<f4", "(9223372036854775808,)"), data), "extent too large");
  expect_rejected(npy_bytes(dict("<f4", "(1099511627776, 1099511627776)"), data),
                  "dtype '<f4' shape (1099511627776, 1099511627776): size overflows");
  expect_rejected(npy_bytes(dict("<f8", "(2305843009213693952,)"), data), "size overflows");  // elements fit, bytes not
  std::string deep = "(";
  for (int i = 0; i < 65; ++i) deep += "1, ";
  expect_rejected(npy_bytes(dict("<f4", deep + ")"), data), "shape has more than 64 axes");
  expect_rejected(npy_bytes(dict("<f4", "(1, 1, 1, 1, 2)"), data), "rank 5 shape (1, 1, 1, 1, 2), expected 0 to 4");
}

TEST(NpyMalformed, Dtypes) {
  const std::string data = le_bytes<float>({1, 2});
  expect_rejected(npy_bytes(dict(">f4", "(2,)"), data), "dtype '>f4' is big-endian, expected little-endian");
  expect_rejected(npy_bytes(dict("|O", "(2,)"), data), "dtype '|O' is not a NumPy type string");
  expect_rejected(npy_bytes(dict("|O8", "(2,)"), data), "dtype '|O8': object arrays (pickled Python objects) are not supported");
  expect_rejected(npy_bytes(dict("<c8", "(1,)"), data), "dtype '<c8' is not supported");
  expect_rejected(npy_bytes(dict("<U1", "(2,)"), data), "dtype '<U1' is not supported");
  expect_rejected(npy_bytes(dict("<f16", "(1,)"), std::string(16, '\0')), "dtype '<f16' is not supported");
  expect_rejected(npy_bytes(dict("f4", "(2,)"), data), "dtype 'f4' is not a NumPy type string");
  expect_rejected(npy_bytes("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2,)}", data),
                  "structured dtypes (a list descr) are not supported");
  expect_rejected(npy_bytes(dict("<i4", "(2,)"), data), "dtype '<i4', expected a float array");
  expect_rejected(npy_bytes(dict("<f4", "(2,)"), data), "dtype '<f4', expected an integer or bool array", true);
  expect_rejected(npy_bytes(dict("<u8", "(1,)"), le_bytes<std::uint64_t>({1ull << 63})),
                  "element 0 is 9223372036854775808, beyond int64", true);
}

TEST(NpyMalformed, FortranOrderAndDataLength) {
  const std::string data = le_bytes<float>({1, 2, 3, 4, 5, 6});
  expect_rejected(npy_bytes(dict("<f4", "(2, 3)", "True"), data),
                  "fortran_order is True for shape (2, 3); only C-order arrays are supported");
  expect_rejected(npy_bytes(dict("<f4", "(2, 4)"), data), "data is 24 bytes, expected 32 for dtype '<f4' shape (2, 4) (truncated)");
  expect_rejected(npy_bytes(dict("<f4", "(5,)"), data), "4 bytes after the data of dtype '<f4' shape (5,)");
  expect_rejected(npy_bytes(dict("<i8", "(2,)"), le_bytes<std::int64_t>({1})), "data is 8 bytes, expected 16", true);
}

TEST(NpyMalformed, RandomCorruptionIsRejectedCleanly) {
  // As for safetensors: every corrupted file is read in full or rejected with a format_error.
  const fs::path dir = test_dir("npy");
  filler fill(5);
  ef::io::write_npy(dir / "good.npy", fill.make<float>({3, 5}));
  const std::vector<std::int64_t> ids = {1, 2, 3};
  ef::io::write_npy_ints(dir / "ids.npy", ids, std::vector<index_t>{3});
  const fs::path path = dir / "corrupt.npy";
  int accepted = 0;
  for (const fs::path& source : {dir / "good.npy", dir / "ids.npy"}) {
    const std::string good = read_file(source);
    for (int trial = 0; trial < 1000; ++trial) {
      std::string bytes = good;
      if (trial % 5 == 0) {
        bytes.resize(static_cast<std::size_t>(fill.next(0, static_cast<double>(good.size()))));
      } else {
        for (int k = 0, n = 1 + trial % 3; k < n; ++k) {
          // Mostly the header: that is where the parser is.
          const double end = trial % 2 ? 128.0 : static_cast<double>(good.size());
          bytes[static_cast<std::size_t>(fill.next(0, end))] = static_cast<char>(fill.next(0, 256));
        }
      }
      write_file(path, bytes);
      try {
        if (ef::io::read_npy_header(path).kind == 'f') {
          (void)ef::io::read_npy<double>(path);
        } else {
          (void)ef::io::read_npy_ints(path);
        }
        ++accepted;
      } catch (const ef::format_error&) {
      }
    }
  }
  EXPECT_GT(accepted, 0);
}

TEST(NpyWriter, WholeOrNotAtAll) {
  const fs::path dir = test_dir("npy");
  const ef::tensor<float> t({2});
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::write_npy(dir / "no" / "dir" / "out.npy", t), ef::error,
                                "out.npy: cannot create a temporary file to write");
  fs::create_directory(dir / "taken.npy");
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::write_npy(dir / "taken.npy", t), ef::error,
                                "taken.npy: cannot move the written file into place");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "a temporary file was left";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hostile files. Each test names the wrong implementation it catches.

TEST(NpyHostile, FifoEmptyPathAndUnindexableShape) {
  const fs::path dir = test_dir("npy");
  // Catches: open() before the file type check, which blocks forever on a FIFO.
  const fs::path fifo = dir / "fifo.npy";
  EXPECT_EQ(message_for_fifo(fifo, [&] { (void)ef::io::read_npy<float>(fifo); }), fifo.string() + ": not a regular file");
  EXPECT_EQ(message_for_fifo(fifo, [&] { (void)ef::io::read_npy_ints(fifo); }), fifo.string() + ": not a regular file");
  // Catches: passing "" to open(), which reports ": cannot open: No such file or directory".
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::read_npy<float>(""), ef::error, "empty path");
  EIGENFORMER_EXPECT_THROW_WITH((void)ef::io::read_npy_header(""), ef::error, "empty path");
  // Catches: a zero-element shape whose other extents overflow the tensor's element count, reported
  // as a bare "tensor shape [...]: element count overflows" without the file.
  expect_rejected(npy_bytes(dict("<f4", "(4294967296, 4294967295, 0)"), ""),
                  "tensor shape [4294967296, 4294967295, 0]: element count overflows");
}

TEST(NpyHostile, MessagesAreShortAndOnOneLine) {
  // Catches: quoting a hostile header's strings whole, or with its newline (messages are one line).
  const fs::path dir = test_dir("npy");
  for (const std::string& header : {dict(std::string(20'000, 'f'), "(1,)"), "{'" + std::string(20'000, 'k') + "': 1}",
                                    std::string("{'descr':\n\n")}) {
    const fs::path path = dir / "long.npy";
    write_file(path, npy_bytes(header, ""));
    try {
      (void)ef::io::read_npy<float>(path);
      ADD_FAILURE() << "accepted";
    } catch (const ef::format_error& e) {
      const std::string what = e.what();
      EXPECT_LT(what.size(), 500u) << what.substr(0, 300);
      EXPECT_EQ(what.find('\n'), std::string::npos) << "not one line: " << what.substr(0, 300);
    }
  }
}

// Every writer of the library (npy, safetensors) writes through a symbolic link to its target (the
// link stays a link), refuses to replace a read-only file (left as it was), and gives a replaced
// file back its permission bits. Catches a writer whose rename replaces the link by a regular file,
// one that replaces a read-only file silently (a rename needs only the folder's permission), and
// one whose new file comes back 0666 minus the umask instead of the old 0600.
TEST(NpyWriter, FollowsLinksKeepsReadOnlyFilesAndModes) {
  const fs::path dir = test_dir("npy");
  ef::tensor<float> t({2});
  t(0) = 1.5f;
  t(1) = -2.0f;
  const fs::path target = dir / "target.npy", link = dir / "link.npy";
  ef::io::write_npy(target, t);
  fs::create_symlink("target.npy", link);
  t(0) = 7.0f;
  ef::io::write_npy(link, t);
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link)));
  EXPECT_EQ(ef::io::read_npy<float>(target)(0), 7.0f);

  const fs::path dangling = dir / "dangling.npy";
  fs::create_symlink(dir / "created.npy", dangling);
  ef::io::write_npy(dangling, t);
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(dangling)));
  EXPECT_EQ(ef::io::read_npy<float>(dir / "created.npy")(1), -2.0f);

  const auto private_mode = fs::perms::owner_read | fs::perms::owner_write;
  fs::permissions(target, private_mode);
  ef::io::write_npy(target, t);
  EXPECT_EQ(fs::status(target).permissions() & fs::perms::all, private_mode);

  const auto read_only = fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read;
  fs::permissions(target, read_only);
  const auto before = fs::file_size(target);
  t(0) = 9.0f;
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::write_npy(link, t), ef::error,
                                link.string() + " (" + target.string() + "): read-only, not replaced");
  EXPECT_EQ(ef::io::read_npy<float>(target)(0), 7.0f);
  EXPECT_EQ(fs::file_size(target), before);
  EXPECT_EQ(fs::status(target).permissions() & fs::perms::all, read_only);
  fs::permissions(target, fs::perms::owner_write, fs::perm_options::add);  // so the folder can be cleaned
}
