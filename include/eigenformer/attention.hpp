// eigenformer/attention.hpp: multi-head attention as torch.nn.MultiheadAttention computes it
// (batch_first, q/k/v projections fused in in_proj_weight, rows q then k then v).
//
// Sequences are packed (batch.hpp): sequence b owns rows offsets[b] .. offsets[b+1]. Every head of
// every sequence is a strided view into the fused projection buffers, never a copy:
//   self-attention:  qkv [n, 3 d_model]; head h reads q at column h d_head, k at d_model + h d_head,
//                    v at 2 d_model + h d_head, rows 3 d_model apart.
//   cross-attention: q [n, d_model] and kv [n_src, 2 d_model] (the encoder output projected once).
//   KV cache:        kv [steps, 2 d_model] per sequence, the same layout as cross-attention's kv.
// Padded keys need no mask: a sequence's view simply ends at its length. Causal attention limits
// row i to keys [0, offset + i].
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>

#include "config.hpp"
#include "layers/linear.hpp"
#include "rotary.hpp"
#include "workspace.hpp"
#include "ops.hpp"
#include "threads.hpp"

namespace eigenformer {

/// The four tensors of an nn.MultiheadAttention with d_model = embed_dim. Decoder-only models
/// (grouped-query attention) have n_kv_heads <= n_heads key/value heads: in_proj is then
/// [d_model + 2 kv_dim, d_model] (rows q, k, v; kv_dim = n_kv_heads d_head), and either bias may
/// be absent (empty).
template <class Scalar>
struct attention_weights {
  linear_layer<Scalar> in_proj;   // weight [3 d_model, d_model], bias [3 d_model]
  linear_layer<Scalar> out_proj;  // weight [d_model, d_model], bias [d_model]
  index_t n_heads = 1;
  index_t n_kv_heads = 0;  // 0: n_heads

  /// A decoder-only model's self-attention: `<scope>.in_proj_weight` [d_model + 2 kv_dim, d_model],
  /// `<scope>.in_proj_bias` (with bias all or qkv), `<scope>.out_proj.weight` (and .bias with all).
  static attention_weights load_grouped(weight_map<Scalar>& w, const std::string& scope, index_t d_model, index_t n_heads,
                                        index_t n_kv_heads, attention_bias bias) {
    attention_weights a;
    const index_t rows = d_model + 2 * (d_model / n_heads) * n_kv_heads;
    a.in_proj.weight = w.take(scope + ".in_proj_weight", {rows, d_model});
    if (bias != attention_bias::none) a.in_proj.bias = w.take(scope + ".in_proj_bias", {rows});
    a.out_proj.weight = w.take(scope + ".out_proj.weight", {d_model, d_model});
    if (bias == attention_bias::all) a.out_proj.bias = w.take(scope + ".out_proj.bias", {d_model});
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv_heads;
    return a;
  }

  static attention_weights load(weight_map<Scalar>& w, const std::string& scope, index_t d_model, index_t n_heads) {
    attention_weights a;
    a.in_proj.weight = w.take(scope + ".in_proj_weight", {3 * d_model, d_model});
    a.in_proj.bias = w.take(scope + ".in_proj_bias", {3 * d_model});
    a.out_proj = linear_layer<Scalar>::load(w, scope + ".out_proj", d_model, d_model);
    a.n_heads = n_heads;
    return a;
  }

