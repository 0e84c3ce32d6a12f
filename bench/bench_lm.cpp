// bench_lm: prompt and generated tokens per second of decoder-only (Llama-shaped) models with random
// weights, float32, batch 1: RMSNorm, rotary positions, grouped-query attention, SwiGLU, vocab 32000,
// untied output projection, no biases. Shapes (arg 0):
//   0  125M-class: d_model 768, 12 layers, 12 heads, 12 KV heads, d_ff 2048
//   1  125M-class with grouped-query attention: the same with 4 KV heads
//   2  1B-class: d_model 2048, 16 layers, 32 heads, 8 KV heads, d_ff 5632 (0.85 B parameters, 3.4 GB;
//      counter params_M)
// Threads (arg 1): 1 or 2 (set_num_threads).
//   BM_Prefill: one decode_step of a 128-token prompt into an empty KV cache (what generate() does
//               first): counter prompt_tokens_per_s = 128 / time. It computes the log-probabilities of
//               every prompt position, as decode_step does (generate() reads only the last row).
//   BM_Decode:  64 greedy steps after that prompt (one token in, log-probabilities out, argmax):
//               counters ms_per_token and gen_tokens_per_s; the prefill is outside the timing.
// The peer (PyTorch, transformers' LlamaForCausalLM, same shapes) is tools/bench_lm_torch.py;
// docs/performance.md has the commands and the numbers.
#include <benchmark/benchmark.h>

#include <eigenformer/eigenformer.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "random.hpp"

namespace ef = eigenformer;
using ef::index_t;

