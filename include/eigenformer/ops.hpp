// eigenformer/ops.hpp: the stateless operations a Transformer is made of, as free functions over
// Eigen views (tensor::matrix(), make_view(), blocks). Inputs are any Eigen matrix expressions of
// the right shape; outputs are writable views (Eigen's "FunctionsTakingEigenTypes" idiom), and
// every function checks shapes once per call and throws shape_error naming both shapes.
//
// Row-major throughout: a matrix [rows, cols] holds one token (or one score row) per row, so every
// row-wise operation below walks contiguous memory.
#pragma once

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <type_traits>

#include "detail/stream_rows.hpp"
#include "error.hpp"
#include "tensor.hpp"
#include "threads.hpp"

namespace eigenformer {

namespace detail {
/// Eigen's documented way to write through a `const MatrixBase&` parameter bound to a temporary view.
template <class Derived>
Derived& writable(const Eigen::MatrixBase<Derived>& m) {
  return const_cast<Eigen::MatrixBase<Derived>&>(m).derived();
}

inline void check_dims(const char* op, const char* what, index_t got_rows, index_t got_cols,
                       index_t rows, index_t cols) {
  if (got_rows != rows || got_cols != cols) {
    throw shape_error(std::string(op) + ": " + what + " shape " + shape_string({got_rows, got_cols}) +
                      ", expected " + shape_string({rows, cols}));
  }
}

inline void check_length(const char* op, const char* what, index_t got, index_t expected) {
  if (got != expected) {
    throw shape_error(std::string(op) + ": " + what + " shape " + shape_string({got}) + ", expected " +
                      shape_string({expected}));
  }
}
}  // namespace detail

namespace detail {

/// Rows up to which linear() streams the weight itself instead of calling Eigen's GEMM.
inline constexpr index_t small_batch_rows = 8;

/// True for Eigen expressions whose rows are contiguous in memory (row-major, direct access).
template <class M>
inline constexpr bool is_row_major_direct =
    (int(Eigen::internal::traits<M>::Flags) & Eigen::DirectAccessBit) != 0 && (int(M::Flags) & Eigen::RowMajorBit) != 0;

/// y[i, o] = x[i, :] . w[o, :] + bias[o] for i < n (n <= small_batch_rows): the matrix-vector
/// products of a decode step. Why not Eigen: Eigen's row-major GEMV reached 14-15 GB/s where the
/// memory gives 24-32 (docs/performance.md), Eigen never threads a GEMV, and its GEMM for a
/// few rows packs the whole weight matrix (heap buffers, extra traffic). Here every weight row is
/// read from memory exactly once per call against the n inputs (held in L1), with blocks of 4
/// output rows split across threads. With AVX-512 each row is read in order against all n inputs
/// (detail/stream_rows.hpp: 23 GB/s for a 32000 x 512 float matrix where Eigen's GEMV gave 14);
/// elsewhere 4 rows side by side, two inputs at a time. Rows are `ld*` apart.
template <class Scalar>
void small_batch_linear(const Scalar* x, index_t ldx, index_t n, const Scalar* w, index_t ldw, index_t out, index_t in,
                        const Scalar* bias, Scalar* y, index_t ldy) {
  constexpr index_t R = 4;  // weight rows per block
  const index_t blocks = (out + R - 1) / R;
  const int threads = product_threads(double(n) * double(out) * double(in), double(out) * double(in) * sizeof(Scalar));
#if defined(EIGENFORMER_STREAM_ROWS_AVX512)
  if constexpr (std::is_same_v<Scalar, float>) {  // each weight row read in order (detail/stream_rows.hpp)
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (index_t blk = 0; blk < blocks; ++blk) {
      const index_t o = blk * R, rows = std::min(R, out - o);
      dot_rows_n(n, x, ldx, w + o * ldw, ldw, rows, in, y + o, ldy);
      add_bias_rows(y + o, ldy, n, bias ? bias + o : nullptr, rows);
    }
    return;
  }
#endif
  if (n == 1) {
    // One input: Eigen's row-major GEMV kernel streams faster than the loop below; we only split
    // its rows across threads (Eigen never threads a GEMV).
    const index_t step = (out / threads + 15) / 16 * 16;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (index_t t = 0; t < threads; ++t) {
      const index_t first = std::min(out, t * step), rows = std::min(out, first + step) - first;
      if (rows <= 0) continue;
      auto yt = make_view(y + first, 1, rows);
      yt.noalias() = make_view(x, 1, in) * make_view(w + first * ldw, rows, in, ldw).transpose();
      if (bias) yt += make_view(bias + first, 1, rows);
    }
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
  for (index_t blk = 0; blk < blocks; ++blk) {
    const index_t o = blk * R;
    if (o + R <= out) {
      const Scalar* w0 = w + o * ldw;
      const Scalar* w1 = w0 + ldw;
      const Scalar* w2 = w1 + ldw;
      const Scalar* w3 = w2 + ldw;
      const Scalar b0 = bias ? bias[o] : Scalar(0), b1 = bias ? bias[o + 1] : Scalar(0);
      const Scalar b2 = bias ? bias[o + 2] : Scalar(0), b3 = bias ? bias[o + 3] : Scalar(0);
      index_t i = 0;
      for (; i + 2 <= n; i += 2) {  // two inputs at a time: 8 accumulators, 6 loads per 8 FMAs
        const Scalar* xa = x + i * ldx;
        const Scalar* xb = xa + ldx;
        Scalar a0 = 0, a1 = 0, a2 = 0, a3 = 0, c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : a0, a1, a2, a3, c0, c1, c2, c3)
#endif
        for (index_t k = 0; k < in; ++k) {
          const Scalar u = xa[k], v = xb[k];
          a0 += w0[k] * u;
          a1 += w1[k] * u;
          a2 += w2[k] * u;
          a3 += w3[k] * u;
          c0 += w0[k] * v;
          c1 += w1[k] * v;
          c2 += w2[k] * v;
          c3 += w3[k] * v;
        }
        Scalar* ya = y + i * ldy + o;
        Scalar* yb = ya + ldy;
        ya[0] = a0 + b0, ya[1] = a1 + b1, ya[2] = a2 + b2, ya[3] = a3 + b3;
        yb[0] = c0 + b0, yb[1] = c1 + b1, yb[2] = c2 + b2, yb[3] = c3 + b3;
      }
      for (; i < n; ++i) {
        const Scalar* xi = x + i * ldx;
        Scalar s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : s0, s1, s2, s3)
#endif
        for (index_t k = 0; k < in; ++k) {
          const Scalar v = xi[k];
          s0 += w0[k] * v;
          s1 += w1[k] * v;
          s2 += w2[k] * v;
          s3 += w3[k] * v;
        }
        Scalar* yi = y + i * ldy + o;
        yi[0] = s0 + b0, yi[1] = s1 + b1, yi[2] = s2 + b2, yi[3] = s3 + b3;
      }
    } else {
      for (index_t r = o; r < out; ++r) {
        const Scalar* wr = w + r * ldw;
        for (index_t i = 0; i < n; ++i) {
          const Scalar* xi = x + i * ldx;
          Scalar s = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : s)
#endif
          for (index_t k = 0; k < in; ++k) s += wr[k] * xi[k];
          y[i * ldy + r] = s + (bias ? bias[r] : Scalar(0));
        }
      }
    }
  }
}

}  // namespace detail

