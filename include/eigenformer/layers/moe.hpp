// eigenformer/layers/moe.hpp: the mixture-of-experts feed-forward block of
// docs/model-format.md, and feed_forward_block, which is either it or the dense block.
//
// With gate logits h = x Wg^T (one per expert, Wg [E, d_model], no bias):
//   softmax:      g = softmax(h);                     y = sum over all e of g_e FF_e(x)
//   top_k:        keep the k largest h, g = softmax over those k;  y = sum over them of g_e FF_e(x)
//                 This is also Mixtral's router (softmax over all E, keep the top k, divide the k
//                 kept by their sum): with p_e = exp(h_e) / Z, Z = sum over all E of exp(h_j), the
//                 top k of p are the top k of h (softmax is increasing), and for a kept e
//                 p_e / sum_{j kept} p_j = (exp(h_e) / Z) / (sum_{j kept} exp(h_j) / Z)
//                                        = exp(h_e) / sum_{j kept} exp(h_j),
//                 the softmax over the kept logits: Z cancels. (test_lm checks it on the Mixtral
//                 fixture, test_moe against the formula.)
//   noisy_top_k:  h = x Wg^T + eps * softplus(x Wn^T), eps ~ N(0, 1), then as top_k. eps comes from
//                 the caller's moe_noise_source (moe_runtime.hpp); without one the noise term is
//                 skipped and the layer runs the very code top_k runs (bit-identical results).
//
// Dispatch, for all n tokens of a call at once. Arithmetic grows with k, not with E; the weights
// read are those of the experts some token picked, once per call (at decode sizes, most of them):
//   1. route: h [n, E] in one GEMM; per token the top k by (logit descending, expert ascending),
//      their softmax weights; the softmax gate routes every token to every expert in index order.
//   2. counting sort of the n k (token, slot) pairs by expert: expert e owns routed rows
//      starts[e] .. starts[e+1], its tokens in ascending order.
//   3. per non-empty expert: gather its token rows into one contiguous block (skipped when the
//      expert has every token, as under the softmax gate), then one GEMM pair:
//      hidden = act(X_e W1_e^T + b1_e), Y_e = hidden W2_e^T + b2_e, or for gated (SwiGLU)
//      experts (Mixtral: config feed_forward "gated" with moe) Y_e = down(silu(gate X_e) * up X_e),
//      hidden then [rows, 2 d_ff]: gate in its left half, up in its right. Experts are independent, so
//      when each has few rows (decoding) they run in parallel, one per thread; with many rows each
//      GEMM is threaded instead.
//   4. scatter: y_i = sum over token i's slots j, in slot order (descending gate), of g_ij Y[row_ij].
//      This order is fixed by the routing alone, so results never depend on thread timing.
// All buffers live in the workspace (moe_scratch) and only grow: a decode step allocates nothing
// once it has run at its size.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "../config.hpp"
#include "../moe_runtime.hpp"
#include "../threads.hpp"
#include "../workspace.hpp"
#include "feed_forward.hpp"
#include "gated_feed_forward.hpp"
#include "linear.hpp"

