// bench_moe: what a mixture-of-experts feed-forward layer (layers/moe.hpp) costs, and that its cost
// grows with k, not with the number of experts.
//
// Measured: one call of moe_layer<float> on n tokens, d_model 512, d_ff 2048, relu, E = 8 experts,
// for n = 1 and 8 (decode-like: one step of 1 or 8 hypotheses) and n = 256 (a batch of sentences):
//   softmax      the dense mixture: all 8 experts on every token (the baseline of the ratios)
//   top1, top2   top_k gate, k = 1 and 2
//   noisy2       noisy_top_k, k = 2, with seeded noise on (adds the noise GEMM and the N(0,1) draws)
//   dense_ff     one dense feed-forward block of the same shape (= one expert on every token)
// Routing, counting sort, gathers, GEMMs and the weighted scatter-add are all inside the timed call;
// the workspace is reused across iterations (the steady state of a decode loop). Counters: tokens/s
// and the GFLOP/s of the expert GEMMs actually run (4 d_model d_ff per routed row). At the end the
// binary prints each gate's time as a ratio of the softmax gate's at the same n (fastest repetition),
// CPU time and wall-clock time. On one thread the CPU time is the work done, which a shared, loaded
// machine disturbs far less than the wall-clock time; with more threads read the wall-clock table.
// Ideal compute-bound ratios: top1 1/8, top2 2/8 = 0.25. When n is small, every expert that any
// token picks has its weights read, so the ratio tends to (experts touched) / 8 instead.
//
//   OMP_NUM_THREADS=1 build/release/bench/bench_moe --benchmark_repetitions=3
#include <benchmark/benchmark.h>

#include <eigenformer/layers/moe.hpp>
#include <eigenformer/threads.hpp>

#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace ef = eigenformer;
using ef::index_t;