/// y = x w^T + b, PyTorch's nn.Linear with the weight in its own [out, in] layout (no copy).
///   x [n, in], w [out, in], bias [out] or empty, y [n, out]; y must not overlap x or w.
/// A few rows (a decode step) go through detail::small_batch_linear, which streams w once and
/// splits it across threads; more rows through Eigen's GEMM, one column block per thread.
template <class X, class W, class Y>
void linear(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<W>& w,
            std::span<const typename X::Scalar> bias, const Eigen::MatrixBase<Y>& y_) {
  using Scalar = typename X::Scalar;
  Y& y = detail::writable(y_);
  if (x.cols() != w.cols()) {
    throw shape_error("linear: input shape " + shape_string({x.rows(), x.cols()}) + " does not match weight " +
                      shape_string({w.rows(), w.cols()}) + ", expected input [n, " + std::to_string(w.cols()) + "]");
  }
  detail::check_dims("linear", "output", y.rows(), y.cols(), x.rows(), w.rows());
  if (!bias.empty()) detail::check_length("linear", "bias", static_cast<index_t>(bias.size()), w.rows());
  if constexpr (detail::is_row_major_direct<X> && detail::is_row_major_direct<W> && detail::is_row_major_direct<Y>) {
    if (x.rows() <= detail::small_batch_rows && x.innerStride() == 1 && w.innerStride() == 1 && y.innerStride() == 1) {
      if (x.rows() == 0) return;
      detail::small_batch_linear<Scalar>(x.derived().data(), x.outerStride(), x.rows(), w.derived().data(), w.outerStride(),
                                         w.rows(), w.cols(), bias.empty() ? nullptr : bias.data(), y.data(), y.outerStride());
      return;
    }
  }
  // Larger products: Eigen's GEMM, split by output columns across threads here rather than by
  // Eigen (see threads.hpp: a product too small to give each thread ~2 M multiply-adds stays on
  // one thread, which matters when another process holds a core).
  const double work = double(x.rows()) * double(w.rows()) * double(w.cols());
  const index_t chunks = std::min<index_t>(num_threads(), std::max<index_t>(1, static_cast<index_t>(work / parallel_work_threshold)));
  if (chunks <= 1) {
    y.noalias() = x * w.transpose();
  } else {
    const index_t cols = w.rows(), step = (cols / chunks + 15) / 16 * 16;  // whole cache lines per chunk
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(chunks))
#endif
    for (index_t c = 0; c < chunks; ++c) {
      const index_t first = std::min(cols, c * step), n = std::min(cols, first + step) - first;
      if (n > 0) y.middleCols(first, n).noalias() = x * w.middleRows(first, n).transpose();
    }
  }
  if (!bias.empty()) {
    const auto b = const_vector_view<Scalar>(bias.data(), w.rows()).transpose();
    y.rowwise() += b;
  }
}

