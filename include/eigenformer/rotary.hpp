// eigenformer/rotary.hpp: rotary position embeddings (RoPE, Su et al. 2021) as transformers'
// Llama applies them (LlamaRotaryEmbedding + apply_rotary_pos_emb, transformers 4.46).
//
// Each head's head_dim values pair up in halves (rotate_half), not interleaved: for i < h =
// head_dim / 2 the pair (x[i], x[i + h]) turns by the angle a = p * inv_freq[i] of the row's
// position p:
//   x'[i]     = x[i] cos a - x[i + h] sin a
//   x'[i + h] = x[i + h] cos a + x[i] sin a
//   inv_freq[i] = 1 / theta^(2i / head_dim) / factor      (rope_theta; rope_scaling "linear")
// Linear scaling divides the positions by `factor`; like transformers we divide inv_freq instead.
//
// Angles in float32, whatever Scalar: transformers computes inv_freq, p * inv_freq and cos/sin in
// float32 even when the model runs in float64 (its forward() casts to float; transformers PR 29285),
// so float32 angles are what transformers runs a Llama model with. We round inv_freq and the angle as
// it does, then take cos/sin of that float angle in double and store them as Scalar: against
// transformers this is within ~1 float ulp, where exact (double) angles differ by ~1e-4 at position
// 4000 (tests/fixtures/blocks/README.md has the measurements).
#pragma once

#include <charconv>
#include <cmath>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "error.hpp"
#include "tensor.hpp"

namespace eigenformer {

/// What a rotary_embedding is built from (a Llama config.json's names in comments).
struct rotary_parameters {
  index_t head_dim = 0;          // hidden_size / num_attention_heads (or head_dim): even, > 0
  double theta = 10000.0;        // rope_theta: > 0, finite
  double scaling_factor = 1.0;   // rope_scaling {"rope_type": "linear", "factor": f}; 1 = none; > 0
  index_t max_positions = 2048;  // max_position_embeddings: rows of the table, 1 to 2^24
  /// true: inv_freq and the angles in float32, as transformers computes them (the default);
  /// false: in double throughout (a true float64 computation, e.g. for a double model).
  bool float32_angles = true;
};

/// A precomputed cos/sin table [max_positions, head_dim / 2] and the rotation it applies in place.
/// The table holds max_positions * head_dim Scalars, built once: 2 MiB for Llama 2 in float (4096
/// positions, head_dim 128), 64 MiB at 131072 positions.
template <class Scalar>
class rotary_embedding {
 public:
  /// Largest max_positions: float32 positions (as transformers uses) are exact up to 2^24.
  static constexpr index_t position_limit = index_t(1) << 24;