  index_t d_model() const noexcept { return out_proj.out_features(); }
  index_t d_head() const noexcept { return d_model() / n_heads; }
  index_t kv_heads() const noexcept { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  /// Width of the keys (and of the values): kv_heads d_head (d_model without grouped-query attention).
  index_t kv_dim() const noexcept { return kv_heads() * d_head(); }
  index_t parameter_count() const noexcept { return in_proj.parameter_count() + out_proj.parameter_count(); }

  /// q [n, d_model] = x [n, d_model] W_q^T + b_q: rows [0, d_model) of in_proj alone.
  template <class X, class Y>
  void project_q(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& q) const {
    in_proj.apply_rows(0, d_model(), x, q);
  }
  /// kv [n, 2 kv_dim] = x [n, d_model] W_kv^T + b_kv: rows [d_model, d_model + 2 kv_dim) of in_proj,
  /// keys then values in each row (the [k | v] rows kv_cache and cross_kv hold).
  template <class X, class Y>
  void project_kv(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& kv) const {
    in_proj.apply_rows(d_model(), 2 * kv_dim(), x, kv);
  }
  /// Converts in_proj and out_proj to weight type `t` (layers/linear.hpp).
  void convert(weight_type t) {
    in_proj.convert(t);
    out_proj.convert(t);
  }
};

/// One head of scaled dot-product attention for one sequence:
///   out [Tq, d_head] = softmax(q k^T / sqrt(d_head)) v, q [Tq, d_head], k, v [Tk, d_head].
/// Row i attends to keys [0, Tk), or [0, min(Tk, q_offset + i + 1)) when causal.
/// `scores` is scratch of at least Tq * Tk elements.
template <class Scalar>
void attend_head(const_matrix_view<Scalar> q, const_matrix_view<Scalar> k, const_matrix_view<Scalar> v,
                 matrix_view<Scalar> out, bool causal, index_t q_offset, Scalar* scores) {
  const index_t tq = q.rows(), tk = k.rows();
  auto s = make_view(scores, tq, tk);
  const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(q.cols()));
  s.noalias() = (q * scale) * k.transpose();  // PyTorch scales q before the product
  if (causal) {
    for (index_t i = 0; i < tq; ++i) softmax_rows(s.row(i), std::min(tk, q_offset + i + 1));
  } else {
    softmax_rows(s);
  }
  out.noalias() = s * v;
}

namespace detail {

/// Elements of one thread's block of attention scores for tasks of `per_task` scores: rounded up
/// to whole 64-byte lines, so that every thread's block starts aligned as the first does. Eigen's
/// vectorised sums (the softmax's) start with scalar steps up to the first aligned element: a head
/// computed in a block aligned otherwise would differ in the last bits, and a result would depend
/// on which thread computed it.
template <class Scalar>
constexpr index_t head_scratch_block(index_t per_task) noexcept {
  constexpr index_t line = 64 / sizeof(Scalar);
  return (std::max<index_t>(per_task, 1) + line - 1) / line * line;
}

/// Runs `head(b, h, scratch)` for every sequence b and head h, in parallel when the work is worth
/// it: `flops` to compute, or `kv_bytes` of keys and values to read (a decode step's attention over
/// a KV cache: little arithmetic per byte, the same rule as a decode step's matrix products). Each
/// thread gets its own block of head_scratch_block(per_task) elements inside `scores`.
template <class Scalar, class Head>
void for_each_head(index_t batch, index_t n_heads, index_t per_task, double flops, double kv_bytes,
                   tensor<Scalar>& scores, Head&& head) {
  const index_t tasks = batch * n_heads;
  const int threads = tasks > 1 ? static_cast<int>(std::min<index_t>(product_threads(flops / 2, kv_bytes), tasks)) : 1;
  const index_t block = head_scratch_block<Scalar>(per_task);
  scores.resize({threads * block});
  Scalar* base = scores.data();
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
#endif
  for (index_t task = 0; task < tasks; ++task) {
#if defined(_OPENMP)
    const index_t thread = omp_get_thread_num();
#else
    const index_t thread = 0;
#endif
    head(task / n_heads, task % n_heads, base + thread * block);
  }
}

}  // namespace detail

/// Self-attention over packed sequences: x [n, d_model] -> out [n, d_model] (out_proj applied).
/// Row r of sequence b attends to the rows of b (causally when `causal`).
template <class Scalar, class X, class Y>
void self_attention(const attention_weights<Scalar>& w, const Eigen::MatrixBase<X>& x, std::span<const index_t> offsets,
                    bool causal, const Eigen::MatrixBase<Y>& out, workspace<Scalar>& ws) {
  const index_t n = x.rows(), d = w.d_model(), dh = w.d_head(), batch = static_cast<index_t>(offsets.size()) - 1;
  ws.qkv.resize({n, 3 * d});
  ws.ctx.resize({n, d});
  w.in_proj(x, ws.qkv.matrix());
  index_t longest = 0;
  double flops = 0;
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = offsets[static_cast<std::size_t>(b) + 1] - offsets[static_cast<std::size_t>(b)];
    longest = std::max(longest, len);
    flops += 4.0 * double(len) * double(len) * double(d);
  }
  const Scalar* qkv = ws.qkv.data();
  Scalar* ctx = ws.ctx.data();
  detail::for_each_head(batch, w.n_heads, longest * longest, flops, 0.0, ws.scores, [&](index_t b, index_t h, Scalar* scratch) {
    const index_t row = offsets[static_cast<std::size_t>(b)];
    const index_t len = offsets[static_cast<std::size_t>(b) + 1] - row;
    if (len == 0) return;
    const Scalar* base = qkv + row * 3 * d + h * dh;
    attend_head<Scalar>(make_view(base, len, dh, 3 * d), make_view(base + d, len, dh, 3 * d),
                        make_view(base + 2 * d, len, dh, 3 * d), make_view(ctx + row * d + h * dh, len, dh, d), causal,
                        0, scratch);
  });
  w.out_proj(ws.ctx.matrix(), out);
}

