// eigenformer/detail/byte_count.hpp: byte counts that cannot overflow, and how messages print them.
//
// Why: memory limits are checked before anything is allocated (model::cache_bytes, generate()),
// on sizes computed from numbers a caller or a file chose (beam_size 2^62 x ...). A product that
// wrapped around would pass the check; a saturated one (2^64 - 1) never does.
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <string>

#include "../types.hpp"

namespace eigenformer::detail {

/// Byte counts that cannot overflow: a product or sum past 2^64 - 1 stays at 2^64 - 1.
inline std::uint64_t sat_mul(std::uint64_t a, std::uint64_t b) {
  return (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) ? std::numeric_limits<std::uint64_t>::max() : a * b;
}
inline std::uint64_t sat_mul(std::initializer_list<std::uint64_t> factors) {
  std::uint64_t p = 1;
  for (auto f : factors) p = sat_mul(p, f);
  return p;
}
inline std::uint64_t sat_add(std::uint64_t a, std::uint64_t b) {
  return b > std::numeric_limits<std::uint64_t>::max() - a ? std::numeric_limits<std::uint64_t>::max() : a + b;
}
/// A count of something (index_t >= 0) as a uint64_t factor.
inline std::uint64_t u64(index_t n) { return n < 0 ? 0 : static_cast<std::uint64_t>(n); }
/// "131.1 GB" (powers of 1000), or "more than 18.4 EB" for a saturated count.
inline std::string bytes_string(std::uint64_t bytes) {
  const char* units[] = {"bytes", "kB", "MB", "GB", "TB", "PB", "EB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1000.0 && u < 6) {
    v /= 1000.0;
    ++u;
  }
  char buf[64];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return (bytes == std::numeric_limits<std::uint64_t>::max() ? "more than " : "") + std::string(buf);
}

}  // namespace eigenformer::detail
