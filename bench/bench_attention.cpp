// bench_attention: multi-head attention itself (attention.hpp), fp32, d_model 512, 1, 8 and 16
// heads (d_head 512, 64, 32), batch 1 and 8, in the three ways the model uses it:
//   self   self-attention over packed sequences of length T (encoder / teacher forcing, not
//          causal), T = 16, 64, 256, 1024: Tq = Tk = T;
//   decode one cached causal decode step, one query row per sequence over a KV cache of L rows
//          (kv_cache's layout: [slots * capacity, 2 d_model]), L = 16, 64, 256, 1024, 4096;
//   cross  cross-attention of one query row per sequence over S source rows (cross_kv's layout:
//          packed [n_src, 2 d_model]), S = 32, 128, 512.
//
// What is timed. The `*_core` benchmarks time the attention core only: for every sequence and
// head, scores = (q / sqrt(d_head)) k^T, softmax, out = scores v, run exactly as self_attention /
// attention_over_kv run it (detail::for_each_head over attend_head, the same strided head views of
// the fused projection buffers, the same scratch), reading q (or qkv) from buffers filled as the
// projections would leave them and writing the concatenated heads `ctx` [n, d_model]. The Q/K/V
// and output projections are NOT in the core (they are linear() calls, bench_linear's subject):
// the `*_api` benchmarks time the public functions, self_attention (in_proj + core + out_proj) and
// attention_over_kv (q projection + core + out_proj), for the share of the projections.
//
// Counters, per call: GFLOP_per_s counts 4 Tq Tk d_model per sequence (q k^T and scores v, two
// flops per multiply-add, summed over heads; softmax's exp, max, sum and scale not counted; the
// api benchmarks add the projections' 2 n d_model^2 per matrix). KV_GB_per_s counts the bytes of
// K and V the attention must read, once: batch Tk 2 d_model 4 bytes (scores and q not counted).
// decode and cross rotate through copies of their K/V buffers, at least 256 MiB in all, so that
// every call reads K/V from memory as in a real step (where a layer's cache was last touched a whole
// step earlier, with ~155 MB of weights streamed in between); self-attention reuses one buffer
// (the encoder's qkv was just written by in_proj: warm). BM_read_bandwidth streams a 1 GiB buffer
// once per iteration (a sum) in the same binary: with huge pages, as eigenformer's tensors of
// 4 MiB and more are allocated (the KV cache included), and with 4 KiB pages (what PyTorch's
// allocator gets), so that KV_GB_per_s can be read against the machine's bound of the same run.
//
// Run with OMP_NUM_THREADS=1 for single-thread numbers; tools/attention_compare.py runs this and
// the PyTorch peer (tools/bench_attention_torch.py) and prints them side by side.
#include <benchmark/benchmark.h>

#include <eigenformer/attention.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "random.hpp"

namespace ef = eigenformer;
using ef::index_t;
using S = float;

namespace {

constexpr index_t d_model = 512;
constexpr double rotate_bytes = 256.0 * (1 << 20);  // K/V copies of decode and cross: at least this much in all

/// An nn.MultiheadAttention's weights, loaded through attention_weights::load as the layers load
/// them, random (tests/support/random_model.hpp's scales).
ef::attention_weights<S> random_attention(index_t heads) {
  ef::testing::filler f(7);
  const double s = 1.7 / std::sqrt(double(d_model));
  ef::weight_map<S> w("bench");
  w.insert("attn.in_proj_weight", f.make<S>({3 * d_model, d_model}, -s, s));
  w.insert("attn.in_proj_bias", f.make<S>({3 * d_model}, -0.1, 0.1));
  w.insert("attn.out_proj.weight", f.make<S>({d_model, d_model}, -s, s));
  w.insert("attn.out_proj.bias", f.make<S>({d_model}, -0.1, 0.1));
  return ef::attention_weights<S>::load(w, "attn", d_model, heads);
}

void fill(ef::tensor<S>& t, std::uint64_t seed) {
  ef::testing::filler f(seed);
  for (auto& v : t.values()) v = static_cast<S>(f.next());
}

/// The inputs of one shape, kept across Google Benchmark's repeated calls of a benchmark (it calls
/// the function again for every iteration-count estimate; building 256 MiB each time would cost
/// more than the measurement). Only the latest shape is kept.
struct fixture {
  enum kind_t { self, decode, cross } kind;
  index_t heads, batch, len;
  ef::attention_weights<S> w;
  ef::tensor<S> x, out;              // [n, d_model] layer input / output (api benchmarks)
  ef::tensor<S> qkv;                 // self: [n, 3 d_model] as in_proj leaves it
  ef::tensor<S> q;                   // decode / cross: [batch, d_model] as the q projection leaves it
  ef::tensor<S> kv;                  // decode / cross: copies x [batch * len, 2 d_model]
  index_t copies = 1;
  std::vector<index_t> q_offsets;    // [batch + 1]
  std::vector<std::vector<index_t>> kv_offsets;  // per copy, [batch]
  std::vector<index_t> kv_lengths;   // [batch]
  ef::tensor<S> ctx, scores;         // core: the heads' output [n, d_model], attend_head's scratch
  ef::workspace<S> ws;               // api
  index_t next = 0;                  // the copy the next call reads