namespace eigenformer {

/// softplus(z) = log(1 + exp(z)) as torch.nn.functional.softplus (beta 1, threshold 20: z above 20).
template <class Scalar>
Scalar softplus(Scalar z) noexcept {
  return z > Scalar(20) ? z : std::log1p(std::exp(z));
}

/// The k largest of `logits` [E] by (value descending, index ascending): writes their indices to
/// `chosen` [k] in that order. Ties go to the lower expert index; a NaN logit is never preferred.
template <class Scalar>
void top_k_experts(const Scalar* logits, index_t n_experts, index_t k, index_t* chosen) noexcept {
  index_t filled = 0;
  for (index_t e = 0; e < n_experts; ++e) {
    const Scalar v = logits[e];
    if (filled == k && !(v > logits[chosen[k - 1]])) continue;
    // first slot holding a strictly smaller value (equal values keep their earlier, lower index)
    index_t j = filled < k ? filled : k - 1;
    while (j > 0 && v > logits[chosen[j - 1]]) {
      chosen[j] = chosen[j - 1];
      --j;
    }
    chosen[j] = e;
    if (filled < k) ++filled;
  }
}

template <class Scalar>
class moe_layer {
 public:
  /// Takes `<scope>.moe.gate.weight` [E, d_model], `<scope>.moe.noise.weight` [E, d_model]
  /// (noisy_top_k only) and `<scope>.moe.experts.<e>.linear1/linear2`, or with c.ff gated
  /// `<scope>.moe.experts.<e>.{gate,up,down}_proj` (SwiGLU experts, no biases). `id` numbers the model's
  /// MoE layers (encoder layers first, then decoder layers) for noise sources and statistics.
  static moe_layer load(weight_map<Scalar>& w, const std::string& scope, const model_config& c, index_t id) {
    if (!c.moe) throw config_error(scope + ": mixture-of-experts layer in a config without 'moe'");
    const moe_config& m = *c.moe;
    moe_layer l;
    l.scope_ = scope;
    l.id_ = id;
    l.gate_ = m.gate_kind;
    l.top_k_ = m.gate_kind == gate::softmax ? m.n_experts : m.top_k;
    l.gate_weight_ = w.take(scope + ".moe.gate.weight", {m.n_experts, c.d_model});
    if (m.gate_kind == gate::noisy_top_k) {
      l.noise_weight_ = w.take(scope + ".moe.noise.weight", {m.n_experts, c.d_model});
    }
    for (index_t e = 0; e < m.n_experts; ++e) {
      const std::string ex = scope + ".moe.experts." + std::to_string(e);
      if (c.ff == feed_forward_kind::gated) {
        l.gated_experts_.push_back(gated_feed_forward<Scalar>::load(w, ex, c.d_model, c.d_ff));
      } else {
        l.experts_.push_back(feed_forward<Scalar>::load(w, ex, c.d_model, c.d_ff, c.activation_kind));
      }
    }
    return l;
  }

  const std::string& scope() const noexcept { return scope_; }
  index_t id() const noexcept { return id_; }
  gate gate_kind() const noexcept { return gate_; }
  index_t n_experts() const noexcept { return static_cast<index_t>(gated() ? gated_experts_.size() : experts_.size()); }
  /// True when the experts are gated (SwiGLU) feed-forward blocks (Mixtral), false when dense.
  bool gated() const noexcept { return !gated_experts_.empty(); }
  /// Experts computed per token: top_k, or every expert under the softmax gate.
  index_t experts_per_token() const noexcept { return top_k_; }
  index_t d_model() const noexcept { return gate_weight_.dim(1); }
  index_t d_ff() const noexcept { return gated() ? gated_experts_.front().d_ff() : experts_.front().linear1.out_features(); }
  /// Expert e of a dense MoE layer (throws std::out_of_range for a gated one: see gated_expert).
  const feed_forward<Scalar>& expert(index_t e) const { return experts_.at(static_cast<std::size_t>(e)); }
  const gated_feed_forward<Scalar>& gated_expert(index_t e) const { return gated_experts_.at(static_cast<std::size_t>(e)); }
  moe_layer_info info() const noexcept { return {id_, scope_, n_experts()}; }

  index_t parameter_count() const noexcept {
    index_t p = gate_weight_.size() + noise_weight_.size();
    for (const auto& e : experts_) p += e.parameter_count();
    for (const auto& e : gated_experts_) p += e.parameter_count();
    return p;
  }
  std::size_t bytes() const noexcept {
    std::size_t b = sizeof(Scalar) * static_cast<std::size_t>(gate_weight_.size() + noise_weight_.size());
    for (const auto& e : experts_) b += e.bytes();
    for (const auto& e : gated_experts_) b += e.bytes();
    return b;
  }
  /// The experts' matrices to weight type `t`; the gates stay Scalar (they pick the experts).
  void convert(weight_type t) {
    for (auto& e : experts_) e.convert(t);
    for (auto& e : gated_experts_) e.convert(t);
  }

