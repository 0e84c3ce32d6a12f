// bench_decode: one incremental decode step (model::decode_step over a KV cache) of the
// Transformer-base shape: d_model 512, 8 heads, d_ff 2048, 6 decoder layers (6 encoder layers for
// the cross-attention memory), tgt vocab 32000, source length 32, cached cross-attention K/V,
// 32 tokens already in the self-attention cache. Reports ms per step and ms per token at batch 1
// and 8, fp32 and fp64, and (BM_DecodeStepWeights, float) with the weight matrices held as float32,
// bfloat16, float16 and int8 (second argument 0-3: load_options::weights), with the bytes of weight
// matrices a step reads (decoder layers + output projection) as `weight_MB` and the rate they are
// read at as `GB_per_s`: a batch-1 step is bound by that read. The peer (PyTorch, same shape, same
// machine) is tools/bench_torch.py.
#include <benchmark/benchmark.h>

#include <eigenformer/eigenformer.hpp>

#include <map>
#include <utility>
#include <vector>

#include "random_model.hpp"

namespace ef = eigenformer;
using ef::index_t;

namespace {

constexpr ef::weight_type types[] = {ef::weight_type::float32, ef::weight_type::bfloat16, ef::weight_type::float16,
                                     ef::weight_type::int8};

template <class S>
const ef::model<S>& base_model(ef::weight_type t = ef::weight_type::float32) {
  static std::map<ef::weight_type, ef::model<S>> models;
  auto it = models.find(t);
  if (it == models.end()) {
    const auto c = ef::testing::base_config();
    ef::testing::random_weights<S> w(c, 1);
    ef::model<S> m(c, w.map());
    m.convert_weights(t);
    it = models.emplace(t, std::move(m)).first;
  }
  return it->second;
}

/// Bytes of weight matrices one decode step reads: each decoder layer's self-attention, the cross
/// attention's query and output projections (its keys and values are cached), the feed-forward, and the
/// output projection; biases and norms are noise beside them.
double step_weight_bytes(ef::weight_type t) {
  const auto c = ef::testing::base_config();
  const double d = double(c.d_model), ff = double(c.d_ff);
  const double per_layer = 4 * d * d + 2 * d * d + 2 * d * ff;
  return (double(c.n_decoder_layers) * per_layer + double(c.tgt_vocab_size) * d) * double(ef::weight_type_size(t));
}

template <class S>
void BM_DecodeStep(benchmark::State& state) {
  const index_t batch = state.range(0);
  const auto type = types[state.range(1)];
  const auto& m = base_model<S>(type);
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
  state.counters["weight_MB"] = step_weight_bytes(type) / 1e6;
  state.counters["GB_per_s"] = benchmark::Counter(double(state.iterations()) * step_weight_bytes(type) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(ef::weight_type_name(type));
}

}  // namespace

BENCHMARK(BM_DecodeStep<float>)->Args({1, 0})->Args({8, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_DecodeStep<double>)->Args({1, 0})->Args({8, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_DecodeStep<float>)
    ->Name("BM_DecodeStepWeights")
    ->ArgsProduct({{1, 8}, {1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