  fixture(kind_t k, index_t h, index_t b, index_t l) : kind(k), heads(h), batch(b), len(l), w(random_attention(h)) {
    const index_t n = kind == self ? batch * len : batch;
    x.resize({n, d_model});
    fill(x, 1);
    out.resize({n, d_model});
    ctx.resize({n, d_model});
    for (index_t i = 0; i <= batch; ++i) q_offsets.push_back(i * (kind == self ? len : 1));
    if (kind == self) {
      qkv.resize({n, 3 * d_model});
      w.in_proj(x.matrix(), qkv.matrix());
      return;
    }
    q.resize({n, d_model});
    w.project_q(x.matrix(), q.matrix());
    // decode: slot s, step t is row s * capacity + t (kv_cache); the cache is full to `len`.
    // cross: sources packed one after the other (cross_kv). Either way rows b * len ...
    const double one = double(batch) * double(len) * 2 * d_model * sizeof(S);
    copies = std::max<index_t>(2, static_cast<index_t>(std::ceil(rotate_bytes / one)));
    kv.resize({copies * batch * len, 2 * d_model});
    ef::testing::filler f(3);
    for (auto& v : std::span<S>(kv.data(), static_cast<std::size_t>(batch * len * 2 * d_model))) v = S(f.next());
    for (index_t c = 1; c < copies; ++c)
      std::memcpy(kv.data() + c * batch * len * 2 * d_model, kv.data(), static_cast<std::size_t>(one));
    kv_offsets.resize(static_cast<std::size_t>(copies));
    for (index_t c = 0; c < copies; ++c)
      for (index_t b = 0; b < batch; ++b) kv_offsets[std::size_t(c)].push_back((c * batch + b) * len);
    kv_lengths.assign(static_cast<std::size_t>(batch), len);
  }

  ef::kv_view<S> view() {
    ef::kv_view<S> v;
    v.data = kv.data();
    v.stride = 2 * d_model;
    v.offsets = kv_offsets[static_cast<std::size_t>(next)];
    v.lengths = kv_lengths;
    v.causal = kind == decode;
    next = (next + 1) % copies;
    return v;
  }

