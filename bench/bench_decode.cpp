// bench_decode: one incremental decode step (model::decode_step over a KV cache) of the
// Transformer-base shape: d_model 512, 8 heads, d_ff 2048, 6 decoder layers (6 encoder layers for
// the cross-attention memory), tgt vocab 32000, source length 32, cached cross-attention K/V,
// 32 tokens already in the self-attention cache. Reports ms per step and ms per token at batch 1
// and 8, fp32 and fp64. The peer (PyTorch, same shape, same machine) is tools/bench_torch.py.
#include <benchmark/benchmark.h>

#include <eigenformer/eigenformer.hpp>

#include <vector>

#include "random_model.hpp"

namespace ef = eigenformer;
using ef::index_t;

namespace {

template <class S>
const ef::model<S>& base_model() {
  static const ef::model<S> m = [] {
    const auto c = ef::testing::base_config();
    ef::testing::random_weights<S> w(c, 1);
    return ef::model<S>(c, w.map());
  }();
  return m;
}

template <class S>
void BM_DecodeStep(benchmark::State& state) {
  const index_t batch = state.range(0);
  const auto& m = base_model<S>();
  std::vector<std::vector<ef::token_id>> src(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b)
    for (int i = 0; i < 32; ++i) src[std::size_t(b)].push_back(ef::token_id(3 + (i * 97 + b) % 31000));
  const auto memory = m.encode(ef::token_batch::from_sequences(src));
  ef::kv_cache<S> cache;
  const index_t prefix = 32;
  m.start_decoding(memory, 1, prefix + 4096, cache);
  std::vector<index_t> slots;
  for (index_t b = 0; b < batch; ++b) slots.push_back(b);
  std::vector<ef::token_id> tokens(slots.size(), 1);
  ef::tensor<S> out({batch, 32000});
  for (index_t t = 0; t < prefix; ++t) m.decode_step(cache, slots, tokens, out.matrix());
  index_t steps = prefix;
  for (auto _ : state) {
    if (steps + 1 >= cache.capacity()) {  // keep the cache length near `prefix` for stable numbers
      state.PauseTiming();
      m.start_decoding(memory, 1, prefix + 4096, cache);
      for (index_t t = 0; t < prefix; ++t) m.decode_step(cache, slots, tokens, out.matrix());
      steps = prefix;
      state.ResumeTiming();
    }
    m.decode_step(cache, slots, tokens, out.matrix());
    ++steps;
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["ms_per_step"] = benchmark::Counter(double(state.iterations()) / 1e3, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["ms_per_token"] =
      benchmark::Counter(double(state.iterations() * batch) / 1e3, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations() * batch), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_DecodeStep<float>)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_DecodeStep<double>)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