  explicit rotary_embedding(const rotary_parameters& p) : params_(p) {
    validate(p);
    const index_t h = p.head_dim / 2;
    cos_.resize({p.max_positions, h});
    sin_.resize({p.max_positions, h});
    // inv_freq as transformers' _compute_default_rope_parameters in float32: the exponent
    // 2i / head_dim divided in float, theta^e rounded to float, its reciprocal in float.
    std::vector<float> inv_freq(static_cast<std::size_t>(h));
    const float theta = static_cast<float>(p.theta), factor = static_cast<float>(p.scaling_factor);
    for (index_t i = 0; i < h; ++i) {
      const float e = static_cast<float>(2 * i) / static_cast<float>(p.head_dim);
      const float power = static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(e)));
      float f = 1.0f / power;
      if (p.scaling_factor != 1.0) f = f / factor;  // _compute_linear_scaling_rope_parameters
      inv_freq[static_cast<std::size_t>(i)] = f;
    }
    if (!p.float32_angles) {
      for (index_t pos = 0; pos < p.max_positions; ++pos) {
        for (index_t i = 0; i < h; ++i) {
          const double f = 1.0 / std::pow(p.theta, static_cast<double>(2 * i) / static_cast<double>(p.head_dim)) / p.scaling_factor;
          const double angle = static_cast<double>(pos) * f;
          cos_.data()[pos * h + i] = static_cast<Scalar>(std::cos(angle));
          sin_.data()[pos * h + i] = static_cast<Scalar>(std::sin(angle));
        }
      }
      return;
    }
    for (index_t pos = 0; pos < p.max_positions; ++pos) {
      Scalar* c = cos_.data() + pos * h;  // row pos of [max_positions, h]
      Scalar* s = sin_.data() + pos * h;
      const float fp = static_cast<float>(pos);
      for (index_t i = 0; i < h; ++i) {
        const float angle = fp * inv_freq[static_cast<std::size_t>(i)];  // one float rounding, as torch's matmul
        c[i] = static_cast<Scalar>(std::cos(static_cast<double>(angle)));
        s[i] = static_cast<Scalar>(std::sin(static_cast<double>(angle)));
      }
    }
  }

  const rotary_parameters& parameters() const noexcept { return params_; }
  index_t head_dim() const noexcept { return params_.head_dim; }
  index_t max_positions() const noexcept { return params_.max_positions; }
  /// cos and sin of each position's angles, [max_positions, head_dim / 2] (tests, tools).
  const tensor<Scalar>& cos_table() const noexcept { return cos_; }
  const tensor<Scalar>& sin_table() const noexcept { return sin_; }

  /// Rotates x [rows, heads * head_dim] (the Q or K projection, heads side by side) in place, row r
  /// at position positions[r]: packed sequences pass each row's own position. Allocates nothing.
  /// Throws shape_error if x's width is not a multiple of head_dim or positions.size() != rows,
  /// invalid_argument naming the row if a position is outside [0, max_positions).
  template <class X>
  void apply(const Eigen::MatrixBase<X>& x_, std::span<const index_t> positions) const {
    static_assert(std::is_same_v<typename X::Scalar, Scalar>, "rotary_embedding: x must hold Scalar");
    X& x = const_cast<Eigen::MatrixBase<X>&>(x_).derived();
    const index_t d = params_.head_dim, h = d / 2;
    if (x.cols() % d != 0) {
      throw shape_error("rotary_embedding: input shape " + shape_string({x.rows(), x.cols()}) +
                        ", expected [rows, heads * " + std::to_string(d) + "]");
    }
    if (static_cast<index_t>(positions.size()) != x.rows()) {
      throw shape_error("rotary_embedding: positions shape " + shape_string({static_cast<index_t>(positions.size())}) +
                        ", expected [" + std::to_string(x.rows()) + "] (one per row)");
    }
    for (std::size_t r = 0; r < positions.size(); ++r) {  // all checked before any row changes
      if (positions[r] < 0 || positions[r] >= params_.max_positions) {
        throw invalid_argument("rotary_embedding: position", std::to_string(positions[r]) + " at row " + std::to_string(r) +
                                                                 ", expected 0 to " + std::to_string(params_.max_positions - 1));
      }
    }
    const index_t heads = x.cols() / d;
    for (index_t r = 0; r < x.rows(); ++r) {
      const Scalar* c = cos_.data() + positions[static_cast<std::size_t>(r)] * h;  // [h]
      const Scalar* s = sin_.data() + positions[static_cast<std::size_t>(r)] * h;  // [h]
      for (index_t head = 0; head < heads; ++head) {
        const index_t base = head * d;
        for (index_t i = 0; i < h; ++i) {
          const Scalar a = x.coeff(r, base + i), b = x.coeff(r, base + h + i);
          // q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q[h:], q[:h])
          x.coeffRef(r, base + i) = a * c[i] - b * s[i];
          x.coeffRef(r, base + h + i) = b * c[i] + a * s[i];
        }
      }
    }
  }

 private:
  /// "10000", "0.5", "nan": the shortest text that reads back as v.
  static std::string number(double v) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  }

  static void validate(const rotary_parameters& p) {
    if (p.head_dim <= 0 || p.head_dim % 2 != 0) {
      throw invalid_argument("rotary_embedding: head_dim", std::to_string(p.head_dim) + ", expected an even number > 0");
    }
    if (!std::isfinite(p.theta) || !(p.theta > 0)) {
      throw invalid_argument("rotary_embedding: theta", number(p.theta) + ", expected a finite value > 0");
    }
    if (!std::isfinite(p.scaling_factor) || !(p.scaling_factor > 0)) {
      throw invalid_argument("rotary_embedding: scaling_factor",
                             number(p.scaling_factor) + ", expected a finite value > 0");
    }
    if (p.max_positions <= 0 || p.max_positions > position_limit) {
      throw invalid_argument("rotary_embedding: max_positions",
                             std::to_string(p.max_positions) + ", expected 1 to " + std::to_string(position_limit));
    }
  }

  rotary_parameters params_;
  tensor<Scalar> cos_;  // [max_positions, head_dim / 2]
  tensor<Scalar> sin_;  // [max_positions, head_dim / 2]
};

}  // namespace eigenformer