  double core_flops() const {
    const double tq = kind == self ? double(len) : 1.0;
    return 4.0 * double(batch) * tq * double(len) * double(d_model);
  }
  double projection_flops() const {  // self: in_proj (3) + out_proj (1); over kv: q (1) + out_proj (1)
    const double n = kind == self ? double(batch * len) : double(batch);
    return 2.0 * n * double(d_model) * double(d_model) * (kind == self ? 4.0 : 2.0);
  }
  double kv_bytes() const { return double(batch) * double(len) * 2 * d_model * sizeof(S); }
};

fixture& get_fixture(fixture::kind_t kind, index_t heads, index_t batch, index_t len) {
  static std::unique_ptr<fixture> f;
  if (!f || f->kind != kind || f->heads != heads || f->batch != batch || f->len != len) {
    f.reset();  // free the previous shape first
    f = std::make_unique<fixture>(kind, heads, batch, len);
  }
  return *f;
}

/// self_attention's loop between its two projections (attention.hpp), on qkv as in_proj left it.
void self_core(fixture& f) {
  const index_t d = d_model, dh = f.w.d_head(), len = f.len;
  const S* qkv = f.qkv.data();
  S* ctx = f.ctx.data();
  ef::detail::for_each_head(f.batch, f.w.n_heads, len * len, f.core_flops(), 0.0, f.scores, [&](index_t b, index_t h, S* scratch) {
    const index_t row = f.q_offsets[static_cast<std::size_t>(b)];
    const S* base = qkv + row * 3 * d + h * dh;
    ef::attend_head<S>(ef::make_view(base, len, dh, 3 * d), ef::make_view(base + d, len, dh, 3 * d),
                       ef::make_view(base + 2 * d, len, dh, 3 * d), ef::make_view(ctx + row * d + h * dh, len, dh, d), false, 0,
                       scratch);
  });
}

/// attention_over_kv's loop between its two projections (attention.hpp), one query row per sequence.
void kv_core(fixture& f, const ef::kv_view<S>& kv) {
  const index_t d = d_model, dh = f.w.d_head();
  const S* q = f.q.data();
  S* ctx = f.ctx.data();
  ef::detail::for_each_head(f.batch, f.w.n_heads, f.len, f.core_flops(), f.kv_bytes(), f.scores, [&](index_t b, index_t h, S* scratch) {
    const index_t tk = kv.lengths[static_cast<std::size_t>(b)];
    const S* k = kv.data + kv.offsets[static_cast<std::size_t>(b)] * kv.stride + h * dh;
    ef::attend_head<S>(ef::make_view(q + b * d + h * dh, 1, dh, d), ef::make_view(k, tk, dh, kv.stride),
                       ef::make_view(k + d, tk, dh, kv.stride), ef::make_view(ctx + b * d + h * dh, 1, dh, d), kv.causal, tk - 1,
                       scratch);
  });
}

template <fixture::kind_t Kind, bool Api>
void BM_attention(benchmark::State& state) {
  fixture& f = get_fixture(Kind, state.range(0), state.range(1), state.range(2));
  for (auto _ : state) {
    if constexpr (Kind == fixture::self) {
      if constexpr (Api) {
        ef::self_attention(f.w, f.x.matrix(), std::span<const index_t>(f.q_offsets), false, f.out.matrix(), f.ws);
      } else {
        self_core(f);
      }
    } else {
      const auto kv = f.view();
      if constexpr (Api) {
        ef::attention_over_kv(f.w, f.x.matrix(), std::span<const index_t>(f.q_offsets), kv, f.out.matrix(), f.ws);
      } else {
        kv_core(f, kv);
      }
    }
    benchmark::DoNotOptimize(f.ctx.data());
    benchmark::DoNotOptimize(f.out.data());
    benchmark::ClobberMemory();
  }
  const double it = double(state.iterations());
  const double flops = f.core_flops() + (Api ? f.projection_flops() : 0.0);
  state.counters["GFLOP_per_s"] = benchmark::Counter(it * flops / 1e9, benchmark::Counter::kIsRate);
  state.counters["KV_GB_per_s"] = benchmark::Counter(it * f.kv_bytes() / 1e9, benchmark::Counter::kIsRate);
  state.counters["flops"] = flops;
  state.counters["kv_bytes"] = f.kv_bytes();
}

/// One thread's read bandwidth from memory: the sum of a 1 GiB float buffer (Eigen, vectorised),
/// allocated as eigenformer allocates tensors (huge pages advised) or with plain 4 KiB pages.
template <bool HugePages>
void BM_read_bandwidth(benchmark::State& state) {
  const index_t n = index_t{1} << 28;  // 1 GiB of float
  const std::size_t bytes = static_cast<std::size_t>(n) * sizeof(S);
  ef::tensor<S> t;
  std::unique_ptr<S, decltype(&std::free)> plain(nullptr, &std::free);
  S* data = nullptr;
  if constexpr (HugePages) {
    t.resize({n});
    data = t.data();
  } else {
    plain.reset(static_cast<S*>(std::aligned_alloc(64, bytes)));  // 64-byte aligned, never advised
    data = plain.get();
  }
  std::memset(data, 0, bytes);
  for (index_t i = 0; i < n; i += 1024) data[i] = S(1);
  Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, 1>, Eigen::Aligned64> v(data, n);
  for (auto _ : state) {
    S sum = v.sum();
    benchmark::DoNotOptimize(sum);
  }
  state.counters["GB_per_s"] = benchmark::Counter(double(state.iterations()) * double(bytes) / 1e9, benchmark::Counter::kIsRate);
}

void self_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"heads", "batch", "T"});
  for (index_t heads : {1, 8, 16})
    for (index_t batch : {1, 8})
      for (index_t len : {16, 64, 256, 1024}) b->Args({heads, batch, len});
  b->Unit(benchmark::kMicrosecond)->MinTime(0.1);
}
void decode_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"heads", "batch", "L"});
  for (index_t heads : {1, 8, 16})
    for (index_t batch : {1, 8})
      for (index_t len : {16, 64, 256, 1024, 4096}) b->Args({heads, batch, len});
  b->Unit(benchmark::kMicrosecond)->MinTime(0.1);
}
void cross_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"heads", "batch", "S"});
  for (index_t heads : {1, 8, 16})
    for (index_t batch : {1, 8})
      for (index_t len : {32, 128, 512}) b->Args({heads, batch, len});
  b->Unit(benchmark::kMicrosecond)->MinTime(0.1);
}

}  // namespace

BENCHMARK(BM_read_bandwidth<true>)->Name("read_bandwidth/huge_pages")->Iterations(4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_read_bandwidth<false>)->Name("read_bandwidth/4k_pages")->Iterations(4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_attention<fixture::self, false>)->Name("self_core")->Apply(self_shapes);
BENCHMARK(BM_attention<fixture::decode, false>)->Name("decode_core")->Apply(decode_shapes);
BENCHMARK(BM_attention<fixture::cross, false>)->Name("cross_core")->Apply(cross_shapes);
BENCHMARK(BM_attention<fixture::self, true>)->Name("self_api")->Apply(self_shapes);
BENCHMARK(BM_attention<fixture::decode, true>)->Name("decode_api")->Apply(decode_shapes);
BENCHMARK(BM_attention<fixture::cross, true>)->Name("cross_api")->Apply(cross_shapes);

BENCHMARK_MAIN();