/// In place, per row: x = softmax(x) over the first `valid_cols` columns; later columns become 0.
/// Numerically stable (subtracts the row maximum). A row whose valid entries are all -inf becomes
/// all zeros rather than NaN. valid_cols = -1 means every column.
template <class X>
void softmax_rows(const Eigen::MatrixBase<X>& x_, index_t valid_cols = -1) {
  X& x = detail::writable(x_);
  using Scalar = typename X::Scalar;
  if (valid_cols < 0) valid_cols = x.cols();
  if (valid_cols > x.cols()) {
    throw shape_error("softmax_rows: valid length " + std::to_string(valid_cols) + " exceeds row length " +
                      std::to_string(x.cols()));
  }
  for (index_t i = 0; i < x.rows(); ++i) {
    auto row = x.row(i).head(valid_cols);
    const Scalar m = valid_cols > 0 ? row.maxCoeff() : Scalar(0);
    if (valid_cols == 0 || m == -std::numeric_limits<Scalar>::infinity()) {
      row.setZero();
    } else {
      row = (row.array() - m).exp().matrix();
      row *= Scalar(1) / row.sum();
    }
    x.row(i).tail(x.cols() - valid_cols).setZero();
  }
}

/// In place, per row: x = softmax(x + mask), mask [rows, cols] additive (0 or -inf, or any bias).
template <class X, class M>
void softmax_rows_masked(const Eigen::MatrixBase<X>& x_, const Eigen::MatrixBase<M>& mask) {
  X& x = detail::writable(x_);
  detail::check_dims("softmax_rows_masked", "mask", mask.rows(), mask.cols(), x.rows(), x.cols());
  x += mask;
  softmax_rows(x);
}

