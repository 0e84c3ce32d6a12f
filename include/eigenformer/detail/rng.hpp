// eigenformer/detail/rng.hpp: the library's one random number generator, fully specified so that
// the same seed gives the same numbers on every platform, compiler and standard library.
//
// Generator: PCG32 (O'Neill 2014, "PCG: A Family of Simple Fast Space-Efficient Statistically Good
// Algorithms for Random Number Generation"), the XSH-RR 64/32 member, exactly as pcg32_random_r of
// the reference pcg-c-basic: 64-bit LCG state, odd increment selecting one of 2^63 streams, 32-bit
// output. pcg32(42, 54) reproduces the reference demo (0xa15c02b7 0x7b47f409 ...; a test pins it).
//
// The conversions are ours, never <random>'s distributions (whose algorithms the standard leaves
// to each library):
//   uniform01()        float  in [0, 1): top 24 bits of one output times 2^-24
//   uniform01_double() double in [0, 1): top 53 bits of two outputs (first output high) times 2^-53
//   normal()           standard normal by Box-Muller from two uniform01_double() draws (4 outputs)
// uniform01 and uniform01_double are bit-exact everywhere. normal() calls std::log, std::sqrt and
// std::cos, so its last bit may differ between C libraries (glibc, musl, MSVC); it is meant for
// noise (noisy top-k gating), where that does not matter.
//
// Streams: one generator per sequence, so that a sequence's numbers do not depend on which other
// sequences share its batch:
//   pcg32::stream(seed, i) == pcg32(splitmix64_at(seed, 2 i + 1), splitmix64_at(seed, 2 i + 2))
// where splitmix64_at(seed, n) is the n-th output (n >= 1) of Steele, Lea and Flood's SplitMix64
// started at `seed`: mix64(seed + n * 0x9e3779b97f4a7c15). SplitMix64 scatters neighbouring seeds
// and indices over the whole 64-bit space, so both the starting state and the stream (increment)
// differ between any two (seed, i) pairs. Sampling uses stream(seed, sequence index); another
// consumer of the same user seed (noisy MoE gating) should not reuse those streams: derive its
// own seed first, e.g. stream(mix64(seed ^ tag), index) with a constant tag of its own.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace eigenformer::detail {

/// SplitMix64's output function (Stafford's "Mix13" variant of the MurmurHash3 finalizer).
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline constexpr std::uint64_t splitmix64_gamma = 0x9e3779b97f4a7c15ull;

/// The n-th output (n >= 1) of SplitMix64 started at `seed`, without running the first n - 1.
constexpr std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t n) noexcept {
  return mix64(seed + n * splitmix64_gamma);
}

/// PCG32 (XSH-RR 64/32). Satisfies std::uniform_random_bit_generator, but use its own conversions
/// below rather than <random>'s distributions, which differ between standard libraries.
class pcg32 {
 public:
  using result_type = std::uint32_t;

  /// pcg32_srandom_r(initstate, initseq) of the reference implementation.
  constexpr pcg32(std::uint64_t initstate, std::uint64_t initseq) noexcept : state_(0), inc_((initseq << 1u) | 1u) {
    next_u32();
    state_ += initstate;
    next_u32();
  }

  /// Stream (seed, 0).
  constexpr pcg32() noexcept : pcg32(stream(0, 0)) {}

  /// The generator of sequence `index` under `seed` (see the file comment for the derivation).
  static constexpr pcg32 stream(std::uint64_t seed, std::uint64_t index) noexcept {
    return pcg32(splitmix64_at(seed, 2 * index + 1), splitmix64_at(seed, 2 * index + 2));
  }

  /// The next 32 random bits (pcg32_random_r).
  constexpr std::uint32_t next_u32() noexcept {
    const std::uint64_t old = state_;
    state_ = old * 6364136223846793005ull + inc_;
    const auto xorshifted = static_cast<std::uint32_t>(((old >> 18u) ^ old) >> 27u);
    const auto rot = static_cast<std::uint32_t>(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((0u - rot) & 31u));
  }

  constexpr result_type operator()() noexcept { return next_u32(); }
  static constexpr result_type min() noexcept { return 0; }
  static constexpr result_type max() noexcept { return std::numeric_limits<result_type>::max(); }

  /// Uniform float in [0, 1) on the 2^24 grid: (next_u32() >> 8) * 2^-24. One output.
  constexpr float uniform01() noexcept { return static_cast<float>(next_u32() >> 8) * 0x1.0p-24f; }

  /// Uniform double in [0, 1) on the 2^53 grid: ((hi << 32 | lo) >> 11) * 2^-53, hi drawn first.
  constexpr double uniform01_double() noexcept {
    const std::uint64_t hi = next_u32();
    const std::uint64_t lo = next_u32();
    return static_cast<double>(((hi << 32) | lo) >> 11) * 0x1.0p-53;
  }

  /// Standard normal N(0, 1) by Box-Muller: sqrt(-2 ln(1 - u1)) cos(2 pi u2), u1 and u2 from
  /// uniform01_double() in that order (so 1 - u1 is in (0, 1] and the log is finite). Consumes
  /// exactly four 32-bit outputs; the paired sine value is not kept (no hidden state).
  double normal() noexcept {
    const double u1 = 1.0 - uniform01_double();
    const double u2 = uniform01_double();
    constexpr double two_pi = 6.283185307179586476925286766559;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(two_pi * u2);
  }

  friend constexpr bool operator==(const pcg32&, const pcg32&) noexcept = default;

 private:
  std::uint64_t state_;
  std::uint64_t inc_;
};

/// The library's generator: code that needs random numbers names detail::rng, so that the choice
/// lives in this one place.
using rng = pcg32;

}  // namespace eigenformer::detail
