// bench_linear: y = x W^T + b for the weight shapes of a Transformer-base decode step, at 1 and 8
// input rows: eigenformer's linear() (which streams W through detail::small_batch_linear for up
// to 8 rows) against Eigen's own GEMV / GEMM on the same PyTorch-layout [out, in] weight. Reports
// the weight bytes streamed per second (GB/s): a decode step is bound by exactly that.
// Shapes: the 32000 x 512 output projection (65.5 MB) and a 2048 x 512 feed-forward matrix (4 MB).
#include <benchmark/benchmark.h>

#include <eigenformer/ops.hpp>

#include "random.hpp"

namespace ef = eigenformer;
using ef::index_t;

namespace {

template <bool Ours>
void BM_Linear(benchmark::State& state) {
  const index_t out = state.range(0), in = state.range(1), n = state.range(2);
  ef::testing::filler f(1);
  auto w = f.make<float>({out, in}), x = f.make<float>({n, in}), b = f.make<float>({out});
  ef::tensor<float> y({n, out});
  for (auto _ : state) {
    if constexpr (Ours) {
      ef::linear(x.matrix(), w.matrix(), b.values(), y.matrix());
    } else {
      y.matrix().noalias() = x.matrix() * w.matrix().transpose();
      y.matrix().rowwise() += b.vector().transpose();
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GB_per_s"] =
      benchmark::Counter(double(state.iterations()) * double(out * in) * sizeof(float) / 1e9, benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_Linear<true>)->Name("eigenformer_linear")->Args({32000, 512, 1})->Args({32000, 512, 8})->Args({2048, 512, 1})->Args({2048, 512, 8})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Linear<false>)->Name("eigen_product")->Args({32000, 512, 1})->Args({32000, 512, 8})->Args({2048, 512, 1})->Args({2048, 512, 8})->UseRealTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
