// bench_encoder: model::encode of the Transformer-base shape (d_model 512, 8 heads, d_ff 2048,
// 6 encoder layers, post-LN) at batch 1 and 8, source length 32 and 128, fp32. Reports ms per
// call. The peer (PyTorch 1.13's nn.TransformerEncoder, same shape and thread count, same
// machine) is tools/bench_torch.py; tools/compare_speed.py runs both and prints the ratios.
#include <benchmark/benchmark.h>

#include <eigenformer/eigenformer.hpp>

#include <vector>

#include "random_model.hpp"

namespace ef = eigenformer;
using ef::index_t;

namespace {

const ef::model<float>& base_model() {
  static const ef::model<float> m = [] {
    auto c = ef::testing::base_config();
    // encode() never runs the decoder: keep it (and its weights' memory) small.
    c.n_decoder_layers = 1;
    c.tgt_vocab_size = 8;
    ef::testing::random_weights<float> w(c, 1);
    return ef::model<float>(c, w.map());
  }();
  return m;
}

void BM_Encode(benchmark::State& state) {
  const index_t batch = state.range(0), length = state.range(1);
  std::vector<std::vector<ef::token_id>> src(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b)
    for (index_t i = 0; i < length; ++i) src[std::size_t(b)].push_back(ef::token_id(3 + (i * 97 + b) % 31000));
  const auto tokens = ef::token_batch::from_sequences(src);
  const auto& m = base_model();
  for (auto _ : state) {
    auto out = m.encode(tokens);
    benchmark::DoNotOptimize(out.memory.data());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations() * batch * length), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_Encode)->Args({1, 32})->Args({1, 128})->Args({8, 32})->Args({8, 128})->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
