// bench_linear: y = x W^T + b for the weight shapes of a Transformer-base decode step, at 1 and 8
// input rows: eigenformer's linear() (which streams W through detail::small_batch_linear for up
// to 8 rows) against Eigen's own GEMV / GEMM on the same PyTorch-layout [out, in] weight. Reports
// the weight bytes streamed per second (GB/s): a decode step is bound by exactly that.
// Shapes: the 32000 x 512 output projection (65.5 MB) and a 2048 x 512 feed-forward matrix (4 MB),
// each in copies taking 64 MB used in turn, so that the weights come from memory as in a decode step.
// eigenformer_packed: the same through packed_matrix at each reduced weight type (arg 4: 1 bfloat16,
// 2 float16, 3 int8), plus 1024 rows (an encoder's batch of 8 x 128 tokens) through both feed-forward
// shapes, where GMAC_per_s (multiply-adds per second) is the measure; eigen_product gives float32's.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <utility>
#include <vector>

#include <eigenformer/ops.hpp>
#include <eigenformer/packed_weights.hpp>

#include "random.hpp"

namespace ef = eigenformer;
using ef::index_t;

namespace {

/// Copies of a weight of `bytes` that take 64 MB together (twice this machine's L3 cache).
std::size_t copies_for(index_t bytes) { return static_cast<std::size_t>(std::max<index_t>(1, (index_t{64} << 20) / bytes)); }

template <bool Ours>
void BM_Linear(benchmark::State& state) {
  const index_t out = state.range(0), in = state.range(1), n = state.range(2);
  ef::testing::filler f(1);
  auto w0 = f.make<float>({out, in}), x = f.make<float>({n, in}), b = f.make<float>({out});
  std::vector<ef::tensor<float>> copies(copies_for(out * in * index_t(sizeof(float))), w0);
  ef::tensor<float> y({n, out});
  std::size_t turn = 0;
  for (auto _ : state) {
    const auto& w = copies[turn++ % copies.size()];
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
  state.counters["GMAC_per_s"] =
      benchmark::Counter(double(state.iterations()) * double(out * in * n) / 1e9, benchmark::Counter::kIsRate);
}

void BM_Packed(benchmark::State& state) {
  const index_t out = state.range(0), in = state.range(1), n = state.range(2);
  const auto type = static_cast<ef::weight_type>(state.range(3));
  ef::testing::filler f(1);
  auto w = f.make<float>({out, in}), x = f.make<float>({n, in}), b = f.make<float>({out});
  // Copies enough for 64 MB, used in turn: a decode step's weights come from memory, not the L3 cache.
  std::vector<ef::packed_matrix<float>> copies(copies_for(out * in * index_t(ef::weight_type_size(type))),
                                               ef::packed_matrix<float>(std::as_const(w).matrix(), type));
  ef::tensor<float> y({n, out});
  std::size_t turn = 0;
  for (auto _ : state) {
    const auto& p = copies[turn++ % copies.size()];
    p.apply(0, out, x.data(), in, n, b.values(), y.data(), out);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel(ef::weight_type_name(type));
  state.counters["GB_per_s"] = benchmark::Counter(
      double(state.iterations()) * double(out * in) * double(ef::weight_type_size(type)) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GMAC_per_s"] =
      benchmark::Counter(double(state.iterations()) * double(out * in * n) / 1e9, benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_Linear<true>)->Name("eigenformer_linear")->Args({32000, 512, 1})->Args({32000, 512, 8})->Args({2048, 512, 1})->Args({2048, 512, 8})->Args({512, 2048, 1})->Args({512, 2048, 8})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Linear<false>)->Name("eigen_product")->Args({32000, 512, 1})->Args({32000, 512, 8})->Args({2048, 512, 1})->Args({2048, 512, 8})->Args({2048, 512, 1024})->Args({512, 2048, 1024})->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Packed)
    ->Name("eigenformer_packed")
    ->ArgsProduct({{32000}, {512}, {1, 8}, {1, 2, 3}})
    ->ArgsProduct({{2048}, {512}, {1, 8, 1024}, {1, 2, 3}})
    ->ArgsProduct({{512}, {2048}, {1, 8, 1024}, {1, 2, 3}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