  /// out [n, d_model] = MoE(x [n, d_model]). ctx.rows tells the noise source who each row is;
  /// ctx.moe carries the caller's noise source and statistics. out must not overlap x.
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& out_, const forward_context& ctx,
                  workspace<Scalar>& ws) const {
    Y& out = detail::writable(out_);
    const index_t n = x.rows(), d = d_model(), E = n_experts(), k = top_k_, dff = d_ff();
    detail::check_dims(scope_.c_str(), "MoE input", x.rows(), x.cols(), n, d);
    detail::check_dims(scope_.c_str(), "MoE output", out.rows(), out.cols(), n, d);
    moe_scratch<Scalar>& s = ws.moe_buf;

    // 1. Gate logits [n, E], with the noise term when noisy_top_k has a noise source.
    s.logits.resize({n, E});
    auto h = s.logits.matrix();
    linear(x, gate_weight_.matrix(), std::span<const Scalar>{}, h);
    if (gate_ == gate::noisy_top_k && ctx.moe.noise) add_noise(x, ctx, ws);

    // 2. Routing: chosen experts and their weights per (token, slot).
    s.choice.resize(static_cast<std::size_t>(n * k));
    s.weight.resize({std::max<index_t>(n * k, 1)});
    Scalar* g = s.weight.data();
    index_t* choice = s.choice.data();
    for (index_t i = 0; i < n; ++i) {
      const Scalar* hi = s.logits.data() + i * E;
      index_t* ci = choice + i * k;
      Scalar* gi = g + i * k;
      if (gate_ == gate::softmax) {
        for (index_t e = 0; e < E; ++e) ci[e] = e;
      } else {
        top_k_experts(hi, E, k, ci);
      }
      // softmax over the chosen logits (all of them under the softmax gate)
      Scalar m = hi[ci[0]];
      for (index_t j = 1; j < k; ++j) m = std::max(m, hi[ci[j]]);
      Scalar sum = 0;
      for (index_t j = 0; j < k; ++j) sum += (gi[j] = std::exp(hi[ci[j]] - m));
      for (index_t j = 0; j < k; ++j) gi[j] /= sum;
    }

    // 3. Counting sort of the (token, slot) pairs by expert.
    s.starts.assign(static_cast<std::size_t>(E + 1), 0);
    for (index_t p = 0; p < n * k; ++p) ++s.starts[static_cast<std::size_t>(choice[p] + 1)];
    for (index_t e = 0; e < E; ++e) s.starts[static_cast<std::size_t>(e + 1)] += s.starts[static_cast<std::size_t>(e)];
    s.cursor.assign(s.starts.begin(), s.starts.end() - 1);
    s.row_token.resize(static_cast<std::size_t>(n * k));
    s.slot_row.resize(static_cast<std::size_t>(n * k));
    for (index_t i = 0; i < n; ++i) {
      for (index_t j = 0; j < k; ++j) {
        const index_t r = s.cursor[static_cast<std::size_t>(choice[i * k + j])]++;
        s.row_token[static_cast<std::size_t>(r)] = i;
        s.slot_row[static_cast<std::size_t>(i * k + j)] = r;
      }
    }
    s.active.clear();
    for (index_t e = 0; e < E; ++e)
      if (s.starts[static_cast<std::size_t>(e + 1)] > s.starts[static_cast<std::size_t>(e)]) s.active.push_back(e);
    record(n, ctx, ws);

    // 4. One GEMM pair per non-empty expert over its contiguous block of rows.
    const index_t m_total = n * k;
    s.gathered.resize({std::max<index_t>(m_total, 1), d});
    const index_t hw = gated() ? 2 * dff : dff;  // hidden width per routed row
    s.hidden.resize({std::max<index_t>(m_total, 1), hw});
    s.expert_out.resize({std::max<index_t>(m_total, 1), d});
    auto run_expert = [&](index_t e) {
      const index_t first = s.starts[static_cast<std::size_t>(e)];
      const index_t rows = s.starts[static_cast<std::size_t>(e + 1)] - first;
      auto expert_out = make_view(s.expert_out.data() + first * d, rows, d);  // [rows, d_model]
      auto block = make_view(s.gathered.data() + first * d, rows, d);         // [rows, d_model]
      if (rows != n) {  // rows == n: every token, in order (the softmax gate): x itself, no gather
        for (index_t r = 0; r < rows; ++r) block.row(r) = x.row(s.row_token[static_cast<std::size_t>(first + r)]);
      }
      auto run = [&](const auto& input) {
        if (gated()) {
          // The gated block's own operator() would use ws.hidden, shared by every thread of the
          // per-thread path: run its three projections on this expert's rows of s.hidden instead.
          const gated_feed_forward<Scalar>& ex = gated_experts_[static_cast<std::size_t>(e)];
          auto g = make_view(s.hidden.data() + first * hw, rows, dff, hw);        // [rows, d_ff], stride 2 d_ff
          auto u = make_view(s.hidden.data() + first * hw + dff, rows, dff, hw);  // [rows, d_ff], stride 2 d_ff
          ex.gate(input, g);
          ex.up(input, u);
          silu_mul(g, u);
          ex.down(g, expert_out);
        } else {
          const feed_forward<Scalar>& ex = experts_[static_cast<std::size_t>(e)];
          auto hidden = make_view(s.hidden.data() + first * dff, rows, dff);  // [rows, d_ff]
          ex.linear1(input, hidden);
          apply_activation(ex.act, hidden);
          ex.linear2(hidden, expert_out);
        }
      };
      if (rows == n) {
        run(x);
      } else {
        run(block);
      }
    };
    const auto n_active = static_cast<index_t>(s.active.size());
    const int threads = num_threads();
    // Few rows per expert (decoding): one parallel region for the layer, each thread running whole
    // experts (streaming their weights alone), rather than a fork and join per matrix product;
    // many rows: one expert at a time, each product threaded by linear() / Eigen's GEMM.
    const bool per_thread = threads > 1 && n_active > 1 && m_total < 32 * n_active &&
                            2.0 * double(m_total) * double(d) * double(dff) > 1e6;
    if (per_thread) {
      [[maybe_unused]] const int team = static_cast<int>(std::min<index_t>(threads, n_active));
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
#endif
      for (index_t a = 0; a < n_active; ++a) run_expert(s.active[static_cast<std::size_t>(a)]);
    } else {
      for (index_t a = 0; a < n_active; ++a) run_expert(s.active[static_cast<std::size_t>(a)]);
    }

    // 5. Scale by the gate weights and add up, per token in slot order.
    const auto y = make_view(static_cast<const Scalar*>(s.expert_out.data()), std::max<index_t>(m_total, 1), d);
    for (index_t i = 0; i < n; ++i) {
      const index_t* rows = s.slot_row.data() + i * k;
      out.row(i) = g[i * k] * y.row(rows[0]);
      for (index_t j = 1; j < k; ++j) out.row(i) += g[i * k + j] * y.row(rows[j]);
    }
  }