/// In place, per row: x = log_softmax(x) over the first `valid_cols` columns; later columns become 0.
/// Computed as x - max - log(sum(exp(x - max))), so it never takes the log of an underflowed 0.
template <class X>
void log_softmax_rows(const Eigen::MatrixBase<X>& x_, index_t valid_cols = -1) {
  X& x = detail::writable(x_);
  using Scalar = typename X::Scalar;
  if (valid_cols < 0) valid_cols = x.cols();
  if (valid_cols > x.cols()) {
    throw shape_error("log_softmax_rows: valid length " + std::to_string(valid_cols) + " exceeds row length " +
                      std::to_string(x.cols()));
  }
  for (index_t i = 0; i < x.rows(); ++i) {
    auto row = x.row(i).head(valid_cols);
    if (valid_cols > 0) {
      const Scalar m = row.maxCoeff();
      if (m == -std::numeric_limits<Scalar>::infinity()) {
        row.setConstant(-std::numeric_limits<Scalar>::infinity());
      } else {
        row.array() -= m;  // separately: m + log_sum would round away log_sum when |m| is large
        row.array() -= std::log(row.array().exp().sum());
      }
    }
    x.row(i).tail(x.cols() - valid_cols).setZero();
  }
}

/// In place, per row: x = log_softmax(x + mask), mask [rows, cols] additive.
template <class X, class M>
void log_softmax_rows_masked(const Eigen::MatrixBase<X>& x_, const Eigen::MatrixBase<M>& mask) {
  X& x = detail::writable(x_);
  detail::check_dims("log_softmax_rows_masked", "mask", mask.rows(), mask.cols(), x.rows(), x.cols());
  x += mask;
  log_softmax_rows(x);
}

/// y = LayerNorm(x) per row: (x - mean) / sqrt(var + eps) * gamma + beta, with the biased
/// variance, as torch.nn.LayerNorm. x, y [n, d], gamma and beta [d]; y may be x (in place).
template <class X, class Y>
void layer_norm(const Eigen::MatrixBase<X>& x, std::span<const typename X::Scalar> gamma,
                std::span<const typename X::Scalar> beta, typename X::Scalar eps, const Eigen::MatrixBase<Y>& y_) {
  using Scalar = typename X::Scalar;
  Y& y = detail::writable(y_);
  const index_t d = x.cols();
  detail::check_dims("layer_norm", "output", y.rows(), y.cols(), x.rows(), d);
  detail::check_length("layer_norm", "weight", static_cast<index_t>(gamma.size()), d);
  detail::check_length("layer_norm", "bias", static_cast<index_t>(beta.size()), d);
  const auto g = const_vector_view<Scalar>(gamma.data(), d).transpose().array();
  const auto b = const_vector_view<Scalar>(beta.data(), d).transpose().array();
  for (index_t i = 0; i < x.rows(); ++i) {
    const Scalar mean = x.row(i).mean();
    const Scalar var = (x.row(i).array() - mean).square().mean();  // two passes: no cancellation
    const Scalar inv = Scalar(1) / std::sqrt(var + eps);
    y.row(i) = ((x.row(i).array() - mean) * inv * g + b).matrix();
  }
}

/// y = RMSNorm(x) per row: x / sqrt(mean(x^2) + eps) * weight, transformers' LlamaRMSNorm (and
/// T5LayerNorm): no mean subtracted, no bias. x, y [n, d], weight [d]; y may be x (in place).
/// Computed in LlamaRMSNorm's order, (x * rsqrt(mean(x^2) + eps)) * weight: normalising first and
/// scaling last rounds like it does; eps inside the square root. The mean of squares is taken in
/// Scalar, as LlamaRMSNorm takes it in float32; in double it stays double (LlamaRMSNorm itself
/// casts float64 input to float32, tests/fixtures/blocks/README.md).
template <class X, class Y>
void rms_norm(const Eigen::MatrixBase<X>& x, std::span<const typename X::Scalar> weight, typename X::Scalar eps,
              const Eigen::MatrixBase<Y>& y_) {
  using Scalar = typename X::Scalar;
  Y& y = detail::writable(y_);
  const index_t d = x.cols();
  detail::check_dims("rms_norm", "output", y.rows(), y.cols(), x.rows(), d);
  detail::check_length("rms_norm", "weight", static_cast<index_t>(weight.size()), d);
  if (d == 0) return;
  const auto w = const_vector_view<Scalar>(weight.data(), d).transpose().array();
  for (index_t i = 0; i < x.rows(); ++i) {
    const Scalar mean_square = x.row(i).squaredNorm() / static_cast<Scalar>(d);
    const Scalar inv = Scalar(1) / std::sqrt(mean_square + eps);
    y.row(i) = ((x.row(i).array() * inv) * w).matrix();
  }
}

