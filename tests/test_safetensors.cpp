// io/safetensors.hpp and detail/half.hpp: 16-bit float conversions (all 65536 patterns), the dtype
// table, writer/reader round trips, the Python exporter's layout and the committed fixtures, and
// every malformed file rejected with a format_error that starts with the path and names the culprit.
#include <eigenformer/detail/half.hpp>
#include <eigenformer/io/safetensors.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/hostile_files.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
namespace fs = std::filesystem;
using ef::index_t;
using ef::io::dtype;
using namespace ef::testing;

namespace {

// ---------------------------------------------------------------------------------------------
// Helpers (test_dir, write_file, read_file: test_util.hpp)

std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

/// A safetensors file: header length, `header` padded with spaces to `align` bytes, then `data`.
std::string safetensors_bytes(std::string header, const std::string& data, std::size_t align = 8) {
  header.append((align - header.size() % align) % align, ' ');
  return u64_le(header.size()) + header + data;
}

template <class T>
std::string le_bytes(std::initializer_list<T> values) {
  std::string s;
  for (T v : values) s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return s;
}

/// Expects opening `bytes` (written to `name` in a fresh test directory) to throw a format_error whose
/// message starts with the path and contains `needle`.
void expect_rejected(const std::string& bytes, const std::string& needle, const std::string& name = "bad.safetensors") {
  const fs::path path = test_dir("safetensors") / name;
  write_file(path, bytes);
  try {
    ef::io::safetensors_file file(path);
    ADD_FAILURE() << "accepted a malformed file; expected an error containing: " << needle;
  } catch (const ef::format_error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(path.string() + ": ", 0), 0u) << "message does not start with the path: " << what;
    EXPECT_NE(what.find(needle), std::string::npos) << "message: " << what << "\nexpected to contain: " << needle;
  }
}

/// One F32 tensor entry.
std::string entry(const std::string& name, const std::string& shape, std::uint64_t begin, std::uint64_t end,
                  const std::string& type = "F32") {
  return "\"" + name + "\":{\"dtype\":\"" + type + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// ---------------------------------------------------------------------------------------------
// detail/half.hpp

/// The value of IEEE binary16 bits `h`, straight from the definition.
double half_reference(std::uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  double v = 0;
  if (exponent == 0x1F) v = mantissa ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (exponent == 0) v = std::ldexp(mantissa, -24);
  else v = std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
  return sign ? -v : v;
}

bool is_half_nan(std::uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }
bool is_bf16_nan(std::uint16_t b) { return (b & 0x7F80) == 0x7F80 && (b & 0x7F); }

TEST(Half, WideningMatchesTheDefinitionForAllPatterns) {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<std::uint16_t>(i);
    const float f = ef::detail::half_to_float(h);
    const double ref = half_reference(h);
    if (is_half_nan(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << i;
      ASSERT_EQ(std::signbit(f), (h >> 15) != 0) << std::hex << i;
      ASSERT_EQ((std::bit_cast<std::uint32_t>(f) >> 13) & 0x3FF, h & 0x3FFu) << "payload " << std::hex << i;
    } else {
      // Bitwise: distinguishes -0 from +0.
      ASSERT_EQ(std::bit_cast<std::uint32_t>(f), std::bit_cast<std::uint32_t>(static_cast<float>(ref))) << std::hex << i;
    }
  }
}

TEST(Half, NarrowingInvertsWideningForAllPatterns) {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<std::uint16_t>(i);
    const float f = ef::detail::half_to_float(h);
    const std::uint16_t back_f = ef::detail::float_to_half(f);
    const std::uint16_t back_d = ef::detail::double_to_half(static_cast<double>(f));
    if (is_half_nan(h)) {
      ASSERT_TRUE(is_half_nan(back_f) && is_half_nan(back_d)) << std::hex << i;
      ASSERT_EQ(back_f & 0x8000, h & 0x8000) << std::hex << i;
      if (h & 0x200) {
        ASSERT_EQ(back_f, h) << "quiet NaN payload " << std::hex << i;
      }
    } else {
      ASSERT_EQ(back_f, h) << std::hex << i;
      ASSERT_EQ(back_d, h) << std::hex << i;
    }
  }
}

TEST(Half, NarrowingRoundsToNearestEvenBetweenEveryPairOfNeighbours) {
  // Every interval [h, h+1] of non-negative halves, the last one ending at 65536 (rounds to infinity).
  for (std::uint16_t h = 0; h < 0x7C00; ++h) {
    const double lo = half_reference(h);
    const double hi = h + 1 == 0x7C00 ? 65536.0 : half_reference(static_cast<std::uint16_t>(h + 1));
    const double mid = (lo + hi) / 2;  // 12 significant bits: exact in float
    const auto up = static_cast<std::uint16_t>(h + 1);
    const std::uint16_t even = (h & 1) ? up : h;
    for (std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
      const double s = sign ? -1.0 : 1.0;
      const auto f = static_cast<float>(s * mid);
      ASSERT_EQ(ef::detail::float_to_half(f), even | sign) << "tie above " << std::hex << h;
      ASSERT_EQ(ef::detail::double_to_half(s * mid), even | sign) << std::hex << h;
      ASSERT_EQ(ef::detail::float_to_half(std::nextafter(f, static_cast<float>(s) * 1e9f)), up | sign) << std::hex << h;
      ASSERT_EQ(ef::detail::float_to_half(std::nextafter(f, 0.0f)), h | sign) << std::hex << h;
      // Below float's resolution: a float detour would round to the tie first, then to even.
      ASSERT_EQ(ef::detail::double_to_half(std::nextafter(s * mid, s * 1e9)), up | sign) << std::hex << h;
      ASSERT_EQ(ef::detail::double_to_half(std::nextafter(s * mid, 0.0)), h | sign) << std::hex << h;
    }
  }
}