 private:
  template <class X>
  void add_noise(const Eigen::MatrixBase<X>& x, const forward_context& ctx, workspace<Scalar>& ws) const {
    const index_t n = x.rows(), E = n_experts();
    const moe_rows& rows = ctx.rows;
    if (rows.offsets.empty() || rows.rows() != n || rows.offsets.front() != 0 ||
        (!rows.sequence_ids.empty() && static_cast<index_t>(rows.sequence_ids.size()) != rows.batch()) ||
        (!rows.first_positions.empty() && static_cast<index_t>(rows.first_positions.size()) != rows.batch())) {
      throw invalid_argument(scope_ + ": MoE noise needs the packed sequences of its " + std::to_string(n) +
                             " rows, got offsets ending at " + std::to_string(rows.rows()));
    }
    moe_scratch<Scalar>& s = ws.moe_buf;
    s.noise_logits.resize({n, E});
    linear(x, noise_weight_.matrix(), std::span<const Scalar>{}, s.noise_logits.matrix());
    s.eps.resize(static_cast<std::size_t>(n * E));
    ctx.moe.noise->fill(info(), rows, s.eps);
    Scalar* h = s.logits.data();
    const Scalar* z = s.noise_logits.data();
    for (index_t p = 0; p < n * E; ++p) {  // h + eps * softplus(x Wn^T), in PyTorch's order
      h[p] += static_cast<Scalar>(s.eps[static_cast<std::size_t>(p)]) * softplus(z[p]);
    }
  }

  void record(index_t n, const forward_context& ctx, workspace<Scalar>& ws) const {
    if (!ctx.moe.stats) return;
    moe_router_stats& stats = *ctx.moe.stats;
    moe_layer_stats& st = stats.entry(info());
    const moe_scratch<Scalar>& s = ws.moe_buf;
    st.tokens = n;
    for (index_t e = 0; e < n_experts(); ++e) {
      const index_t c = s.starts[static_cast<std::size_t>(e + 1)] - s.starts[static_cast<std::size_t>(e)];
      st.counts[static_cast<std::size_t>(e)] = c;
      st.cumulative[static_cast<std::size_t>(e)] += c;
    }
    if (stats.keep_logits) {  // the gate logits h as routed (noise included), [tokens, E]
      st.logits.assign(s.logits.data(), s.logits.data() + n * n_experts());
    } else {
      st.logits.clear();
    }
    const bool sparse = gate_ != gate::softmax;
    st.k = sparse ? top_k_ : 0;
    if (stats.keep_choices && sparse) {
      st.choices.assign(s.choice.begin(), s.choice.begin() + static_cast<std::ptrdiff_t>(n * top_k_));
    } else {
      st.choices.clear();
    }
  }

