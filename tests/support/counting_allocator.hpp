// Replaces the global operator new / delete of a test binary with counting versions, so a test can
// prove that a code path allocates nothing:
//
//   #include "support/counting_allocator.hpp"      // in exactly one translation unit of the binary
//   const long before = eigenformer::testing::allocations();
//   ... steady-state work ...
//   EXPECT_EQ(eigenformer::testing::allocations() - before, 0);
//
// Every form (plain, array, nothrow, aligned) is replaced, so no allocation reaches another
// allocator's pair (AddressSanitizer checks that new and delete match).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace eigenformer::testing {
inline std::atomic<long> allocation_count{0};
/// Heap allocations through operator new so far in this process.
inline long allocations() { return allocation_count.load(std::memory_order_relaxed); }

inline void* counted_allocate(std::size_t n, std::size_t align) noexcept {
  allocation_count.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  if (align <= alignof(std::max_align_t)) return std::malloc(n);
  return std::aligned_alloc(align, (n + align - 1) / align * align);
}
}  // namespace eigenformer::testing

// Not inlined: g++ 12 would otherwise see malloc's pointer reach operator delete, or new's reach free(),
// and warn (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
  if (void* p = eigenformer::testing::counted_allocate(n, 0)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) {
  if (void* p = eigenformer::testing::counted_allocate(n, 0)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = eigenformer::testing::counted_allocate(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = eigenformer::testing::counted_allocate(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return eigenformer::testing::counted_allocate(n, 0); }
[[gnu::noinline]] void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return eigenformer::testing::counted_allocate(n, 0); }
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