TEST(Half, SpecialValues) {
  using ef::detail::float_to_half;
  EXPECT_EQ(float_to_half(0.0f), 0x0000);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_half(65519.99f), 0x7BFF);
  EXPECT_EQ(float_to_half(65520.0f), 0x7C00);  // the tie above the largest finite goes to infinity
  EXPECT_EQ(float_to_half(1e10f), 0x7C00);
  EXPECT_EQ(float_to_half(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(float_to_half(0x1p-24f), 0x0001);      // smallest subnormal
  EXPECT_EQ(float_to_half(0x1p-25f), 0x0000);      // half of it: tie, to even (zero)
  EXPECT_EQ(float_to_half(0x1.8p-24f), 0x0002);    // 1.5 x smallest: tie, to even (2)
  EXPECT_EQ(float_to_half(0x1.ffcp-15f), 0x0400);  // tie above the largest subnormal: up to the smallest normal
  EXPECT_EQ(float_to_half(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(ef::detail::double_to_half(std::numeric_limits<double>::denorm_min()), 0x0000);
  EXPECT_TRUE(is_half_nan(float_to_half(std::numeric_limits<float>::quiet_NaN())));
  // A signalling NaN whose payload lives only in the low bits must not become infinity.
  EXPECT_TRUE(is_half_nan(float_to_half(std::bit_cast<float>(0x7F800001u))));
}

TEST(BFloat16, WideningIsTheTopHalfOfAFloatForAllPatterns) {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const float f = ef::detail::bfloat16_to_float(static_cast<std::uint16_t>(i));
    ASSERT_EQ(std::bit_cast<std::uint32_t>(f), i << 16) << std::hex << i;
  }
}

TEST(BFloat16, NarrowingInvertsWideningForAllPatterns) {
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const float f = ef::detail::bfloat16_to_float(b);
    const std::uint16_t back_f = ef::detail::float_to_bfloat16(f);
    const std::uint16_t back_d = ef::detail::double_to_bfloat16(static_cast<double>(f));
    if (is_bf16_nan(b)) {
      ASSERT_TRUE(is_bf16_nan(back_f) && is_bf16_nan(back_d)) << std::hex << i;
      ASSERT_EQ(back_f & 0x8000, b & 0x8000) << std::hex << i;
      if (b & 0x40) {
        ASSERT_EQ(back_f, b) << "quiet NaN payload " << std::hex << i;
      }
    } else {
      ASSERT_EQ(back_f, b) << std::hex << i;
      ASSERT_EQ(back_d, b) << std::hex << i;
    }
  }
}

TEST(BFloat16, NarrowingRoundsToNearestEvenBetweenEveryPairOfNeighbours) {
  for (std::uint16_t b = 0; b < 0x7F80; ++b) {
    const double lo = ef::detail::bfloat16_to_float(b);
    const double hi = b + 1 == 0x7F80 ? 0x1p128 : ef::detail::bfloat16_to_float(static_cast<std::uint16_t>(b + 1));
    const double mid = (lo + hi) / 2;  // 9 significant bits, below FLT_MAX: exact in float
    const auto up = static_cast<std::uint16_t>(b + 1);
    const std::uint16_t even = (b & 1) ? up : b;
    for (std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
      const double s = sign ? -1.0 : 1.0;
      const auto f = static_cast<float>(s * mid);
      ASSERT_EQ(ef::detail::float_to_bfloat16(f), even | sign) << "tie above " << std::hex << b;
      ASSERT_EQ(ef::detail::double_to_bfloat16(s * mid), even | sign) << std::hex << b;
      const float away = std::nextafter(f, static_cast<float>(s) * std::numeric_limits<float>::infinity());
      ASSERT_EQ(ef::detail::float_to_bfloat16(away), up | sign) << std::hex << b;
      ASSERT_EQ(ef::detail::float_to_bfloat16(std::nextafter(f, 0.0f)), b | sign) << std::hex << b;
      ASSERT_EQ(ef::detail::double_to_bfloat16(std::nextafter(s * mid, s * 1e300)), up | sign) << std::hex << b;
      ASSERT_EQ(ef::detail::double_to_bfloat16(std::nextafter(s * mid, 0.0)), b | sign) << std::hex << b;
    }
  }
}

TEST(BFloat16, SpecialValues) {
  using ef::detail::float_to_bfloat16;
  EXPECT_EQ(float_to_bfloat16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bfloat16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bfloat16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to infinity
  EXPECT_EQ(ef::detail::double_to_bfloat16(1e300), 0x7F80);
  EXPECT_EQ(ef::detail::double_to_bfloat16(1e-300), 0x0000);
  EXPECT_EQ(float_to_bfloat16(std::numeric_limits<float>::denorm_min()), 0x0000);  // tie at zero, to even
  EXPECT_TRUE(is_bf16_nan(float_to_bfloat16(std::bit_cast<float>(0x7F800001u))));
  EXPECT_TRUE(is_bf16_nan(ef::detail::double_to_bfloat16(std::numeric_limits<double>::quiet_NaN())));
}

// ---------------------------------------------------------------------------------------------
// dtype table

TEST(SafetensorsDtype, NamesSizesAndParsing) {
  const std::map<std::string, std::pair<dtype, int>> expected = {
      {"BOOL", {dtype::boolean, 8}}, {"U8", {dtype::u8, 8}},       {"I8", {dtype::i8, 8}},
      {"U16", {dtype::u16, 16}},     {"I16", {dtype::i16, 16}},    {"U32", {dtype::u32, 32}},
      {"I32", {dtype::i32, 32}},     {"U64", {dtype::u64, 64}},    {"I64", {dtype::i64, 64}},
      {"F16", {dtype::f16, 16}},     {"BF16", {dtype::bf16, 16}},  {"F32", {dtype::f32, 32}},
      {"F64", {dtype::f64, 64}},     {"C64", {dtype::c64, 64}},    {"F8_E4M3", {dtype::f8_e4m3, 8}},
      {"F8_E5M2", {dtype::f8_e5m2, 8}}, {"F8_E8M0", {dtype::f8_e8m0, 8}}, {"F6_E2M3", {dtype::f6_e2m3, 6}},
      {"F6_E3M2", {dtype::f6_e3m2, 6}}, {"F4", {dtype::f4, 4}},
  };
  EXPECT_EQ(expected.size(), ef::detail::safetensors_dtypes.size());
  for (std::size_t i = 0; i < ef::detail::safetensors_dtypes.size(); ++i) {
    EXPECT_EQ(static_cast<std::size_t>(ef::detail::safetensors_dtypes[i].type), i) << "table out of enum order";
  }
  for (const auto& [name, want] : expected) {
    const auto parsed = ef::io::parse_dtype(name);
    ASSERT_TRUE(parsed.has_value()) << name;
    EXPECT_EQ(*parsed, want.first) << name;
    EXPECT_EQ(ef::io::dtype_name(want.first), name);
    EXPECT_EQ(ef::io::dtype_bits(want.first), want.second) << name;
    EXPECT_EQ(ef::io::dtype_size(want.first), want.second % 8 ? 0u : static_cast<std::size_t>(want.second / 8));
  }
  EXPECT_FALSE(ef::io::parse_dtype("f32").has_value());
  EXPECT_FALSE(ef::io::parse_dtype("F24").has_value());
  EXPECT_FALSE(ef::io::parse_dtype("").has_value());
  EXPECT_TRUE(ef::io::is_float_dtype(dtype::bf16));
  EXPECT_FALSE(ef::io::is_float_dtype(dtype::i64));
  EXPECT_FALSE(ef::io::is_float_dtype(dtype::f8_e4m3));
}

// ---------------------------------------------------------------------------------------------
// Round trips

template <class Scalar>
class SafetensorsRoundTrip : public ::testing::Test {};
TYPED_TEST_SUITE(SafetensorsRoundTrip, scalar_types);

/// What a value becomes after being stored as `storage` and read back as Scalar.
template <class Scalar>
Scalar stored(Scalar v, dtype storage) {
  switch (storage) {
    case dtype::f32: return static_cast<Scalar>(static_cast<float>(v));
    case dtype::f16: return static_cast<Scalar>(ef::detail::half_to_float(ef::detail::double_to_half(v)));
    case dtype::bf16: return static_cast<Scalar>(ef::detail::bfloat16_to_float(ef::detail::double_to_bfloat16(v)));
    default: return v;
  }
}

TYPED_TEST(SafetensorsRoundTrip, EveryStorageDtype) {
  using Scalar = TypeParam;
  const fs::path dir = test_dir("safetensors");
  filler fill(7);
  auto weight = fill.make<Scalar>({2, 3});
  auto bias = fill.make<Scalar>({3}, -100, 100);
  auto big = fill.make<Scalar>({2, 3, 4, 5});
  ef::tensor<Scalar> special({8});
  const Scalar inf = std::numeric_limits<Scalar>::infinity();
  const Scalar specials[] = {Scalar(0), Scalar(-0.0), inf, -inf, Scalar(1e-7), Scalar(-3.0e-6), Scalar(65504), Scalar(1) / 3};
  std::copy(std::begin(specials), std::end(specials), special.data());
  ef::tensor<Scalar> empty({0, 3});
  const std::map<std::string, std::string> metadata = {{"format", "eigenformer"}, {"config", "{\"d_model\": 4}"}};
  const std::vector<ef::io::named_tensor<Scalar>> tensors = {
      {"transformer.b.bias", bias}, {"a.weight", weight}, {"z.big", big}, {"special", special}, {"empty", empty}};

  for (dtype storage : {dtype::f32, dtype::f64, dtype::f16, dtype::bf16}) {
    SCOPED_TRACE(std::string(ef::io::dtype_name(storage)));
    const fs::path path = dir / (std::string(ef::io::dtype_name(storage)) + ".safetensors");
    ef::io::write_safetensors(path, tensors, metadata, storage);
    const ef::io::safetensors_file file(path);
    EXPECT_EQ(file.path(), path);
    EXPECT_EQ(file.metadata(), metadata);
    std::vector<std::string> names;
    for (const auto& t : file.tensors()) {
      names.push_back(t.name);
      EXPECT_EQ(t.type, storage);
    }
    EXPECT_EQ(names, (std::vector<std::string>{"a.weight", "empty", "special", "transformer.b.bias", "z.big"}));
    for (const auto& nt : tensors) {
      SCOPED_TRACE(nt.name);
      const auto back = file.read<Scalar>(nt.name);
      ASSERT_EQ(back.shape(), nt.value.shape());
      for (index_t i = 0; i < back.size(); ++i) {
        const Scalar want = stored(nt.value(i), storage);
        // Bitwise equality: exact where the storage holds the value, and rounding as specified where not.
        using bits = std::conditional_t<sizeof(Scalar) == 4, std::uint32_t, std::uint64_t>;
        ASSERT_EQ(std::bit_cast<bits>(back(i)), std::bit_cast<bits>(want))
            << "element " << i << ": " << back(i) << " vs " << want;
      }
      EXPECT_EQ(file.raw(nt.name).size(), static_cast<std::size_t>(nt.value.size()) * ef::io::dtype_size(storage));
    }
    if (storage == dtype::f64 || (storage == dtype::f32 && std::is_same_v<Scalar, float>)) {
      const auto back = file.read<Scalar>("z.big");
      EXPECT_EQ(max_abs_diff(back.values(), big.values()), 0.0) << "lossless storage must be exact";
    }
  }
}

TYPED_TEST(SafetensorsRoundTrip, NaNSurvivesEveryStorage) {
  using Scalar = TypeParam;
  ef::tensor<Scalar> t({2});
  t(0) = std::numeric_limits<Scalar>::quiet_NaN();
  t(1) = -std::numeric_limits<Scalar>::quiet_NaN();
  for (dtype storage : {dtype::f32, dtype::f64, dtype::f16, dtype::bf16}) {
    const fs::path path = test_dir("safetensors") / "nan.safetensors";
    ef::io::write_safetensors<Scalar>(path, {{"x", t}}, {}, storage);
    const auto back = ef::io::safetensors_file(path).read<Scalar>("x");
    EXPECT_TRUE(std::isnan(back(0)) && std::isnan(back(1))) << ef::io::dtype_name(storage);
    EXPECT_TRUE(std::signbit(back(1))) << ef::io::dtype_name(storage);
  }
}

TEST(SafetensorsWriter, LayoutIsUpstreams) {
  const fs::path path = test_dir("safetensors") / "layout.safetensors";
  const auto b = ef::tensor<float>::from_values(ef::tensor_shape{2}, std::vector<float>{1.0f, 2.0f});
  const auto a = ef::tensor<float>::from_values(ef::tensor_shape{1, 1}, std::vector<float>{-1.0f});
  ef::io::write_safetensors<float>(path, {{"b", b}, {"a", a}});
  const std::string bytes = read_file(path);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  // No __metadata__ when there is none; tensors in name order, contiguous; spaces to a multiple of 8.
  const std::string header = R"({"a":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  ASSERT_EQ(bytes.substr(8, n), header + std::string(n - header.size(), ' '));
  EXPECT_EQ(bytes.substr(8 + n), le_bytes<float>({-1.0f, 1.0f, 2.0f}));
}

TEST(SafetensorsWriter, EmptyFileMatchesUpstreamBytes) {
  // huggingface/safetensors test_empty: serialize({}) is "{}" padded to 8 bytes.
  const fs::path path = test_dir("safetensors") / "empty.safetensors";
  ef::io::write_safetensors<float>(path, {});
  EXPECT_EQ(read_file(path), u64_le(8) + "{}      ");
  const ef::io::safetensors_file file(path);
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
}

// ---------------------------------------------------------------------------------------------
// Reading what others write

TEST(SafetensorsReader, PythonExporterLayout) {
  // tools/reference.py write_safetensors: __metadata__ first, names sorted, separators (",", ":"),
  // json.dumps' ASCII escapes, spaces to a multiple of 8. A rank-0 F16 and an F32 pair.
  const std::string header =
      R"({"__metadata__":{"format":"eigenformer","config":"{\"d_model\": 4, \"name\": \"caf\u00e9\"}"},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[],"data_offsets":[8,10]}})";
  const std::string data = le_bytes<float>({1.5f, -2.0f}) + le_bytes<std::uint16_t>({0x3C00});
  const fs::path path = test_dir("safetensors") / "python.safetensors";
  write_file(path, safetensors_bytes(header, data));
  const ef::io::safetensors_file file(path);
  EXPECT_EQ(file.metadata().at("format"), "eigenformer");
  EXPECT_EQ(nlohmann::json::parse(file.metadata().at("config"))["name"], "caf\xC3\xA9");
  const auto a = file.read<double>("a");
  EXPECT_EQ(a.shape(), (ef::tensor_shape{2}));
  EXPECT_EQ(a(0), 1.5);
  EXPECT_EQ(a(1), -2.0);
  const auto& b = file.info("b");
  EXPECT_TRUE(b.shape.empty());
  EXPECT_EQ(b.numel(), 1);
  EXPECT_EQ(b.begin, 8u);
  EXPECT_EQ(b.end, 10u);
  const auto scalar = file.read<float>("b");
  EXPECT_EQ(scalar.shape(), (ef::tensor_shape{1}));  // rank 0 reads as [1]
  EXPECT_EQ(scalar(0), 1.0f);
}

