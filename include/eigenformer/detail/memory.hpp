// eigenformer/detail/memory.hpp: aligned, optionally huge-page backed buffers for tensor storage.
//
// Why: Eigen's packet loads and our kernels want 64-byte alignment (one cache line, one AVX-512
// register). Large weight buffers are also aligned to 2 MiB and advised as huge pages on Linux:
// on the development machine that raised streaming read bandwidth 1.22-1.32x
// (docs/performance.md), and a batch-1 decode step is bound by that bandwidth.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <string>

#include "../error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace eigenformer::detail {

inline constexpr std::size_t cache_line = 64;
inline constexpr std::size_t huge_page = std::size_t{2} << 20;  // 2 MiB, x86-64 transparent huge page
/// Buffers at least this large are huge-page aligned and advised (smaller ones would waste memory).
inline constexpr std::size_t huge_page_threshold = std::size_t{4} << 20;

/// Multiplies two non-negative extents; throws invalid_argument naming `what` on overflow.
inline std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
  std::size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    throw invalid_argument(std::string(what) + ": size overflows, " + std::to_string(a) + " x " +
                           std::to_string(b));
  }
  return r;
}

inline std::size_t buffer_alignment(std::size_t bytes) {
  return bytes >= huge_page_threshold ? huge_page : cache_line;
}

/// Allocates `bytes` (> 0) aligned for SIMD, advising huge pages for large buffers.
inline void* aligned_allocate(std::size_t bytes) {
  const std::size_t align = buffer_alignment(bytes);
  const std::size_t rounded = (bytes + align - 1) / align * align;
  if (rounded < bytes) throw invalid_argument("tensor storage: size overflows");
  void* p = ::operator new(rounded, std::align_val_t{align});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == huge_page) ::madvise(p, rounded, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
  return p;
}

inline void aligned_free(void* p, std::size_t bytes) noexcept {
  if (p) ::operator delete(p, std::align_val_t{buffer_alignment(bytes)});
}

}  // namespace eigenformer::detail