namespace {

constexpr index_t prompt_tokens = 128, new_tokens = 64;

ef::model_config lm_config(int shape) {
  ef::model_config c;
  c.architecture = "decoder-only";
  const bool big = shape == 2;
  c.d_model = big ? 2048 : 768;
  c.n_heads = big ? 32 : 12;
  c.n_kv_heads = big ? 8 : (shape == 1 ? 4 : 0);  // 0: as many as n_heads
  c.d_ff = big ? 5632 : 2048;
  c.n_encoder_layers = 0;
  c.n_decoder_layers = big ? 16 : 12;
  c.src_vocab_size = c.tgt_vocab_size = 32000;
  c.max_positions = 2048;
  c.activation_kind = ef::activation::silu;
  c.ff = ef::feed_forward_kind::gated;
  c.norm = ef::normalization::rms_norm;
  c.layer_norm_eps = 1e-5;
  c.norm_first = true;
  c.encoder_final_norm = false;
  c.decoder_final_norm = true;
  c.embedding_norm = false;
  c.scale_embedding = false;
  c.share_embeddings = false;
  c.positional = ef::positional_encoding::rotary;
  c.attn_bias = ef::attention_bias::none;
  c.tie_output = false;
  c.bos_id = 1;
  c.eos_id = 2;
  c.pad_id = 2;
  return c;
}

/// Random weights named as docs/model-format.md names a decoder-only model's (uniform, scaled so
/// activations stay of order 1).
ef::model<float> random_lm(int shape) {
  const auto c = lm_config(shape);
  ef::testing::filler f(7);
  ef::weight_map<float> w("random");
  const index_t d = c.d_model, kv = c.kv_heads() * c.d_head(), ff = c.d_ff;
  const double s = 1.7 / std::sqrt(double(d));
  const auto add = [&](const std::string& name, std::initializer_list<index_t> dims, double scale, double center = 0.0) {
    ef::tensor<float> t(dims);
    for (auto& v : t.values()) v = static_cast<float>(center + scale * f.next());
    w.insert(name, std::move(t));
  };
  add("tgt_embed.weight", {c.tgt_vocab_size, d}, 1.0);
  for (index_t i = 0; i < c.n_decoder_layers; ++i) {
    const std::string p = "transformer.decoder.layers." + std::to_string(i);
    add(p + ".self_attn.in_proj_weight", {d + 2 * kv, d}, s);
    add(p + ".self_attn.out_proj.weight", {d, d}, s);
    add(p + ".norm1.weight", {d}, 0.2, 1.0);
    add(p + ".norm3.weight", {d}, 0.2, 1.0);
    add(p + ".gate_proj.weight", {ff, d}, s);
    add(p + ".up_proj.weight", {ff, d}, s);
    add(p + ".down_proj.weight", {d, ff}, 1.7 / std::sqrt(double(ff)));
  }
  add("transformer.decoder.norm.weight", {d}, 0.2, 1.0);
  add("generator.weight", {c.tgt_vocab_size, d}, s);
  return ef::model<float>(c, w);
}

/// One model at a time: the 1B shape is 3.4 GB.
const ef::model<float>& lm(int shape) {
  static int held = -1;
  static std::unique_ptr<ef::model<float>> m;
  if (held != shape) {
    m.reset();
    m = std::make_unique<ef::model<float>>(random_lm(shape));
    held = shape;
  }
  return *m;
}

std::vector<ef::token_id> prompt() {
  std::vector<ef::token_id> p(static_cast<std::size_t>(prompt_tokens));
  for (index_t i = 0; i < prompt_tokens; ++i) p[static_cast<std::size_t>(i)] = ef::token_id(3 + (i * 7919) % 31990);
  return p;
}

void label(benchmark::State& state, const char* suffix = "") {
  static const char* const names[] = {"125M mha", "125M gqa4", "1B gqa8"};
  state.SetLabel(std::string(names[state.range(0)]) + ", " + std::to_string(state.range(1)) + " thread(s)" + suffix);
  state.counters["params_M"] = double(lm(static_cast<int>(state.range(0))).parameter_count()) / 1e6;
}

void BM_Prefill(benchmark::State& state) {
  const auto& m = lm(static_cast<int>(state.range(0)));
  ef::set_num_threads(static_cast<int>(state.range(1)));
  const auto tokens = prompt();
  // arg 2: 1 = only the last row's distribution (decode_request::skip, what generate() asks for);
  // 0 = every prompt position's (scoring a text)
  const bool last_only = state.range(2) != 0;
  const index_t slot = 0, count = prompt_tokens, skip = last_only ? prompt_tokens - 1 : 0;
  ef::encoder_output<float> none;  // decoder-only: no source rows
  none.offsets = {0, 0};
  none.memory.resize({0, m.config().d_model});
  ef::kv_cache<float> cache;
  ef::tensor<float> out({prompt_tokens - skip, m.config().tgt_vocab_size});
  for (auto _ : state) {
    m.start_decoding(none, 1, prompt_tokens + new_tokens, cache);
    m.decode_step(cache, ef::decode_request{{&slot, 1}, tokens, {&count, 1}, ef::step_output::log_probs, {}, {&skip, 1}},
                  out.matrix());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  label(state, last_only ? ", last row only" : "");
  state.counters["prompt_tokens_per_s"] = benchmark::Counter(double(state.iterations() * prompt_tokens), benchmark::Counter::kIsRate);
}

void BM_Decode(benchmark::State& state) {
  const auto& m = lm(static_cast<int>(state.range(0)));
  ef::set_num_threads(static_cast<int>(state.range(1)));
  const auto tokens = prompt();
  const index_t slot = 0, count = prompt_tokens, V = m.config().tgt_vocab_size;
  ef::encoder_output<float> none;
  none.offsets = {0, 0};
  none.memory.resize({0, m.config().d_model});
  ef::kv_cache<float> cache;
  ef::tensor<float> out({prompt_tokens, V}), step({1, V});
  for (auto _ : state) {
    state.PauseTiming();
    m.start_decoding(none, 1, prompt_tokens + new_tokens, cache);
    m.decode_step(cache, ef::decode_request{{&slot, 1}, tokens, {&count, 1}}, out.matrix());
    ef::token_id next = ef::token_id(std::max_element(&out(prompt_tokens - 1, 0), &out(prompt_tokens - 1, 0) + V) -
                                     &out(prompt_tokens - 1, 0));
    state.ResumeTiming();
    for (index_t t = 0; t < new_tokens; ++t) {  // greedy: the argmax goes back in
      m.decode_step(cache, std::span<const index_t>(&slot, 1), std::span<const ef::token_id>(&next, 1), step.matrix());
      next = ef::token_id(std::max_element(step.data(), step.data() + V) - step.data());
    }
    benchmark::DoNotOptimize(next);
  }
  label(state);
  state.counters["ms_per_token"] = benchmark::Counter(double(state.iterations() * new_tokens) / 1e3,
                                                      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["gen_tokens_per_s"] = benchmark::Counter(double(state.iterations() * new_tokens), benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int shape : {0, 1, 2})
    for (int threads : {1, 2}) b->Args({shape, threads});
}

void prefill_shapes(benchmark::internal::Benchmark* b) {
  for (int shape : {0, 1, 2})
    for (int threads : {1, 2})
      for (int last_only : {0, 1}) b->Args({shape, threads, last_only});
}

}  // namespace

// Few iterations: a 1B decode iteration is 64 steps over 3.4 GB of weights (seconds). Repeat with
// --benchmark_repetitions and read the medians.
BENCHMARK(BM_Prefill)->Apply(prefill_shapes)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Decode)->Apply(shapes)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