TEST(SafetensorsReader, CommittedFixturesReadAndRewriteByteForByte) {
  int files = 0;
  for (const auto& dir : fs::directory_iterator(EIGENFORMER_TEST_DATA)) {
    const fs::path path = dir.path() / "model.safetensors";
    if (!fs::exists(path)) continue;
    SCOPED_TRACE(path.string());
    ++files;
    const ef::io::safetensors_file file(path);
    ASSERT_EQ(file.metadata().at("format"), "eigenformer");
    const auto config = nlohmann::json::parse(file.metadata().at("config"));
    const index_t d_model = config.at("d_model").get<index_t>();
    ASSERT_FALSE(file.tensors().empty());
    const dtype storage = file.tensors()[0].type;
    ASSERT_TRUE(ef::io::is_float_dtype(storage));
    const auto* norm = file.find("transformer.encoder.layers.0.norm1.weight");
    ASSERT_NE(norm, nullptr);
    EXPECT_EQ(norm->shape, std::vector<index_t>{d_model});

    // Re-export every tensor in the same dtype: the bytes must come back identical.
    std::vector<ef::tensor<double>> values;
    values.reserve(file.tensors().size());
    std::vector<ef::io::named_tensor<double>> named;
    for (const auto& t : file.tensors()) {
      EXPECT_EQ(t.type, storage) << t.name;
      values.push_back(file.read<double>(t.name));
      EXPECT_EQ(values.back().size(), t.numel());
    }
    for (std::size_t i = 0; i < values.size(); ++i) named.push_back({file.tensors()[i].name, values[i]});
    const fs::path copy = test_dir("safetensors") / "copy.safetensors";
    ef::io::write_safetensors(copy, named, file.metadata(), storage);
    const ef::io::safetensors_file again(copy);
    EXPECT_EQ(again.metadata(), file.metadata());
    ASSERT_EQ(again.tensors().size(), file.tensors().size());
    for (const auto& t : file.tensors()) {
      const auto x = file.raw(t.name), y = again.raw(t.name);
      ASSERT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << t.name;
      EXPECT_EQ(again.info(t.name).shape, t.shape);
    }
  }
  EXPECT_GE(files, 10);
}

