// eigenformer/threads.hpp: the one way to choose how many threads eigenformer uses.
//
// eigenformer runs on a single thread pool: OpenMP's. Eigen's GEMM threads through it, and so do
// the library's own parallel loops (matrix-vector products of a decode step, which Eigen never
// threads). Mixing a second spinning runtime (OpenBLAS threads, a user's pool spinning at the same
// time) made PyTorch 6.5x slower on 2 cores (shared/design/performance.md), so there is no other.
//
//   eigenformer::set_num_threads(1);   // single-threaded
//   eigenformer::set_num_threads(0);   // all cores (the default)
//
// The count is process-wide because OpenMP's and Eigen's are; OMP_NUM_THREADS sets the default.
#pragma once

#include <Eigen/Core>
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

/// Sets the number of threads for every parallel section: n >= 1, or 0 for all cores.
/// Throws invalid_argument on a negative n. Without OpenMP, everything runs on one thread.
inline void set_num_threads(int n) {
  if (n < 0) throw invalid_argument("threads: " + std::to_string(n) + ", expected 0 (all cores) or more");
  if (n == 0) n = hardware_threads();
  Eigen::setNbThreads(n);
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

/// Threads the library's parallel sections use now.
inline int num_threads() {
#if defined(_OPENMP)
  return Eigen::nbThreads();
#else
  return 1;
#endif
}

}  // namespace eigenformer
