// What is measured: the time of one decode step's sampling, from a logits row [V] to a token, for
// each built-in sampler alone and for the command-line default chain (temperature 0.8, top-k 40,
// top-p 0.95, min-p 0.05, draw), at V = 32000, 131072 and 262144, single thread.
//
// Every iteration starts with candidates::fill() (copying V logits into the candidate array, as
// every step must), so each number includes that floor; BM_fill measures it alone. The logits are
// "realistic": a seeded normal body (sigma 2) plus five peaked tokens (logits 12..16), giving the
// top token p ~ 0.6, as a trained model's next-token distribution often does. BM_top_p_flat is the
// hard case for top-p (sigma 0.5, no peak: the nucleus is most of the vocabulary).
//
// Baselines: the full-sort way, std::sort of the whole candidate array by (logit desc, id asc),
// then the same filters taking their sorted-input paths:
//   BM_full_sort          fill + sort                       (compare with top_k, greedy)
//   BM_full_sort_top_p    fill + softmax + sort + top_p     (compare with top_p)
//   BM_full_sort_chain    fill + temperature + sort + top_k + top_p + min_p + draw (compare with default_chain)
// items_per_second = sampling steps per second. Run:
//   bench_sampling --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <eigenformer/sampling/sampling.hpp>

#include "sampling_inputs.hpp"

namespace ef = eigenformer;
namespace efs = eigenformer::sampling;

namespace {

constexpr std::uint64_t logits_seed = 42;

std::vector<float> realistic(ef::index_t v) { return ef::testing::realistic_logits(v, logits_seed); }

/// fill + apply(s) + (the selected token, if any), per iteration.
void run_sampler(benchmark::State& state, efs::sampler& s, const std::vector<float>& logits,
                 std::span<const ef::token_id> history = {}) {
  efs::candidates c(static_cast<ef::index_t>(logits.size()));
  auto ctx = efs::sampling_context::for_sequence(7, 0);
  ctx.history = history;
  for (auto _ : state) {
    c.fill(logits);
    c.clear_selection();
    s.apply(c, ctx);
    benchmark::DoNotOptimize(c.begin());
    benchmark::DoNotOptimize(c.selected());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["kept"] = static_cast<double>(c.size());
}

void BM_fill(benchmark::State& state) {
  const auto l = realistic(state.range(0));
  efs::candidates c(state.range(0));
  for (auto _ : state) {
    c.fill(l);
    benchmark::DoNotOptimize(c.begin());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_greedy(benchmark::State& state) {
  efs::greedy s;
  run_sampler(state, s, realistic(state.range(0)));
}

void BM_temperature(benchmark::State& state) {
  efs::temperature s(0.8f);
  run_sampler(state, s, realistic(state.range(0)));
}

void BM_top_k(benchmark::State& state) {
  efs::top_k s(40);
  run_sampler(state, s, realistic(state.range(0)));
}

void BM_top_p(benchmark::State& state) {
  efs::top_p s(0.95f);
  run_sampler(state, s, realistic(state.range(0)));
}

void BM_top_p_flat(benchmark::State& state) {
  efs::top_p s(0.95f);
  run_sampler(state, s, ef::testing::realistic_logits(state.range(0), logits_seed, 0.5, 0));
}

void BM_min_p(benchmark::State& state) {
  efs::min_p s(0.05f);
  run_sampler(state, s, realistic(state.range(0)));
}

/// softmax over V + inverse-CDF draw.
void BM_distribution(benchmark::State& state) {
  efs::distribution s;
  run_sampler(state, s, realistic(state.range(0)));
}

/// repetition penalty 1.1 + no-repeat 3-gram over a 256-token history + 10 logit biases.
void BM_penalties(benchmark::State& state) {
  const ef::index_t v = state.range(0);
  std::vector<ef::token_id> history;
  auto g = ef::detail::rng::stream(3, 0);
  for (int i = 0; i < 256; ++i) history.push_back(static_cast<ef::token_id>(g.next_u32() % 500));
  std::vector<efs::token_bias> bias;
  for (int i = 0; i < 10; ++i) bias.push_back({static_cast<ef::token_id>((i * 997) % v), 0.5f});
  efs::chain s;
  s.add(efs::repetition_penalty(1.1f)).add(efs::no_repeat_ngram(3)).add(efs::logit_bias(bias));
  run_sampler(state, s, realistic(v), history);
}

void BM_default_chain(benchmark::State& state) {
  auto s = ef::testing::default_chain();
  run_sampler(state, s, realistic(state.range(0)));
}

// ---- full-sort baselines ----------------------------------------------------------------------

void BM_full_sort(benchmark::State& state) {
  const auto l = realistic(state.range(0));
  efs::candidates c(state.range(0));
  for (auto _ : state) {
    c.fill(l);
    std::sort(c.begin(), c.end(), efs::ranks_before{});
    c.set_sorted(true);
    benchmark::DoNotOptimize(c.begin());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_full_sort_top_p(benchmark::State& state) {
  const auto l = realistic(state.range(0));
  efs::candidates c(state.range(0));
  auto ctx = efs::sampling_context::for_sequence(7, 0);
  efs::top_p p(0.95f);
  for (auto _ : state) {
    c.fill(l);
    c.softmax();
    std::sort(c.begin(), c.end(), efs::ranks_before{});
    c.set_sorted(true);
    p.apply(c, ctx);
    benchmark::DoNotOptimize(c.begin());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["kept"] = static_cast<double>(c.size());
}

void BM_full_sort_chain(benchmark::State& state) {
  const auto l = realistic(state.range(0));
  efs::candidates c(state.range(0));
  auto ctx = efs::sampling_context::for_sequence(7, 0);
  efs::temperature t(0.8f);
  efs::top_k k(40);
  efs::top_p p(0.95f);
  efs::min_p m(0.05f);
  efs::distribution d;
  for (auto _ : state) {
    c.fill(l);
    c.clear_selection();
    t.apply(c, ctx);
    std::sort(c.begin(), c.end(), efs::ranks_before{});
    c.set_sorted(true);
    k.apply(c, ctx);
    p.apply(c, ctx);
    m.apply(c, ctx);
    d.apply(c, ctx);
    benchmark::DoNotOptimize(c.selected());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["kept"] = static_cast<double>(c.size());
}

void vocab_sizes(benchmark::internal::Benchmark* b) {
  b->Arg(32000)->Arg(131072)->Arg(262144)->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_fill)->Apply(vocab_sizes);
BENCHMARK(BM_greedy)->Apply(vocab_sizes);
BENCHMARK(BM_temperature)->Apply(vocab_sizes);
BENCHMARK(BM_top_k)->Apply(vocab_sizes);
BENCHMARK(BM_top_p)->Apply(vocab_sizes);
BENCHMARK(BM_top_p_flat)->Apply(vocab_sizes);
BENCHMARK(BM_min_p)->Apply(vocab_sizes);
BENCHMARK(BM_distribution)->Apply(vocab_sizes);
BENCHMARK(BM_penalties)->Apply(vocab_sizes);
BENCHMARK(BM_default_chain)->Apply(vocab_sizes);
BENCHMARK(BM_full_sort)->Apply(vocab_sizes);
BENCHMARK(BM_full_sort_top_p)->Apply(vocab_sizes);
BENCHMARK(BM_full_sort_chain)->Apply(vocab_sizes);

BENCHMARK_MAIN();