TEST(SafetensorsReader, UnalignedDataIsCopiedNotDereferenced) {
  // A header of 8k+3 bytes puts the data at an odd address; UBSan would flag a misaligned load.
  std::string header = "{" + entry("d", "[2]", 0, 16, "F64") + "," + entry("f", "[3]", 16, 28) + "," +
                       entry("h", "[1]", 28, 30, "F16") + "," + entry("w", "[1]", 30, 32, "BF16") + "}";
  header.append((8 - header.size() % 8) % 8 + 3, ' ');
  const std::string data = le_bytes<double>({0.25, -8.0}) + le_bytes<float>({1.0f, 2.0f, 3.0f}) +
                           le_bytes<std::uint16_t>({0xC000, 0x4049});
  const fs::path path = test_dir("safetensors") / "unaligned.safetensors";
  write_file(path, u64_le(header.size()) + header + data);
  const ef::io::safetensors_file file(path);
  EXPECT_EQ(file.read<float>("d")(1), -8.0f);
  EXPECT_EQ(file.read<double>("f")(2), 3.0);
  EXPECT_EQ(file.read<float>("f")(0), 1.0f);
  EXPECT_EQ(file.read<double>("d")(0), 0.25);
  EXPECT_EQ(file.read<double>("h")(0), -2.0);
  EXPECT_EQ(file.read<float>("w")(0), 3.140625f);
}