  std::string scope_;
  index_t id_ = 0;
  gate gate_ = gate::top_k;
  index_t top_k_ = 1;                          // k; n_experts under the softmax gate
  tensor<Scalar> gate_weight_;                 // [E, d_model]
  tensor<Scalar> noise_weight_;                // [E, d_model], noisy_top_k only
  std::vector<feed_forward<Scalar>> experts_;  // E x (linear1 [d_ff, d_model], linear2 [d_model, d_ff]), or none
  std::vector<gated_feed_forward<Scalar>> gated_experts_;  // E x (gate, up [d_ff, d_model], down [d_model, d_ff]), or none
};

/// The feed-forward sublayer of an encoder or decoder layer: the dense block, or a mixture of
/// experts when config.moe lists the layer, or the gated (SwiGLU) block of a config whose
/// feed_forward is "gated". One branch per call, no virtual dispatch.
template <class Scalar>
class feed_forward_block {
 public:
  feed_forward_block() = default;
  explicit feed_forward_block(feed_forward<Scalar> dense) : impl_(std::move(dense)) {}
  explicit feed_forward_block(moe_layer<Scalar> moe) : impl_(std::move(moe)) {}
  explicit feed_forward_block(gated_feed_forward<Scalar> gated) : impl_(std::move(gated)) {}

  /// Loads layer `scope`: MoE if `moe_id` >= 0 (its number among the model's MoE layers), dense otherwise.
  static feed_forward_block load(weight_map<Scalar>& w, const std::string& scope, const model_config& c,
                                 index_t moe_id) {
    if (moe_id >= 0) return feed_forward_block(moe_layer<Scalar>::load(w, scope, c, moe_id));
    if (c.ff == feed_forward_kind::gated) return feed_forward_block(gated_feed_forward<Scalar>::load(w, scope, c.d_model, c.d_ff));
    return feed_forward_block(feed_forward<Scalar>::load(w, scope, c.d_model, c.d_ff, c.activation_kind));
  }

  bool is_moe() const noexcept { return std::holds_alternative<moe_layer<Scalar>>(impl_); }
  /// The mixture of experts, or null for a dense block.
  const moe_layer<Scalar>* moe() const noexcept { return std::get_if<moe_layer<Scalar>>(&impl_); }
  /// The dense block, or null for a mixture of experts.
  const feed_forward<Scalar>* dense() const noexcept { return std::get_if<feed_forward<Scalar>>(&impl_); }

  index_t parameter_count() const noexcept {
    return std::visit([](const auto& f) { return f.parameter_count(); }, impl_);
  }
  std::size_t bytes() const noexcept {
    return std::visit([](const auto& f) { return f.bytes(); }, impl_);
  }
  /// Converts the weight matrices to `t` (a mixture of experts: the experts'; its gates stay Scalar).
  void convert(weight_type t) {
    std::visit([t](auto& f) { f.convert(t); }, impl_);
  }

  /// out [n, d_model] = FF(x [n, d_model]); `ctx` says who the rows are (for MoE layers).
  template <class X, class Y>
  void operator()(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<Y>& out, const forward_context& ctx,
                  workspace<Scalar>& ws) const {
    if (const auto* m = std::get_if<moe_layer<Scalar>>(&impl_)) {
      (*m)(x, out, ctx, ws);
    } else if (const auto* g = std::get_if<gated_feed_forward<Scalar>>(&impl_)) {
      (*g)(x, out, ws);
    } else {
      std::get<feed_forward<Scalar>>(impl_)(x, out, ws);
    }
  }

 private:
  std::variant<feed_forward<Scalar>, moe_layer<Scalar>, gated_feed_forward<Scalar>> impl_;
};

/// The MoE number of encoder layer `layer` under `c` (encoder MoE layers are numbered first, in
/// layer order), or -1 if it is dense.
inline index_t encoder_moe_id(const model_config& c, index_t layer) {
  if (!c.moe || !c.moe->in_encoder(layer)) return -1;
  index_t id = 0;
  for (index_t i : c.moe->encoder_layers) id += i < layer ? 1 : 0;
  return id;
}

/// The MoE number of decoder layer `layer` (after every encoder MoE layer), or -1 if it is dense.
inline index_t decoder_moe_id(const model_config& c, index_t layer) {
  if (!c.moe || !c.moe->in_decoder(layer)) return -1;
  auto id = static_cast<index_t>(c.moe->encoder_layers.size());
  for (index_t i : c.moe->decoder_layers) id += i < layer ? 1 : 0;
  return id;
}

}  // namespace eigenformer
