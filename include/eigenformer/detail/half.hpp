// eigenformer/detail/half.hpp: exact conversions between the two 16-bit float formats a model file
// may store (IEEE 754 binary16 "F16" and bfloat16 "BF16") and float / double.
//
// Why our own: C++20 has no portable 16-bit float type (std::float16_t is C++23 and optional), and a
// loader must get every bit pattern right: subnormals, signed zeros, infinities and NaNs.
//
// Widening (16 -> 32 bits) is exact. Narrowing rounds to nearest, ties to even, as IEEE 754 and
// PyTorch's `.to(torch.float16)` do; values past the largest finite number become infinity and a NaN
// stays a NaN (quiet, sign and leading payload bits kept). Narrowing from double rounds once, straight
// from the double: going through float first would round twice and can miss a tie by one ulp.
// Values are passed as raw bit patterns (std::uint16_t) because that is what a file holds.
#pragma once

#include <bit>
#include <cstdint>

namespace eigenformer::detail {

/// Float with the bits of IEEE binary16 `h`; exact.
inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  const std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) {  // infinity or NaN: widen the payload
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent != 0) {  // normal: rebias 15 -> 127
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  }
  // Zero or subnormal: mantissa * 2^-24 is exact in float (an integer below 2^10 times a power of two
  // well inside float's normal range).
  const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(magnitude));
}

/// Float with the bits of bfloat16 `b` (the top half of a float); exact.
inline float bfloat16_to_float(std::uint16_t b) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// Rounds `x` to the nearest value of a binary format with `ExponentBits` exponent bits and
/// `MantissaBits` stored mantissa bits (IEEE layout: sign, biased exponent, mantissa; all-ones
/// exponent for infinity and NaN), ties to even. Returns the bit pattern.
template <int ExponentBits, int MantissaBits>
std::uint16_t round_double_to_small_float(double x) noexcept {
  static_assert(1 + ExponentBits + MantissaBits == 16 && MantissaBits < 52);
  constexpr int bias = (1 << (ExponentBits - 1)) - 1;
  constexpr std::uint32_t max_exponent = (1u << ExponentBits) - 1;  // infinity / NaN
  constexpr std::uint64_t double_mantissa_mask = (std::uint64_t{1} << 52) - 1;

  const std::uint64_t bits = std::bit_cast<std::uint64_t>(x);
  const auto sign = static_cast<std::uint16_t>((bits >> 63) << (ExponentBits + MantissaBits));
  const std::uint64_t magnitude = bits & ~(std::uint64_t{1} << 63);
  const auto double_exponent = static_cast<int>(magnitude >> 52);

  if (double_exponent == 0x7FF) {
    const std::uint64_t payload = magnitude & double_mantissa_mask;
    if (payload == 0) return static_cast<std::uint16_t>(sign | (max_exponent << MantissaBits));
    // NaN: keep the leading payload bits and set the quiet bit, so the result is never infinity.
    const auto kept = static_cast<std::uint32_t>(payload >> (52 - MantissaBits));
    return static_cast<std::uint16_t>(sign | (max_exponent << MantissaBits) | (1u << (MantissaBits - 1)) | kept);
  }
  // Double subnormals (< 2^-1022) are far below half the smallest subnormal of either target format.
  if (double_exponent == 0) return sign;

  const int exponent = double_exponent - 1023;  // x = m * 2^(exponent - 52), m with its implicit bit
  const std::uint64_t m = (magnitude & double_mantissa_mask) | (std::uint64_t{1} << 52);
  constexpr int min_normal_exponent = 1 - bias;
  if (exponent + bias >= static_cast<int>(max_exponent)) {
    return static_cast<std::uint16_t>(sign | (max_exponent << MantissaBits));  // overflow: infinity
  }
  // Bits of m to drop: the excess precision, plus the denormalisation shift below the normal range.
  int shift = 52 - MantissaBits;
  if (exponent < min_normal_exponent) shift += min_normal_exponent - exponent;
  if (shift > 53) return sign;  // below half the smallest subnormal: rounds to zero

  std::uint64_t q = m >> shift;
  const std::uint64_t rest = m & ((std::uint64_t{1} << shift) - 1);
  const std::uint64_t halfway = std::uint64_t{1} << (shift - 1);
  if (rest > halfway || (rest == halfway && (q & 1))) ++q;

  if (exponent < min_normal_exponent) {
    // Subnormal: q is the stored mantissa; a carry to 2^MantissaBits is exactly the smallest normal.
    return static_cast<std::uint16_t>(sign | q);
  }
  // Normal: q holds the implicit bit, so adding (biased exponent - 1) << MantissaBits yields the
  // encoding, and a rounding carry moves into the exponent (up to infinity) by itself.
  const auto biased = static_cast<std::uint64_t>(exponent + bias - 1);
  return static_cast<std::uint16_t>(sign | ((biased << MantissaBits) + q));
}

/// IEEE binary16 bits of `x`, rounded to nearest even.
inline std::uint16_t double_to_half(double x) noexcept { return round_double_to_small_float<5, 10>(x); }
/// IEEE binary16 bits of `x`, rounded to nearest even (float -> double is exact: one rounding).
inline std::uint16_t float_to_half(float x) noexcept { return double_to_half(static_cast<double>(x)); }

/// bfloat16 bits of `x`, rounded to nearest even.
inline std::uint16_t double_to_bfloat16(double x) noexcept { return round_double_to_small_float<8, 7>(x); }
/// bfloat16 bits of `x`, rounded to nearest even.
inline std::uint16_t float_to_bfloat16(float x) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: truncate the payload, force the quiet bit
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  }
  // Add just under half an ulp of the result, plus one when the kept part is odd: ties go to even.
  // A carry out of the mantissa bumps the exponent, up to infinity, which is the right rounding.
  const std::uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

}  // namespace eigenformer::detail