TEST(SafetensorsReader, OffsetsInAnyOrderZeroSizedTensorsNullMetadata) {
  const std::string header = R"({"__metadata__":null,)" + entry("a", "[2]", 8, 16) + "," + entry("b", "[2]", 0, 8) +
                             "," + entry("e1", "[0]", 8, 8) + "," + entry("e2", "[3,0]", 16, 16) + "}";
  const fs::path path = test_dir("safetensors") / "order.safetensors";
  write_file(path, safetensors_bytes(header, le_bytes<float>({1, 2, 3, 4})));
  const ef::io::safetensors_file file(path);
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_EQ(file.read<float>("a")(0), 3.0f);
  EXPECT_EQ(file.read<float>("b")(1), 2.0f);
  EXPECT_EQ(file.read<float>("e2").shape(), (ef::tensor_shape{3, 0}));
  EXPECT_TRUE(file.raw("e1").empty());
}

TEST(SafetensorsReader, LookupRawShapesAndMoves) {
  const std::string header = "{" + entry("ids", "[2]", 0, 16, "I64") + "," +
                             entry("r5", "[1,1,1,1,2]", 16, 24) + "," + entry("w", "[2]", 24, 32) + "}";
  const std::string data = le_bytes<std::int64_t>({7, -1}) + le_bytes<float>({1, 2, 3, 4});
  const fs::path path = test_dir("safetensors") / "lookup.safetensors";
  write_file(path, safetensors_bytes(header, data));
  ef::io::safetensors_file original(path);
  const ef::io::safetensors_file file(std::move(original));
  EXPECT_TRUE(file.contains("ids"));
  EXPECT_FALSE(file.contains("id"));
  EXPECT_EQ(file.find("nope"), nullptr);
  ASSERT_NE(file.find("r5"), nullptr);
  EXPECT_EQ(file.find("r5")->shape.size(), 5u);
  const auto ids = file.raw("ids");
  std::int64_t second = 0;
  std::memcpy(&second, ids.data() + 8, 8);
  EXPECT_EQ(second, -1);
  EXPECT_EQ(file.raw("r5").size(), 8u);  // rank 5: readable raw...
  EIGENFORMER_EXPECT_THROW_WITH(file.read<float>("r5"), ef::format_error,
                                "tensor 'r5': rank 5 [1, 1, 1, 1, 2], expected 0 to 4");  // ...not as a tensor
  EIGENFORMER_EXPECT_THROW_WITH(file.read<float>("nope"), ef::format_error, "lookup.safetensors: tensor 'nope': not found");
  EIGENFORMER_EXPECT_THROW_WITH(file.raw("nope"), ef::format_error, "tensor 'nope': not found");
  EIGENFORMER_EXPECT_THROW_WITH(file.read<double>("ids"), ef::format_error,
                                "tensor 'ids': dtype I64, expected F16, BF16, F32 or F64");
  EIGENFORMER_EXPECT_THROW_WITH(file.read<float>("w", ef::tensor_shape{3}), ef::shape_error,
                                "lookup.safetensors: tensor 'w': shape [2], expected [3]");
  EXPECT_EQ(file.read<float>("w", ef::tensor_shape{2})(1), 4.0f);

  ef::tensor<float> out({16});
  const float* storage = out.data();
  file.read_into("w", out);
  EXPECT_EQ(out.data(), storage);  // storage reused
  EXPECT_EQ(out.shape(), (ef::tensor_shape{2}));
  EXPECT_EQ(out(0), 3.0f);
}

// ---------------------------------------------------------------------------------------------
// Malformed files: each rejected, naming the culprit

TEST(SafetensorsMalformed, MissingFileOrDirectory) {
  const fs::path dir = test_dir("safetensors");
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::safetensors_file(dir / "missing.safetensors"), ef::error,
                                "missing.safetensors: cannot open: No such file or directory");
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::safetensors_file{dir}, ef::error, "not a regular file");
}

TEST(SafetensorsMalformed, TooShort) {
  expect_rejected("", "file is 0 bytes, expected at least 8", "empty.safetensors");
  expect_rejected(std::string("\x08\0\0\0\0", 5), "file is 5 bytes, expected at least 8");
}

TEST(SafetensorsMalformed, HeaderLength) {
  expect_rejected(u64_le(100) + "{}", "header length 100 runs past the end of the file (10 bytes)");
  expect_rejected(u64_le(std::uint64_t{1} << 63) + "{}",
                  "header length 9223372036854775808 exceeds the limit of 100000000 bytes");
  expect_rejected(u64_le(~std::uint64_t{0}) + "{}", "header length 18446744073709551615 exceeds");
  expect_rejected(u64_le(100'000'001) + "{}", "header length 100000001 exceeds");
}