/// The cross-attention keys and values of packed encoder output: kv [n_src, 2 d_model] =
/// memory [n_src, d_model] W_kv^T + b_kv. Computed once per source, reused at every decoder step.
template <class Scalar, class M, class KV>
void cross_kv(const attention_weights<Scalar>& w, const Eigen::MatrixBase<M>& memory, const Eigen::MatrixBase<KV>& kv) {
  w.project_kv(memory, kv);
}

/// Keys and values that packed query sequences attend over: a strided view, never a copy.
/// Query sequence b reads key rows offsets[b] .. offsets[b] + lengths[b] of `data`; row r holds
/// k at data + r stride and v kv_dim elements later (kv_dim = d_model but with grouped-query attention) ([k | v] rows, as kv_cache and cross_kv lay
/// them out). With `causal`, the tq query rows of sequence b are the last tq positions of its
/// keys: query i sees keys [0, lengths[b] - tq + i] (one query row sees them all).
template <class Scalar>
struct kv_view {
  const Scalar* data = nullptr;
  index_t stride = 0;                // elements between consecutive key rows (2 d_model)
  std::span<const index_t> offsets;  // [batch] first key row of each query sequence
  std::span<const index_t> lengths;  // [batch] key rows of each query sequence
  bool causal = false;
};

/// Attention of packed queries x [n, d_model] (sequence b: rows q_offsets[b] .. q_offsets[b+1])
/// over `kv`; out [n, d_model] (out_proj applied). This one function serves cross-attention (kv =
/// the projected encoder output) and cached self-attention (kv = the KV cache, causal when a
/// sequence feeds several tokens at once), so both run the same kernel. With grouped-query
/// attention query head h reads key/value head h / (n_heads / kv_heads). With `rope`, the queries
/// are rotated at `q_positions` (one absolute position per row of x) before they attend.
template <class Scalar, class X, class Y>
void attention_over_kv(const attention_weights<Scalar>& w, const Eigen::MatrixBase<X>& x, std::span<const index_t> q_offsets,
                       const kv_view<Scalar>& kv, const Eigen::MatrixBase<Y>& out, workspace<Scalar>& ws,
                       const rotary_embedding<Scalar>* rope = nullptr, std::span<const index_t> q_positions = {}) {
  const index_t n = x.rows(), d = w.d_model(), dh = w.d_head(), batch = static_cast<index_t>(q_offsets.size()) - 1;
  const index_t kvd = w.kv_dim(), group = w.n_heads / w.kv_heads();
  ws.q.resize({n, d});
  ws.ctx.resize({n, d});
  w.project_q(x, ws.q.matrix());
  if (rope) rope->apply(ws.q.matrix(), q_positions);
  index_t per_task = 0;
  double flops = 0, kv_bytes = 0;
  for (index_t b = 0; b < batch; ++b) {
    const index_t tq = q_offsets[static_cast<std::size_t>(b) + 1] - q_offsets[static_cast<std::size_t>(b)];
    const double tk = double(kv.lengths[static_cast<std::size_t>(b)]);
    per_task = std::max(per_task, tq * kv.lengths[static_cast<std::size_t>(b)]);
    flops += 4.0 * double(tq) * tk * double(d);
    kv_bytes += 2.0 * tk * double(kvd) * sizeof(Scalar);
  }
  const Scalar* q = ws.q.data();
  Scalar* ctx = ws.ctx.data();
  detail::for_each_head(batch, w.n_heads, per_task, flops, kv_bytes, ws.scores, [&](index_t b, index_t h, Scalar* scratch) {
    const index_t row = q_offsets[static_cast<std::size_t>(b)];
    const index_t tq = q_offsets[static_cast<std::size_t>(b) + 1] - row;
    const index_t tk = kv.lengths[static_cast<std::size_t>(b)];
    if (tq == 0) return;
    const Scalar* k = kv.data + kv.offsets[static_cast<std::size_t>(b)] * kv.stride + (h / group) * dh;
    attend_head<Scalar>(make_view(q + row * d + h * dh, tq, dh, d), make_view(k, tk, dh, kv.stride),
                        make_view(k + kvd, tk, dh, kv.stride), make_view(ctx + row * d + h * dh, tq, dh, d), kv.causal,
                        tk - tq, scratch);
  });
  w.out_proj(ws.ctx.matrix(), out);
}

}  // namespace eigenformer
