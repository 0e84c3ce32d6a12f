// eigenformer/threads.hpp: the one way to choose how many threads eigenformer uses.
//
// eigenformer runs on a single thread pool: OpenMP's. Mixing a second spinning runtime (OpenBLAS
// threads, a user's pool spinning at the same time) made PyTorch 6.5x slower on 2 cores
// (docs/performance.md), so there is no other. eigenformer decides itself which loops
// fork (ops.hpp's linear(): column blocks of a GEMM, row blocks of a decode step's matrix-vector
// products; attention: heads), and forks only for ~2 M multiply-adds per thread or more: Eigen's
// own GEMM threading forks from 100 k and busy-waits between its threads, which made a small
// model 100x slower while another process held the second core. The CMake target therefore
// defines EIGEN_DONT_PARALLELIZE for its users (unless EIGENFORMER_EIGEN_THREADS). That is for
// speed only: nothing here depends on it for correctness, and inside the loops above Eigen does
// not fork again either way (it stays on one thread inside a parallel region).
//
//   eigenformer::set_num_threads(1);   // single-threaded
//   eigenformer::set_num_threads(0);   // all cores (the default)
//
// The count is process-wide: set_num_threads() stores it in one atomic that num_threads() reads,
// and every parallel section of the library passes num_threads() to its num_threads(...) clause,
// so a count set on one thread holds for calls made on every other thread (OpenMP's own
// omp_set_num_threads() is per calling thread). Until it is set, the default is OpenMP's
// (OMP_NUM_THREADS, else all cores). Counts are capped at the cores the process may use
// (hardware_threads()): more threads than cores only adds switching.
#pragma once

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>

#include "error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace eigenformer {

/// Cores the process may use (at least 1).
inline int hardware_threads() {
#if defined(_OPENMP)
  return omp_get_num_procs();
#else
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
#endif
}

namespace detail {
/// The process-wide count of set_num_threads(); 0 until it is called (OpenMP's default then).
inline std::atomic<int>& thread_count() {
  static std::atomic<int> count{0};
  return count;
}
}  // namespace detail

/// Sets the number of threads for every parallel section, for the whole process (every calling
/// thread): n >= 1, or 0 for all cores; n above hardware_threads() is capped at it. Throws
/// invalid_argument on a negative n. Without OpenMP, everything runs on one thread.
inline void set_num_threads(int n) {
  if (n < 0) throw invalid_argument("threads: " + std::to_string(n) + ", expected 0 (all cores) or more");
  n = n == 0 ? hardware_threads() : std::min(n, hardware_threads());
  detail::thread_count().store(n, std::memory_order_relaxed);
#if defined(_OPENMP)
  omp_set_num_threads(n);  // the calling thread's own count too (Eigen's threading, if enabled, reads it)
#endif
}

/// Work (multiply-adds) a thread must get before a section forks. A fork/join costs a few
/// microseconds on an idle machine but up to milliseconds when another process holds a core (a
/// thread that must join is not scheduled), so sections fork only for ~100 microseconds of work
/// per thread: the matrices of a small model never fork; a Transformer-base decode step forks
/// for its feed-forward and output projections.
inline constexpr double parallel_work_threshold = 2e6;

/// Weight bytes a product of a few rows (a decode step's matrix-vector products) must stream before
/// it forks, whatever its multiply-adds: such a product is bound by memory, and a second core reads
/// more of it per microsecond (one thread read 19 GB/s on one development host; another host of the
/// same kind read 38.8 GB/s on one thread and 46.5 on two). 512 KiB is ~25 microseconds of reading on one thread,
/// several times a fork's cost on an idle machine. Measured in docs/performance.md ("Threads").
inline constexpr double parallel_stream_bytes = 512.0 * 1024.0;

/// Threads for a product of `macs` multiply-adds that streams `weight_bytes` of weights.
inline int product_threads(double macs, double weight_bytes);

/// Threads the library's parallel sections use now, on any calling thread: set_num_threads()'s
/// count, else OpenMP's default; never more than hardware_threads().
inline int num_threads() {
#if defined(_OPENMP)
  const int n = detail::thread_count().load(std::memory_order_relaxed);
  return n > 0 ? n : std::max(1, std::min(omp_get_max_threads(), hardware_threads()));
#else
  return 1;
#endif
}

inline int product_threads(double macs, double weight_bytes) {
  return macs >= parallel_work_threshold || weight_bytes >= parallel_stream_bytes ? std::max(1, num_threads()) : 1;
}

}  // namespace eigenformer