TEST(SafetensorsMalformed, HeaderNotAJsonObject) {
  expect_rejected(safetensors_bytes(R"({"a":)", ""), "header is not valid JSON");
  expect_rejected(safetensors_bytes("{\"\xFF\":1}", ""), "header is not valid JSON");  // not UTF-8
  expect_rejected(safetensors_bytes(std::string("{}\0\0", 4), ""), "header is not valid JSON: NUL byte at offset 2");
  expect_rejected(safetensors_bytes(std::string("{}\0{\"w\":1}", 9), ""), "NUL byte");
  expect_rejected(safetensors_bytes("[1,2]", ""), "header is a JSON array, expected an object");
  expect_rejected(safetensors_bytes("", ""), "header is not valid JSON");
}

TEST(SafetensorsMalformed, DuplicateKeys) {
  expect_rejected(safetensors_bytes("{" + entry("w", "[1]", 0, 4) + "," + entry("w", "[1]", 0, 4) + "}",
                                    le_bytes<float>({1})),
                  "key 'w' appears twice");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
                                    le_bytes<float>({1})),
                  "key 'dtype' appears twice");
}

TEST(SafetensorsMalformed, Entries) {
  const std::string four = le_bytes<float>({1});
  expect_rejected(safetensors_bytes(R"({"w":3})", ""), "tensor 'w': entry is a JSON number, expected an object");
  expect_rejected(safetensors_bytes("{" + entry("w", "[1]", 0, 4, "F24") + "}", four), "tensor 'w': unknown dtype \"F24\"");
  expect_rejected(safetensors_bytes("{" + entry("w", "[1]", 0, 4, "f32") + "}", four), "tensor 'w': unknown dtype \"f32\"");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", four),
                  "tensor 'w': dtype 32 is not a string");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1]}})", four), "tensor 'w': missing key 'data_offsets'");
  expect_rejected(safetensors_bytes(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", four), "tensor 'w': missing key 'dtype'");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"offsets":[0,4]}})", four),
                  "tensor 'w': unexpected key 'offsets'");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", four),
                  "tensor 'w': unexpected key 'x'");
}

TEST(SafetensorsMalformed, Shapes) {
  const std::string four = le_bytes<float>({1});
  expect_rejected(safetensors_bytes("{" + entry("w", "4", 0, 4) + "}", four), "tensor 'w': shape 4 is not an array");
  expect_rejected(safetensors_bytes("{" + entry("w", "[2,-1]", 0, 4) + "}", four),
                  "tensor 'w': shape[1] is -1, expected a non-negative integer");
  expect_rejected(safetensors_bytes("{" + entry("w", "[2.5]", 0, 4) + "}", four), "tensor 'w': shape[0] is 2.5");
  expect_rejected(safetensors_bytes("{" + entry("w", "[\"1\"]", 0, 4) + "}", four), "tensor 'w': shape[0] is \"1\"");
  expect_rejected(safetensors_bytes("{" + entry("w", "[1e2]", 0, 4) + "}", four), "shape[0] is 100.0");
  expect_rejected(safetensors_bytes("{" + entry("w", "[9223372036854775808]", 0, 4) + "}", four),
                  "tensor 'w': shape[0] is 9223372036854775808, too large");
  expect_rejected(safetensors_bytes("{" + entry("w", "[1,1,1,1,1,1,1,1,1]", 0, 4) + "}", four),
                  "tensor 'w': shape has rank 9, expected at most 8");
  expect_rejected(safetensors_bytes("{" + entry("w", "[1099511627776,1099511627776]", 0, 4) + "}", four),
                  "tensor 'w': F32 [1099511627776, 1099511627776]: size overflows");
  expect_rejected(safetensors_bytes("{" + entry("w", "[4611686018427387904]", 0, 4) + "}", four),
                  "F32 [4611686018427387904]: size overflows");  // elements fit, bytes do not
  expect_rejected(safetensors_bytes("{" + entry("w", "[3]", 0, 2, "F4") + "}", "ab"), "tensor 'w': F4 [3] is 12 bits");
}

TEST(SafetensorsMalformed, DataOffsets) {
  const std::string eight = le_bytes<float>({1, 2});
  expect_rejected(safetensors_bytes("{" + entry("w", "[2]", 8, 0) + "}", eight),
                  "tensor 'w': data_offsets [8, 0] are reversed");
  expect_rejected(safetensors_bytes("{" + entry("w", "[4]", 0, 16) + "}", eight),
                  "tensor 'w': data_offsets [0, 16] run past the end of the data section (8 bytes)");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", eight),
                  "tensor 'w': data_offsets [0], expected [begin, end]");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", eight),
                  "tensor 'w': data_offsets[0] is -8, expected a non-negative integer");
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})", eight),
                  "tensor 'w': data_offsets[1] is 1.8446744073709552e+19");
  expect_rejected(safetensors_bytes("{" + entry("generator.weight", "[4,8]", 0, 100) + "}", std::string(128, '\0'),
                                    8),
                  "tensor 'generator.weight': data_offsets [0, 100] cover 100 bytes, expected 128 for F32 [4, 8]");
  expect_rejected(safetensors_bytes("{" + entry("s", "[]", 0, 8) + "}", eight),
                  "tensor 's': data_offsets [0, 8] cover 8 bytes, expected 4 for F32 []");
}

TEST(SafetensorsMalformed, TensorsMustTileTheDataSection) {
  const std::string twelve = le_bytes<float>({1, 2, 3});
  expect_rejected(safetensors_bytes("{" + entry("a", "[2]", 0, 8) + "," + entry("b", "[2]", 4, 12) + "}", twelve),
                  "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]");
  expect_rejected(safetensors_bytes("{" + entry("a", "[2]", 0, 8) + "," + entry("b", "[2]", 0, 8) + "}", le_bytes<float>({1, 2})),
                  "data_offsets [0, 8] overlap tensor");
  expect_rejected(safetensors_bytes("{" + entry("a", "[1]", 0, 4) + "," + entry("b", "[1]", 8, 12) + "}", twelve),
                  "bytes [4, 8) of the data section belong to no tensor (a hole before tensor 'b')");
  expect_rejected(safetensors_bytes("{" + entry("a", "[2]", 4, 12) + "}", twelve), "bytes [0, 4) of the data section");
  expect_rejected(safetensors_bytes("{" + entry("a", "[2]", 0, 8) + "}", twelve),
                  "bytes [8, 12) at the end of the data section belong to no tensor");
  expect_rejected(safetensors_bytes("{}", "x"), "bytes [0, 1) at the end of the data section");
}