namespace {

constexpr index_t d_model = 512, d_ff = 2048, n_experts = 8;

ef::tensor<float> random_tensor(std::mt19937_64& rng, std::initializer_list<index_t> dims, double scale) {
  ef::tensor<float> t(dims);
  std::uniform_real_distribution<float> u(-float(scale), float(scale));
  for (auto& v : t.values()) v = u(rng);
  return t;
}

void add_linear(ef::weight_map<float>& w, std::mt19937_64& rng, const std::string& p, index_t out, index_t in) {
  w.insert(p + ".weight", random_tensor(rng, {out, in}, 1.7 / std::sqrt(double(in))));
  w.insert(p + ".bias", random_tensor(rng, {out}, 0.1));
}

ef::model_config config(ef::gate g, index_t k) {
  ef::model_config c;
  c.d_model = d_model;
  c.d_ff = d_ff;
  ef::moe_config m;
  m.n_experts = n_experts;
  m.top_k = k;
  m.gate_kind = g;
  c.moe = m;
  return c;
}

/// The same expert weights for every gate (seed 1), so only the routing differs.
ef::moe_layer<float> make_layer(ef::gate g, index_t k) {
  std::mt19937_64 rng(1);
  ef::weight_map<float> w("bench");
  w.insert("bench.moe.gate.weight", random_tensor(rng, {n_experts, d_model}, 2.0 / std::sqrt(double(d_model))));
  if (g == ef::gate::noisy_top_k) {
    w.insert("bench.moe.noise.weight", random_tensor(rng, {n_experts, d_model}, 1.0 / std::sqrt(double(d_model))));
  }
  for (index_t e = 0; e < n_experts; ++e) {
    const std::string p = "bench.moe.experts." + std::to_string(e);
    add_linear(w, rng, p + ".linear1", d_ff, d_model);
    add_linear(w, rng, p + ".linear2", d_model, d_ff);
  }
  return ef::moe_layer<float>::load(w, "bench", config(g, k), 0);
}

ef::tensor<float> input(index_t n) {
  std::mt19937_64 rng(2);
  return random_tensor(rng, {n, d_model}, 1.0);
}

struct gate_case {
  const char* name;
  ef::gate g;
  index_t k;
  bool noise;
};
const gate_case cases[] = {{"softmax", ef::gate::softmax, n_experts, false},
                           {"top1", ef::gate::top_k, 1, false},
                           {"top2", ef::gate::top_k, 2, false},
                           {"noisy2", ef::gate::noisy_top_k, 2, true}};

void BM_MoE(benchmark::State& state, gate_case gc) {
  const index_t n = state.range(0);
  const auto layer = make_layer(gc.g, gc.k);
  const auto x = input(n);
  ef::tensor<float> out({n, d_model});
  ef::seeded_moe_noise noise(7);
  ef::moe_router_stats stats;
  const ef::moe_runtime rt{gc.noise ? &noise : nullptr, &stats};
  ef::workspace<float> ws;
  const std::vector<index_t> offsets{0, n};
  const ef::forward_context ctx{{offsets, {}, {}}, rt};
  for (auto _ : state) {
    layer(x.matrix(), out.matrix(), ctx, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  index_t active = 0;
  for (index_t c : stats.layers()[0].counts) active += c > 0;
  const double flops_per_call = 4.0 * double(d_model) * double(d_ff) * double(n) * double(gc.k);
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_call * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["experts_used"] = double(active);
}

void BM_DenseFF(benchmark::State& state) {
  const index_t n = state.range(0);
  std::mt19937_64 rng(1);
  ef::weight_map<float> w("bench");
  add_linear(w, rng, "dense.linear1", d_ff, d_model);
  add_linear(w, rng, "dense.linear2", d_model, d_ff);
  const auto ff = ef::feed_forward<float>::load(w, "dense", d_model, d_ff, ef::activation::relu);
  const auto x = input(n);
  ef::tensor<float> out({n, d_model});
  ef::workspace<float> ws;
  for (auto _ : state) {
    ff(x.matrix(), out.matrix(), ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * double(d_model) * double(d_ff) * double(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

const index_t token_counts[] = {1, 8, 256};

/// Console output as usual, plus the fastest time of every benchmark for the ratio table.
class ratio_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      auto [it, fresh] = best_.try_emplace(r.benchmark_name(), times{});
      it->second.cpu = std::min(it->second.cpu, r.GetAdjustedCPUTime() * unit_to_ms(r.time_unit));
      it->second.wall = std::min(it->second.wall, r.GetAdjustedRealTime() * unit_to_ms(r.time_unit));
    }
    ConsoleReporter::ReportRuns(runs);
  }

  void print_ratios() const {
    print_table("CPU", &times::cpu);
    print_table("wall-clock", &times::wall);
  }

 private:
  static double unit_to_ms(benchmark::TimeUnit u) {
    switch (u) {
      case benchmark::kNanosecond: return 1e-6;
      case benchmark::kMicrosecond: return 1e-3;
      case benchmark::kMillisecond: return 1.0;
      case benchmark::kSecond: return 1e3;
    }
    return 1.0;
  }
  struct times {
    double cpu = std::numeric_limits<double>::infinity();
    double wall = std::numeric_limits<double>::infinity();
  };

  void print_table(const char* kind, double times::*field) const {
    std::printf("\nE = %td experts, d_model %td, d_ff %td, %d thread(s); %s ms per call (fastest repetition), ratio to the softmax gate\n",
                n_experts, d_model, d_ff, ef::num_threads(), kind);
    std::printf("| tokens | softmax (8 of 8) | top1 | top2 | noisy2 (noise on) | dense FF (1 block) |\n");
    std::printf("|---:|---:|---:|---:|---:|---:|\n");
    for (index_t n : token_counts) {
      const double base = find("BM_MoE/softmax", n).*field;
      std::printf("| %td | %.3f |", n, base);
      for (const char* name : {"BM_MoE/top1", "BM_MoE/top2", "BM_MoE/noisy2", "BM_DenseFF"}) {
        const double t = find(name, n).*field;
        std::printf(" %.3f (%.3f) |", t, t / base);
      }
      std::printf("\n");
    }
  }

  /// The times of "<prefix>/<n>", whatever Google Benchmark appends after it ("/real_time", ...).
  times find(const std::string& prefix, index_t n) const {
    const std::string key = prefix + "/" + std::to_string(n);
    for (const auto& [name, t] : best_)
      if (name.compare(0, key.size(), key) == 0 && (name.size() == key.size() || name[key.size()] == '/')) return t;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {nan, nan};
  }
  std::map<std::string, times> best_;
};

}  // namespace

int main(int argc, char** argv) {
  for (const auto& gc : cases) {
    auto* b = benchmark::RegisterBenchmark((std::string("BM_MoE/") + gc.name).c_str(), BM_MoE, gc);
    for (index_t n : token_counts) b->Arg(n);
    b->Unit(benchmark::kMillisecond);
  }
  auto* dense = benchmark::RegisterBenchmark("BM_DenseFF", BM_DenseFF);
  for (index_t n : token_counts) dense->Arg(n);
  dense->Unit(benchmark::kMillisecond);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.print_ratios();
  benchmark::Shutdown();
  return 0;
}