/// In place: x = max(x, 0).
template <class X>
void relu(const Eigen::MatrixBase<X>& x_) {
  X& x = detail::writable(x_);
  x = x.cwiseMax(typename X::Scalar(0));
}

/// In place: x = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), the exact GELU of
/// torch.nn.functional.gelu (approximate='none'); Eigen's erf is vectorised.
template <class X>
void gelu(const Eigen::MatrixBase<X>& x_) {
  X& x = detail::writable(x_);
  using Scalar = typename X::Scalar;
  const Scalar r = Scalar(0.70710678118654752440084436210484903928483593768847);
  x = (Scalar(0.5) * x.array() * (Scalar(1) + (x.array() * r).erf())).matrix();
}

/// In place: x = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), GELU's tanh approximation:
/// transformers' "gelu_new" / "gelu_pytorch_tanh", torch's gelu(approximate='tanh').
template <class X>
void gelu_tanh(const Eigen::MatrixBase<X>& x_) {
  X& x = detail::writable(x_);
  using Scalar = typename X::Scalar;
  const Scalar k = Scalar(0.79788456080286535587989211986876373695171726232986);  // sqrt(2 / pi)
  x = (Scalar(0.5) * x.array() * (Scalar(1) + (k * (x.array() + Scalar(0.044715) * x.array().cube())).tanh())).matrix();
}

/// In place: x = x sigmoid(x) = x / (1 + exp(-x)): SiLU, transformers' "silu" and "swish".
template <class X>
void silu(const Eigen::MatrixBase<X>& x_) {
  X& x = detail::writable(x_);
  using Scalar = typename X::Scalar;
  x = (x.array() / (Scalar(1) + (-x.array()).exp())).matrix();
}

/// In place: g = silu(g) * u = g / (1 + exp(-g)) * u, the gate of a SwiGLU feed-forward block
/// (transformers' LlamaMLP: act_fn(gate_proj(x)) * up_proj(x), act_fn = silu). g and u [n, d_ff];
/// they may be column blocks of one buffer (the gate and up projections side by side).
template <class G, class U>
void silu_mul(const Eigen::MatrixBase<G>& g_, const Eigen::MatrixBase<U>& u) {
  G& g = detail::writable(g_);
  using Scalar = typename G::Scalar;
  detail::check_dims("silu_mul", "up", u.rows(), u.cols(), g.rows(), g.cols());
  // silu first, then the product, in LlamaMLP's order (one rounding each, as torch).
  g = ((g.array() / (Scalar(1) + (-g.array()).exp())) * u.array()).matrix();
}

/// out[i] = table[ids[i]] * scale: the embedding lookup. table [vocab, d], out [ids.size(), d].
/// Throws invalid_argument naming `what` and the position of an id outside [0, vocab).
template <class T, class Y>
void embedding(const Eigen::MatrixBase<T>& table, std::span<const token_id> ids, typename T::Scalar scale,
               const Eigen::MatrixBase<Y>& out_, const char* what = "embedding") {
  Y& out = detail::writable(out_);
  detail::check_dims(what, "output", out.rows(), out.cols(), static_cast<index_t>(ids.size()), table.cols());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows()) {
      throw invalid_argument(std::string(what) + ": token id " + std::to_string(ids[i]) + " at position " +
                             std::to_string(i) + ", expected 0 to " + std::to_string(table.rows() - 1));
    }
    out.row(static_cast<index_t>(i)) = table.row(ids[i]) * scale;
  }
}

/// y += x: the residual connection. x and y [n, d].
template <class Y, class X>
void residual_add(const Eigen::MatrixBase<Y>& y_, const Eigen::MatrixBase<X>& x) {
  Y& y = detail::writable(y_);
  detail::check_dims("residual_add", "input", x.rows(), x.cols(), y.rows(), y.cols());
  y += x;
}

}  // namespace eigenformer