TEST(SafetensorsMalformed, Metadata) {
  expect_rejected(safetensors_bytes(R"({"__metadata__":[1]})", ""), "__metadata__ is a JSON array, expected an object");
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"format":"eigenformer","config":{"d_model":4}}})", ""),
                  "__metadata__ 'config': value {\"d_model\":4} is not a string");
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"k":1}})", ""), "__metadata__ 'k': value 1 is not a string");
}

TEST(SafetensorsMalformed, RandomCorruptionIsRejectedCleanly) {
  // Flip bytes of a valid file, or cut it short, many times: each result is either read in full or
  // rejected with a format_error; never anything else (and, under ASan, never an out-of-bounds read).
  const fs::path dir = test_dir("safetensors");
  filler fill(11);
  const auto w = fill.make<float>({3, 4});
  const auto b = fill.make<float>({4});
  ef::io::write_safetensors<float>(dir / "good.safetensors", {{"w", w}, {"b", b}}, {{"format", "eigenformer"}},
                                   dtype::f16);
  const std::string good = read_file(dir / "good.safetensors");
  const fs::path path = dir / "corrupt.safetensors";
  int accepted = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    std::string bytes = good;
    if (trial % 5 == 0) {
      bytes.resize(static_cast<std::size_t>(fill.next(0, static_cast<double>(good.size()))));
    } else {
      for (int k = 0, n = 1 + trial % 3; k < n; ++k) {
        const auto at = static_cast<std::size_t>(fill.next(0, static_cast<double>(good.size())));
        bytes[at] = static_cast<char>(fill.next(0, 256));
      }
    }
    write_file(path, bytes);
    try {
      const ef::io::safetensors_file file(path);
      for (const auto& t : file.tensors()) {
        if (ef::io::is_float_dtype(t.type) && t.shape.size() <= 4) (void)file.read<double>(t.name);
      }
      ++accepted;
    } catch (const ef::format_error&) {
    }
  }
  EXPECT_GT(accepted, 0);  // flips inside the tensor data are harmless
}

// ---------------------------------------------------------------------------------------------
// The writer: whole or not at all

TEST(SafetensorsWriter, RejectsBadArgumentsAndLeavesTheTargetAlone) {
  const fs::path dir = test_dir("safetensors");
  const fs::path path = dir / "keep.safetensors";
  write_file(path, "previous contents");
  ef::tensor<float> t({2});
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<float>(path, {{"x", t}, {"x", t}})), ef::invalid_argument,
                                "keep.safetensors: tensor 'x' given twice");
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<float>(path, {{"__metadata__", t}})), ef::invalid_argument,
                                "tensor name '__metadata__' is reserved");
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<float>(path, {{"x", t}}, {}, dtype::i32)),
                                ef::invalid_argument, "keep.safetensors: storage dtype I32, expected F16, BF16, F32 or F64");
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<float>(path, {{"bad\xFF", t}})), ef::invalid_argument,
                                "keep.safetensors: cannot encode the header");
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<float>(path, {{"x", t}}, {{"k", "bad\xFF"}})),
                                ef::invalid_argument, "cannot encode the header");
  EXPECT_EQ(read_file(path), "previous contents");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "a temporary file was left";
}

TEST(SafetensorsWriter, IoFailuresNameThePathAndLeaveNoTemporary) {
  const fs::path dir = test_dir("safetensors");
  ef::tensor<double> t({2});
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<double>(dir / "no" / "such" / "dir.safetensors", {{"x", t}})),
                                ef::error, "dir.safetensors: cannot create a temporary file to write");
  // The target is a directory: everything is written, then the rename fails, and the temporary goes.
  fs::create_directory(dir / "target.safetensors");
  EIGENFORMER_EXPECT_THROW_WITH((ef::io::write_safetensors<double>(dir / "target.safetensors", {{"x", t}})), ef::error,
                                "target.safetensors: cannot move the written file into place");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "a temporary file was left";
}

TEST(SafetensorsWriter, ReplacesAnExistingFile) {
  const fs::path path = test_dir("safetensors") / "model.safetensors";
  write_file(path, "old");
  const auto t = ef::tensor<float>::from_values(ef::tensor_shape{1}, std::vector<float>{5.0f});
  ef::io::write_safetensors<float>(path, {{"x", t}}, {{"format", "eigenformer"}}, dtype::bf16);
  const ef::io::safetensors_file file(path);
  EXPECT_EQ(file.read<float>("x")(0), 5.0f);
  EXPECT_EQ(file.info("x").type, dtype::bf16);
  EXPECT_EQ(file.metadata().at("format"), "eigenformer");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hostile files: inputs built to crash, hang or flood the reader. Each test names the wrong
// implementation it catches.

TEST(SafetensorsHostile, DeeplyNestedJsonIsRejectedNotACrash) {
  // Catches: building the error message with nlohmann's recursive dump() of unbounded input, which
  // overflows the stack (SIGSEGV) at 70,000 levels; and any nesting limit above what a stack survives.
  const std::string deep = nested_arrays(70'000);
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,4]}})",
                                    le_bytes<float>({1})),
                  "header nests arrays and objects more than 64 levels deep");
  expect_rejected(safetensors_bytes(R"({"__metadata__":{"k":)" + deep + "}}", ""), "more than 64 levels deep");
  expect_rejected(safetensors_bytes(deep, ""), "more than 64 levels deep");
  // Whether 70,000 levels overflow the stack depends on the build's frame sizes; a million overflow 8 MiB.
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":)" + nested_arrays(1'000'000) +
                                        R"(,"data_offsets":[0,4]}})",
                                    le_bytes<float>({1})),
                  "more than 64 levels deep");
  // At the limit the header still parses, and the culprit is quoted briefly.
  expect_rejected(safetensors_bytes(R"({"w":{"dtype":"F32","shape":)" + nested_arrays(62) + R"(,"data_offsets":[0,4]}})",
                                    le_bytes<float>({1})),
                  "tensor 'w': shape[0] is [[[[");
}

TEST(SafetensorsHostile, FileShrinkingAfterValidationIsAnErrorNotASignal) {
  // Catches: reading tensor bytes from a memory map, where touching a page past the new end of a
  // file truncated after open raises SIGBUS and kills the process.
  const fs::path path = test_dir("safetensors") / "shrinks.safetensors";
  ef::tensor<float> big({64, 1024});  // 256 KiB: many pages past the cut
  for (index_t i = 0; i < big.size(); ++i) big(i) = static_cast<float>(i);
  for (const dtype storage : {dtype::f32, dtype::f16}) {  // copied as is, and decoded in chunks
    ef::io::write_safetensors<float>(path, {{"w", big}}, {}, storage);
    const ef::io::safetensors_file file(path);  // validated against the full size
    std::filesystem::resize_file(path, 4096);   // another process truncates it
    EIGENFORMER_EXPECT_THROW_WITH((void)file.read<float>("w"), ef::error, path.string() + ": file ends at byte 4096");
    EIGENFORMER_EXPECT_THROW_WITH((void)file.raw("w"), ef::error, path.string() + ": file ends at byte");
    std::filesystem::resize_file(path, 0);
    EIGENFORMER_EXPECT_THROW_WITH((void)file.read<double>("w"), ef::error, path.string() + ": file ends at byte");
  }
  // Truncated before it is opened: a format error naming the file.
  ef::io::write_safetensors<float>(path, {{"w", big}});
  std::filesystem::resize_file(path, 4096);
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::safetensors_file{path}, ef::format_error,
                                path.string() + ": tensor 'w': data_offsets [0, 262144] run past the end");
}

TEST(SafetensorsHostile, FifoIsRefusedNotBlockedOn) {
  // Catches: opening the path (blocking until a writer appears) before checking it is a regular file.
  const fs::path fifo = test_dir("safetensors") / "model.safetensors";
  const std::string what = message_for_fifo(fifo, [&] { ef::io::safetensors_file file(fifo); });
  EXPECT_EQ(what, fifo.string() + ": not a regular file");
}

TEST(SafetensorsHostile, ErrorMessagesAreShortAndNameTheCulprit) {
  // Catches: quoting nlohmann's whole "last read" token, a 5 MB single line for an unterminated string.
  const fs::path dir = test_dir("safetensors");
  const std::string long_text(5'000'000, 'a');
  for (const std::string& header : {"{\"" + long_text, R"({"w":{"dtype":")" + long_text + R"(","shape":[1],"data_offsets":[0,4]}})",
                                    "{\"" + long_text + "\":3}", "{\"" + long_text + "\n\":3}"}) {
    write_file(dir / "long.safetensors", safetensors_bytes(header, ""));
    try {
      ef::io::safetensors_file file(dir / "long.safetensors");
      ADD_FAILURE() << "accepted";
    } catch (const ef::format_error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind((dir / "long.safetensors").string() + ": ", 0), 0u) << what.substr(0, 200);
      EXPECT_LT(what.size(), 500u) << what.substr(0, 200);
      EXPECT_NE(what.find("aaaa..."), std::string::npos) << what.substr(0, 200);
      EXPECT_EQ(what.find('\n'), std::string::npos) << "not one line: " << what.substr(0, 200);
    }
  }

  // Catches: a shape the file accepts (no elements) whose extents overflow the tensor's element count,
  // reported as a bare "tensor shape [...]: element count overflows" naming neither file nor tensor.
  const fs::path zero = dir / "zero.safetensors";
  write_file(zero, safetensors_bytes("{" + entry("z", "[4294967296,4294967295,0]", 0, 0) + "}", ""));
  const ef::io::safetensors_file file(zero);
  EIGENFORMER_EXPECT_THROW_WITH((void)file.read<float>("z"), ef::format_error,
                                zero.string() + ": tensor 'z': tensor shape [4294967296, 4294967295, 0]: element count overflows");

  // Catches: passing "" to open(), which reports ": cannot open: No such file or directory".
  EIGENFORMER_EXPECT_THROW_WITH(ef::io::safetensors_file{""}, ef::error, "empty path");
  try {
    ef::io::safetensors_file f{""};
  } catch (const ef::error& e) {
    EXPECT_EQ(std::string(e.what()).find(": cannot open"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsHostile, NumelOfAnAcceptedShapeIsDefined) {
  // Catches: multiplying the extents in index_t without a check: [2^32, 2^32 - 1, 0] overflows
  // (signed overflow, undefined: UBSan in the EIGENFORMER_SANITIZE build) before the 0 is reached,
  // and [2^32, 2^32] wraps to 0.
  ef::io::tensor_info t;
  t.shape = {index_t{1} << 32, (index_t{1} << 32) - 1, 0};
  EXPECT_EQ(t.numel(), 0);
  t.shape = {index_t{1} << 32, index_t{1} << 32};
  EXPECT_EQ(t.numel(), std::numeric_limits<index_t>::max());
  t.shape = {3, 0, -1};
  EXPECT_EQ(t.numel(), 0);
  t.shape = {};
  EXPECT_EQ(t.numel(), 1);
  const fs::path path = test_dir("safetensors") / "zero.safetensors";
  write_file(path, safetensors_bytes("{" + entry("z", "[4294967296,4294967295,0]", 0, 0) + "}", ""));
  EXPECT_EQ(ef::io::safetensors_file(path).info("z").numel(), 0);
}
