// eigenformer/packed_weights.hpp: weight matrices held in a reduced type (bfloat16, float16, int8)
// and multiplied without widening the whole matrix.
//
// Why: a decode step reads every weight once per token, so its time is the bytes of the weights over
// the read bandwidth. 16-bit weights halve those bytes, int8 quarters them. Activations, biases, norms,
// softmax and the KV cache stay in the model's Scalar (float or double); only the [out, in] matrices of
// linear layers change, converted once at load (load_options::weights, `--weights` in the tool).
//
//   bfloat16, float16: each weight rounded to nearest even; products accumulated in Scalar.
//   int8: symmetric per output row, as CTranslate2 quantises: scale_w[o] = 127 / max_k |W[o, k]|,
//         Q[o, k] = round(W[o, k] scale_w[o]) in [-127, 127]. Activations are quantised the same way per
//         input row at run time (scale_x[i] = 127 / max_k |x[i, k]|), the products accumulated exactly in
//         int32, and y[i, o] = acc / (scale_x[i] scale_w[o]) + b[o]. A row whose input holds a NaN or an
//         infinity gives NaN outputs (quantising it would hide it).
//
// Layout: row-major [out, ld] with ld >= in padded with zeros to whole 64-byte lines, so that every row
// starts on a cache line and the int8 kernel runs without tails. Storage is tensor<> storage: 64-byte
// aligned, huge-page aligned and advised from 4 MiB (detail/memory.hpp).
//
// Kernels: a few input rows (a decode step: n <= detail::small_batch_rows) stream every weight row once
// against all n inputs, split across threads by blocks of 4 rows. With AVX-512 each row is read in order
// (reading 4 rows side by side halved the rate memory delivered them: detail/stream_rows.hpp): 16-bit
// rows widened in registers, int8 rows multiplied by vpdpbusd (AVX512-VNNI). Elsewhere 4 rows side by
// side: 16-bit rows widened in L1-sized chunks, int8 rows multiplied as integers (AVX2: vpsignb +
// vpmaddubsw + vpmaddwd; otherwise a portable loop the compiler vectorises). More rows (an encoder, a
// prompt): int8 with AVX512-VNNI in integers, inputs packed in groups of 16 against weights broadcast
// 4 bytes at a time (64 products per instruction, four times float FMA's rate, no horizontal sums);
// otherwise tiles of rows widened into a per-thread buffer for Eigen's GEMM (int8: the quantised
// integers as float, exact products).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "detail/half.hpp"
#include "detail/stream_rows.hpp"
#include "error.hpp"
#include "ops.hpp"
#include "tensor.hpp"
#include "threads.hpp"

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace eigenformer {

/// How the weight matrices of linear layers are held and multiplied (cli.md: `--weights`).
enum class weight_type { float32, bfloat16, float16, int8 };

inline const char* weight_type_name(weight_type t) noexcept {
  switch (t) {
    case weight_type::float32: return "float32";
    case weight_type::bfloat16: return "bfloat16";
    case weight_type::float16: return "float16";
    case weight_type::int8: return "int8";
  }
  return "?";
}

/// Bytes per weight of type `t` (the scales of int8 rows not counted).
inline std::size_t weight_type_size(weight_type t) noexcept {
  return t == weight_type::float32 ? 4 : t == weight_type::int8 ? 1 : 2;
}

/// "float32", "bfloat16", "float16" or "int8"; anything else throws invalid_argument naming `option`.
inline weight_type parse_weight_type(std::string_view text, const std::string& option = "weights") {
  for (const weight_type t : {weight_type::float32, weight_type::bfloat16, weight_type::float16, weight_type::int8}) {
    if (text == weight_type_name(t)) return t;
  }
  const std::string shown(text.substr(0, 32));
  throw invalid_argument(option, "'" + shown + (text.size() > 32 ? "...'" : "'") +
                                     ", expected float32, bfloat16, float16 or int8");
}

namespace detail {

/// Weight rows widened per GEMM tile (more than 8 inputs): an equal share of the rows per thread, in
/// whole 16-row steps, at most 256 K elements (1 MiB of float) so the tile stays in L2: small tiles
/// leave Eigen's GEMM mostly packing and starting (measured: 64-row tiles halved a G2P model's batched
/// decoding).
inline index_t packed_tile_rows(index_t count, index_t cols, int threads) {
  const index_t share = (count + threads - 1) / threads;
  const index_t cap = std::max<index_t>(16, (index_t{1} << 18) / std::max<index_t>(cols, 1) / 16 * 16);
  return std::max<index_t>(16, std::min(cap, (share + 15) / 16 * 16));
}
inline constexpr index_t widen_chunk = 512;       // 16-bit weights widened per row and pass (in L1)

/// Row stride of packed weights: `in` rounded up to whole 64-byte lines of `bytes`-sized elements.
inline index_t packed_stride(index_t in, std::size_t bytes) {
  const index_t per_line = static_cast<index_t>(cache_line / bytes);
  return (in + per_line - 1) / per_line * per_line;
}

/// dst[k] = the value of 16-bit weight src[k], k < n.
template <class Scalar>
inline void widen_bfloat16(const std::uint16_t* src, Scalar* dst, index_t n) noexcept {
  index_t k = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<Scalar, float>) {  // zero-extend to 32 bits, shift into the high half
    for (; k + 8 <= n; k += 8) {
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
      _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  }
#endif
  for (; k < n; ++k) dst[k] = static_cast<Scalar>(std::bit_cast<float>(static_cast<std::uint32_t>(src[k]) << 16));
}

template <class Scalar>
inline void widen_float16(const std::uint16_t* src, Scalar* dst, index_t n) noexcept {
  index_t k = 0;
#if defined(__F16C__) && defined(__AVX__)
  if constexpr (std::is_same_v<Scalar, float>) {
    for (; k + 8 <= n; k += 8) {
      _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
    }
  }
#endif
  for (; k < n; ++k) dst[k] = static_cast<Scalar>(half_to_float(src[k]));
}

/// Quantises x [in] to q [ld] (zeros past in) with scale 127 / max|x|; returns the scale, 0 for an
/// all-zero row, NaN when x holds a NaN or an infinity.
template <class Scalar>
inline Scalar quantize_row(const Scalar* x, index_t in, index_t ld, std::int8_t* q) noexcept {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<Scalar, float>) {  // the same arithmetic, 16 lanes at a time
    const index_t full = in / 16 * 16;
    const auto mask_at = [&](index_t k) {
      return k < full ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (in - full)) - 1u);
    };
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (index_t k = 0; k < in; k += 16) {
      const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask_at(k), x + k));
      bad |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(std::numeric_limits<float>::max()), _CMP_NLE_UQ);  // NaN, inf
      vmax = _mm512_max_ps(vmax, a);
    }
    if (bad) return std::numeric_limits<float>::quiet_NaN();
    const float amax = _mm512_reduce_max_ps(vmax);
    std::memset(q, 0, static_cast<std::size_t>(ld));
    if (amax == 0.0f) return 0.0f;
    const float scale = 127.0f / amax;
    const __m512 vs = _mm512_set1_ps(scale);
    for (index_t k = 0; k < in; k += 16) {  // cvtps rounds to nearest even, as nearbyint does
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mask_at(k), x + k), vs));
      const __m512i c = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
      _mm512_mask_cvtsepi32_storeu_epi8(q + k, mask_at(k), c);
    }
    return scale;
  }
#endif
  Scalar amax = 0;
  bool finite = true;
  for (index_t k = 0; k < in; ++k) {
    const Scalar a = std::abs(x[k]);
    finite = finite && (a <= std::numeric_limits<Scalar>::max());  // false for NaN and infinity
    amax = std::max(amax, a);
  }
  if (!finite) return std::numeric_limits<Scalar>::quiet_NaN();
  if (amax == Scalar(0)) {
    std::memset(q, 0, static_cast<std::size_t>(ld));
    return Scalar(0);
  }
  const Scalar scale = Scalar(127) / amax;
  for (index_t k = 0; k < in; ++k) {
    const Scalar v = std::nearbyint(x[k] * scale);  // |v| <= 127: |x| <= amax
    q[k] = static_cast<std::int8_t>(std::clamp(v, Scalar(-127), Scalar(127)));
  }
  std::memset(q + in, 0, static_cast<std::size_t>(ld - in));
  return scale;
}

/// sum_k a[k] b[k] over k < ld (a multiple of 64), exactly, for 4 rows b0..b3 against one a.
inline void dot4_int8(const std::int8_t* a, const std::int8_t* b0, const std::int8_t* b1, const std::int8_t* b2,
                      const std::int8_t* b3, index_t ld, std::int32_t* out) noexcept {
#if defined(__AVX2__)
  // vpmaddubsw multiplies unsigned by signed bytes: feed it |a| and b with a's sign. Pairs of products
  // are at most 2 x 127 x 127 = 32258 (|a| <= 127; b >= -127 by construction), so the 16-bit sums
  // never saturate; vpmaddwd by ones widens them to int32.
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  for (index_t k = 0; k < ld; k += 32) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k));
    const __m256i ua = _mm256_sign_epi8(va, va);
    const auto term = [&](const std::int8_t* b) {
      const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k));
      return _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(vb, va)), ones);
    };
    s0 = _mm256_add_epi32(s0, term(b0));
    s1 = _mm256_add_epi32(s1, term(b1));
    s2 = _mm256_add_epi32(s2, term(b2));
    s3 = _mm256_add_epi32(s3, term(b3));
  }
  // Horizontal sums of the four: two hadd rounds give [s0 s1 s2 s3] per 128-bit half.
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
  const __m128i r = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), r);
#else
  std::int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : s0, s1, s2, s3)
#endif
  for (index_t k = 0; k < ld; ++k) {
    const std::int32_t v = a[k];
    s0 += v * b0[k];
    s1 += v * b1[k];
    s2 += v * b2[k];
    s3 += v * b3[k];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
#endif
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define EIGENFORMER_INT8_VNNI 1

/// The four int32 sums of s0..s3: per 128-bit lane a transposing add leaves [s0 s1 s2 s3]'s partial
/// sums of that lane, then the four lanes are added.
inline __m128i sum4_epi32(__m512i s0, __m512i s1, __m512i s2, __m512i s3) noexcept {
  const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(s0, s1), _mm512_unpackhi_epi32(s0, s1));
  const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(s2, s3), _mm512_unpackhi_epi32(s2, s3));
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/// acc[i][r] = sum_k a[i][k] b[r][k] over k < ld (a multiple of 64), exactly, for NA inputs a (rows lda
/// apart) and `rows` <= 4 weight rows b, as vpdpbusd computes it: a is unsigned, the int8 input plus
/// 128 (the caller takes the extra 128 sum_k b[r][k] off). Each weight row is read start to end before
/// the next: reading 4 rows side by side, as a block of 4 x 64 bytes per step, streamed 9-12 GB/s from
/// memory on this machine where reading in order streamed 21-27 (one thread, rows of 512 and 2048 bytes).
template <int NA>
inline void dot_rows_vnni(const std::uint8_t* a, index_t lda, const std::int8_t* b, index_t ld, index_t rows,
                          std::int32_t (*acc)[4]) noexcept {
  const __m512i zero = _mm512_setzero_si512();
  for (index_t r = 0; r < rows; ++r) {
    const std::int8_t* w = b + r * ld;
    __m512i s[NA];
    for (int i = 0; i < NA; ++i) s[i] = zero;
    for (index_t k = 0; k < ld; k += 64) {
      if constexpr (NA > 1) prefetch_ahead(w + k);
      const __m512i vb = _mm512_loadu_si512(w + k);
      for (int i = 0; i < NA; ++i) s[i] = _mm512_dpbusd_epi32(s[i], _mm512_loadu_si512(a + i * lda + k), vb);
    }
    for (int i0 = 0; i0 < NA; i0 += 4) {
      alignas(16) std::int32_t t[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(t),
                      sum4_epi32(s[i0], i0 + 1 < NA ? s[i0 + 1] : zero, i0 + 2 < NA ? s[i0 + 2] : zero,
                                 i0 + 3 < NA ? s[i0 + 3] : zero));
      for (int j = 0; j < 4 && i0 + j < NA; ++j) acc[i0 + j][r] = t[j];
    }
  }
}

/// Inputs per packed group of the int8 GEMM (one zmm register of int32 sums), and per tile (4 groups).
inline constexpr index_t vnni_group = 16;
inline constexpr index_t vnni_tile_inputs = 4 * vnni_group;

/// Packs `count` <= 16 unsigned input rows a [count, ld] (rows ld apart, ld a multiple of 4) as one
/// group out [ld / 4][16][4]: at each step of 4 columns, 4 bytes of every input side by side, so that
/// one 64-byte load feeds vpdpbusd 16 inputs. Inputs past `count` are zeros (their sums are junk and
/// never stored).
inline void pack_vnni_group(const std::uint8_t* a, index_t ld, index_t count, std::uint8_t* out) noexcept {
  if (count < vnni_group) std::memset(out, 0, static_cast<std::size_t>(vnni_group * ld));
  for (index_t t = 0; t < count; ++t) {
    const std::uint8_t* row = a + t * ld;
    for (index_t k = 0; k < ld; k += 4) std::memcpy(out + k * vnni_group + 4 * t, row + k, 4);
  }
}

/// acc[r * 64 + 16 m + t] = sum_k a_m[t][k] w[r][k] over k < ld, exactly, for MT packed groups a_m
/// (pack_vnni_group; group m at a + 16 m ld) of 16 unsigned inputs and NO int8 weight rows w[r]
/// (natural layout, 4 bytes at a time broadcast to every lane): the GEMM of prompts and encoders.
/// Each accumulator holds 16 inputs of one output, so no horizontal sums; with MT = 4 and NO = 6, 24
/// accumulators take 10 loads per 24 vpdpbusd. 140-190 GMAC/s on one Zen 4 core against 47-64 for
/// the 4 rows x 4 inputs block of horizontal dot products it replaced (1024 inputs, 2048 x 512 and
/// 512 x 2048 weights; standalone test against a plain loop, equal sums).
template <int MT, int NO>
  requires(MT >= 1 && MT <= 4)
inline void gemm_tile_vnni(const std::uint8_t* a, index_t ld, const std::int8_t* const* w,
                           std::int32_t* acc) noexcept {
  __m512i s[NO][MT];
  for (int r = 0; r < NO; ++r) {
    for (int m = 0; m < MT; ++m) s[r][m] = _mm512_setzero_si512();
  }
  for (index_t k = 0; k < ld; k += 4) {
    __m512i va[MT];
    for (int m = 0; m < MT; ++m) va[m] = _mm512_loadu_si512(a + m * vnni_group * ld + k * vnni_group);
    for (int r = 0; r < NO; ++r) {
      std::int32_t w4;
      std::memcpy(&w4, w[r] + k, 4);
      const __m512i vb = _mm512_set1_epi32(w4);
      for (int m = 0; m < MT; ++m) s[r][m] = _mm512_dpbusd_epi32(s[r][m], va[m], vb);
    }
  }
  for (int r = 0; r < NO; ++r) {
    for (int m = 0; m < MT; ++m) _mm512_storeu_si512(acc + r * vnni_tile_inputs + m * vnni_group, s[r][m]);
  }
}
#endif

/// Per-thread scratch of at least `n` elements (64-byte aligned), grown and never shrunk: after the
/// first call of a given size a decode step allocates nothing. `Tag` keeps apart buffers that are
/// live at the same time on one thread.
template <class T, int Tag>
T* thread_scratch(index_t n) {
  thread_local tensor<T> buffer;
  if (buffer.size() < n) buffer.resize({n});
  return buffer.data();
}

}  // namespace detail

/// A weight matrix W [rows, cols] (PyTorch's [out, in]) in a reduced weight_type, applied as
/// y [n, rows] = x [n, cols] W^T + b. Copyable, movable; empty when default-constructed.
template <class Scalar>
class packed_matrix {
 public:
  packed_matrix() = default;

  /// Converts `w` [rows, cols] to `type` (not float32).
  packed_matrix(const_matrix_view<Scalar> w, weight_type type) : type_(type), rows_(w.rows()), cols_(w.cols()) {
    if (type == weight_type::float32) throw invalid_argument("weights", "packed_matrix holds reduced types only");
    ld_ = detail::packed_stride(cols_, weight_type_size(type));
    if (type == weight_type::int8) {
      // Exact int32 sums need 2 x 127 x 128 x ld < 2^31 (the VNNI kernel's offset inputs): ld <= 65536.
      if (ld_ > 65536) {
        throw invalid_argument("weights", "int8 weights of " + std::to_string(cols_) + " columns: at most 65536");
      }
      q8_.resize({rows_, ld_});
      scale_.resize({rows_});
      sum_.resize({rows_});
      for (index_t o = 0; o < rows_; ++o) {
        std::int8_t* row = q8_.data() + o * ld_;
        const Scalar s = detail::quantize_row(w.data() + o * w.outerStride(), cols_, ld_, row);
        if (std::isnan(s)) throw format_error("int8 weights: row " + std::to_string(o) + " is not finite");
        scale_.data()[o] = s == Scalar(0) ? Scalar(1) : s;  // an all-zero row: any scale
        std::int32_t total = 0;
        for (index_t k = 0; k < cols_; ++k) total += row[k];
        sum_.data()[o] = total;
      }
    } else {
      q16_.resize({rows_, ld_});
      for (index_t o = 0; o < rows_; ++o) {
        std::uint16_t* dst = q16_.data() + o * ld_;
        for (index_t k = 0; k < cols_; ++k) {
          dst[k] = type == weight_type::bfloat16 ? detail::double_to_bfloat16(static_cast<double>(w(o, k)))
                                                 : detail::double_to_half(static_cast<double>(w(o, k)));
        }
        std::fill(dst + cols_, dst + ld_, std::uint16_t{0});
      }
    }
  }

  bool empty() const noexcept { return rows_ == 0 && cols_ == 0; }
  weight_type type() const noexcept { return type_; }
  index_t rows() const noexcept { return rows_; }
  index_t cols() const noexcept { return cols_; }
  /// Bytes held (weights with their padding, int8 scales and row sums).
  std::size_t bytes() const noexcept {
    return static_cast<std::size_t>(q8_.size()) + 2 * static_cast<std::size_t>(q16_.size()) +
           sizeof(Scalar) * static_cast<std::size_t>(scale_.size()) + 4 * static_cast<std::size_t>(sum_.size());
  }

  /// W[o, k] as the kernels use it (the rounded value; for int8 Q[o, k] / scale_w[o]).
  Scalar value(index_t o, index_t k) const noexcept {
    switch (type_) {
      case weight_type::bfloat16: return static_cast<Scalar>(detail::bfloat16_to_float(q16_.data()[o * ld_ + k]));
      case weight_type::float16: return static_cast<Scalar>(detail::half_to_float(q16_.data()[o * ld_ + k]));
      case weight_type::int8: return static_cast<Scalar>(q8_.data()[o * ld_ + k]) / scale_.data()[o];
      case weight_type::float32: break;
    }
    return Scalar(0);
  }
  /// int8 only: Q [rows, ld] and scale_w [rows].
  const std::int8_t* int8_data() const noexcept { return q8_.data(); }
  const Scalar* int8_scales() const noexcept { return scale_.data(); }
  index_t stride() const noexcept { return ld_; }

  /// y [n, count] = x [n, cols] W[first : first + count]^T + bias [count] (bias empty: none).
  /// x rows are ldx apart, y rows ldy apart; y must not overlap x.
  void apply(index_t first, index_t count, const Scalar* x, index_t ldx, index_t n, std::span<const Scalar> bias,
             Scalar* y, index_t ldy) const {
    if (n == 0 || count == 0) return;
    const Scalar* b = bias.empty() ? nullptr : bias.data();
#if defined(EIGENFORMER_INT8_VNNI)
    if (type_ == weight_type::int8) {
      if (n <= detail::small_batch_rows) return rows_int8_vnni(first, count, x, ldx, n, b, y, ldy);
      return gemm_int8_vnni(first, count, x, ldx, n, b, y, ldy);
    }
#endif
    if (n <= detail::small_batch_rows) {
      if (type_ == weight_type::int8) {
        few_rows_int8(first, count, x, ldx, n, b, y, ldy);
      } else {
        few_rows_16(first, count, x, ldx, n, b, y, ldy);
      }
    } else {
      many_rows(first, count, x, ldx, n, b, y, ldy);
    }
  }

 private:
  void widen(const std::uint16_t* src, Scalar* dst, index_t n) const noexcept {
    if (type_ == weight_type::bfloat16) {
      detail::widen_bfloat16(src, dst, n);
    } else {
      detail::widen_float16(src, dst, n);
    }
  }

  int threads_for(index_t n, index_t count) const {
    const double bytes_per_weight = type_ == weight_type::int8 ? 1.0 : 2.0;
    return product_threads(double(n) * double(count) * double(cols_), double(count) * double(cols_) * bytes_per_weight);
  }

  // 16-bit weights, n <= 8 inputs: per block of 4 rows, chunks of widen_chunk columns are widened
  // into an L1 buffer and multiplied against every input; each weight is read from memory once.
  void few_rows_16(index_t first, index_t count, const Scalar* x, index_t ldx, index_t n, const Scalar* bias, Scalar* y,
                   index_t ldy) const {
    constexpr index_t R = 4;
    const index_t blocks = (count + R - 1) / R;
    const int threads = threads_for(n, count);
#if defined(EIGENFORMER_STREAM_ROWS_AVX512)
    if constexpr (std::is_same_v<Scalar, float>) {  // widened in registers, each row read in order
      const bool bf16 = type_ == weight_type::bfloat16;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
      for (index_t blk = 0; blk < blocks; ++blk) {
        const index_t o = blk * R, rows = std::min(R, count - o);
        const std::uint16_t* w = q16_.data() + (first + o) * ld_;
        if (bf16) {
          detail::dot_rows_n<std::uint16_t, true>(n, x, ldx, w, ld_, rows, cols_, y + o, ldy);
        } else {
          detail::dot_rows_n<std::uint16_t, false>(n, x, ldx, w, ld_, rows, cols_, y + o, ldy);
        }
        detail::add_bias_rows(y + o, ldy, n, bias ? bias + o : nullptr, rows);
      }
      return;
    }
#endif
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (index_t blk = 0; blk < blocks; ++blk) {
      alignas(64) Scalar wbuf[R][detail::widen_chunk];
      Scalar acc[detail::small_batch_rows][R] = {};
      const index_t o = blk * R, rows = std::min(R, count - o);
      for (index_t k0 = 0; k0 < cols_; k0 += detail::widen_chunk) {
        const index_t len = std::min(detail::widen_chunk, cols_ - k0);
        for (index_t r = 0; r < R; ++r) {
          if (r < rows) {
            widen(q16_.data() + (first + o + r) * ld_ + k0, wbuf[r], len);
          } else {
            std::fill(wbuf[r], wbuf[r] + len, Scalar(0));
          }
        }
        index_t i = 0;
        for (; i + 2 <= n; i += 2) {  // two inputs at a time: 6 loads per 8 multiply-adds
          const Scalar* xa = x + i * ldx + k0;
          const Scalar* xb = xa + ldx;
          Scalar a0 = 0, a1 = 0, a2 = 0, a3 = 0, c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : a0, a1, a2, a3, c0, c1, c2, c3)
#endif
          for (index_t k = 0; k < len; ++k) {
            const Scalar u = xa[k], v = xb[k];
            a0 += wbuf[0][k] * u;
            a1 += wbuf[1][k] * u;
            a2 += wbuf[2][k] * u;
            a3 += wbuf[3][k] * u;
            c0 += wbuf[0][k] * v;
            c1 += wbuf[1][k] * v;
            c2 += wbuf[2][k] * v;
            c3 += wbuf[3][k] * v;
          }
          acc[i][0] += a0, acc[i][1] += a1, acc[i][2] += a2, acc[i][3] += a3;
          acc[i + 1][0] += c0, acc[i + 1][1] += c1, acc[i + 1][2] += c2, acc[i + 1][3] += c3;
        }
        for (; i < n; ++i) {
          const Scalar* xi = x + i * ldx + k0;
          Scalar s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#if defined(_OPENMP)
#pragma omp simd reduction(+ : s0, s1, s2, s3)
#endif
          for (index_t k = 0; k < len; ++k) {
            const Scalar v = xi[k];
            s0 += wbuf[0][k] * v;
            s1 += wbuf[1][k] * v;
            s2 += wbuf[2][k] * v;
            s3 += wbuf[3][k] * v;
          }
          acc[i][0] += s0, acc[i][1] += s1, acc[i][2] += s2, acc[i][3] += s3;
        }
      }
      for (index_t i = 0; i < n; ++i) {
        for (index_t r = 0; r < rows; ++r) y[i * ldy + o + r] = acc[i][r] + (bias ? bias[o + r] : Scalar(0));
      }
    }
  }

  // int8 weights, n <= 8 inputs: the inputs are quantised once into per-thread scratch, then every
  // block of 4 weight rows is multiplied exactly against each of them.
  void few_rows_int8(index_t first, index_t count, const Scalar* x, index_t ldx, index_t n, const Scalar* bias,
                     Scalar* y, index_t ldy) const {
    std::int8_t* qx = detail::thread_scratch<std::int8_t, 0>(n * ld_);
    Scalar sx[detail::small_batch_rows];
    for (index_t i = 0; i < n; ++i) sx[i] = detail::quantize_row(x + i * ldx, cols_, ld_, qx + i * ld_);
    constexpr index_t R = 4;
    const index_t blocks = (count + R - 1) / R;
    const int threads = threads_for(n, count);
    const std::int8_t* q = q8_.data() + first * ld_;
    const Scalar* sw = scale_.data() + first;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (index_t blk = 0; blk < blocks; ++blk) {
      const index_t o = blk * R, rows = std::min(R, count - o);
      // A last partial block repeats its last row (read, never written).
      const std::int8_t* w[R];
      for (index_t r = 0; r < R; ++r) w[r] = q + (o + std::min(r, rows - 1)) * ld_;
      for (index_t i = 0; i < n; ++i) {
        alignas(16) std::int32_t acc[R];
        detail::dot4_int8(qx + i * ld_, w[0], w[1], w[2], w[3], ld_, acc);
        for (index_t r = 0; r < rows; ++r) {
          const Scalar v = sx[i] == Scalar(0) ? Scalar(0) : static_cast<Scalar>(acc[r]) / (sx[i] * sw[o + r]);
          y[i * ldy + o + r] = v + (bias ? bias[o + r] : Scalar(0));  // sx NaN: NaN
        }
      }
    }
  }

#if defined(EIGENFORMER_INT8_VNNI)
  // int8 weights, AVX512-VNNI: inputs are quantised once into per-thread scratch as unsigned bytes
  // (int8 + 128: the instruction's form; the 128 sum_k Q[o, k] it adds is taken off from sum_).
  // Exact int32 sums: the same outputs for any n, any thread split and any row range, so a prompt
  // computes exactly what feeding it token by token computes.

  // The output of weight row o from the sum acc of an input (+ 128) of scale s against Q[o].
  Scalar int8_output(std::int32_t acc, Scalar s, index_t o, Scalar bias) const noexcept {
    const std::int32_t exact = acc - 128 * sum_.data()[o];
    const Scalar v = s == Scalar(0) ? Scalar(0) : static_cast<Scalar>(exact) / (s * scale_.data()[o]);
    return v + bias;  // s NaN: NaN
  }

  // Up to 8 inputs (a decode step): each weight row meets all of them as it is read in order.
  void rows_int8_vnni(index_t first, index_t count, const Scalar* x, index_t ldx, index_t n, const Scalar* bias,
                      Scalar* y, index_t ldy) const {
    std::int8_t* qx = detail::thread_scratch<std::int8_t, 0>(n * ld_);
    Scalar* sx = detail::thread_scratch<Scalar, 2>(n);
    const auto* ux = reinterpret_cast<const std::uint8_t*>(qx);
    constexpr index_t R = 4;
    const index_t blocks = (count + R - 1) / R;
    const int threads = static_cast<int>(std::min<index_t>(blocks, threads_for(n, count)));
    const std::int8_t* q = q8_.data() + first * ld_;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t i = 0; i < n; ++i) {  // (the loop's end waits for every row)
        std::int8_t* qi = qx + i * ld_;
        sx[i] = detail::quantize_row(x + i * ldx, cols_, ld_, qi);
        for (index_t k = 0; k < ld_; ++k) qi[k] = static_cast<std::int8_t>(qi[k] ^ 0x80);  // + 128, as bits
      }
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t blk = 0; blk < blocks; ++blk) {
        const index_t o = blk * R, rows = std::min(R, count - o);
        alignas(16) std::int32_t acc[detail::small_batch_rows][R];  // [input][row o + r]
        switch (n) {
          case 1: detail::dot_rows_vnni<1>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          case 2: detail::dot_rows_vnni<2>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          case 3: detail::dot_rows_vnni<3>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          case 4: detail::dot_rows_vnni<4>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          case 5: detail::dot_rows_vnni<5>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          case 6: detail::dot_rows_vnni<6>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          case 7: detail::dot_rows_vnni<7>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
          default: detail::dot_rows_vnni<8>(ux, ld_, q + o * ld_, ld_, rows, acc); break;
        }
        for (index_t i = 0; i < n; ++i) {
          for (index_t r = 0; r < rows; ++r) {
            y[i * ldy + o + r] = int8_output(acc[i][r], sx[i], first + o + r, bias ? bias[o + r] : Scalar(0));
          }
        }
      }
    }
  }

  // More inputs (a prompt, an encoder): a GEMM. Inputs are quantised and packed in groups of 16
  // (detail::pack_vnni_group); then in panels of at most 256 KiB of packed inputs, which stay in L2,
  // blocks of 6 weight rows (in L1 after their first tile) meet 64 inputs at a time.
  void gemm_int8_vnni(index_t first, index_t count, const Scalar* x, index_t ldx, index_t n, const Scalar* bias,
                      Scalar* y, index_t ldy) const {
    constexpr index_t G = detail::vnni_group, T = detail::vnni_tile_inputs, R = gemm_block_rows;
    const index_t groups = (n + G - 1) / G;
    std::uint8_t* packed = detail::thread_scratch<std::uint8_t, 4>(groups * G * ld_);  // [groups][ld / 4][16][4]
    Scalar* sx = detail::thread_scratch<Scalar, 2>(groups * G);                        // [n] input scales, 0 past n
    const index_t blocks = (count + R - 1) / R;
    const int threads = static_cast<int>(std::min<index_t>(blocks, threads_for(n, count)));
    const index_t panel = std::max<index_t>(T, (index_t{1} << 18) / ld_ / T * T);  // inputs
    const std::int8_t* q = q8_.data() + first * ld_;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
    {
      std::int8_t* rows16 = detail::thread_scratch<std::int8_t, 5>(G * ld_);  // [16, ld] one group, quantised
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (index_t g = 0; g < groups; ++g) {  // (the loop's end waits for every group)
        const index_t i0 = g * G, m = std::min(G, n - i0);
        for (index_t j = 0; j < G; ++j) sx[i0 + j] = Scalar(0);
        for (index_t j = 0; j < m; ++j) {
          std::int8_t* qj = rows16 + j * ld_;
          sx[i0 + j] = detail::quantize_row(x + (i0 + j) * ldx, cols_, ld_, qj);
          for (index_t k = 0; k < ld_; ++k) qj[k] = static_cast<std::int8_t>(qj[k] ^ 0x80);  // + 128, as bits
        }
        detail::pack_vnni_group(reinterpret_cast<const std::uint8_t*>(rows16), ld_, m, packed + i0 * ld_);
      }
      for (index_t p0 = 0; p0 < n; p0 += panel) {
        const index_t p1 = std::min(n, p0 + panel);
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
        for (index_t blk = 0; blk < blocks; ++blk) {
          const index_t o = blk * R, rows = std::min(R, count - o);
          const std::int8_t* w[R];  // a last partial block repeats its last row (read, never written)
          for (index_t r = 0; r < R; ++r) w[r] = q + (o + std::min(r, rows - 1)) * ld_;
          alignas(64) std::int32_t acc[R * T];  // [row o + r][input i + j]
          for (index_t i = p0; i < p1; i += T) {
            const index_t m = std::min(T, p1 - i);
            const std::uint8_t* a = packed + i * ld_;
            switch ((m + G - 1) / G) {
              case 1: detail::gemm_tile_vnni<1, R>(a, ld_, w, acc); break;
              case 2: detail::gemm_tile_vnni<2, R>(a, ld_, w, acc); break;
              case 3: detail::gemm_tile_vnni<3, R>(a, ld_, w, acc); break;
              default: detail::gemm_tile_vnni<4, R>(a, ld_, w, acc); break;
            }
            store_int8_tile(acc, m, rows, sx + i, first + o, bias ? bias + o : nullptr, y + i * ldy + o, ldy);
          }
        }
      }
    }
  }

  static constexpr index_t gemm_block_rows = 6;  // weight rows per GEMM tile

  // y[j * ldy + r] = int8_output(acc[r * 64 + j], sx[j], o + r, bias[r]) for j < m inputs and r < rows
  // (bias null: none). For float 16 inputs at a time: the same operations in the same order, so the
  // same values as the scalar form.
  void store_int8_tile(const std::int32_t* acc, index_t m, index_t rows, const Scalar* sx, index_t o, const Scalar* bias,
                       Scalar* y, index_t ldy) const noexcept {
    constexpr index_t G = detail::vnni_group, T = detail::vnni_tile_inputs;
    if constexpr (std::is_same_v<Scalar, float>) {
      alignas(64) float out[gemm_block_rows * T];  // [r][j]
      for (index_t r = 0; r < rows; ++r) {
        const __m512 sw = _mm512_set1_ps(scale_.data()[o + r]);
        const __m512i c = _mm512_set1_epi32(128 * sum_.data()[o + r]);
        const __m512 bv = _mm512_set1_ps(bias ? bias[r] : 0.0f);
        for (index_t j = 0; j < m; j += G) {
          const __m512 s = _mm512_loadu_ps(sx + j);  // (0 past n: the scratch is whole groups)
          const __m512 exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(acc + r * T + j), c));
          const __m512 v = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_UQ), exact,
                                               _mm512_mul_ps(s, sw));
          _mm512_store_ps(out + r * T + j, _mm512_add_ps(v, bv));
        }
      }
      for (index_t j = 0; j < m; ++j) {
        for (index_t r = 0; r < rows; ++r) y[j * ldy + r] = out[r * T + j];
      }
    } else {
      for (index_t j = 0; j < m; ++j) {
        for (index_t r = 0; r < rows; ++r) y[j * ldy + r] = int8_output(acc[r * T + j], sx[j], o + r, bias ? bias[r] : Scalar(0));
      }
    }
  }
#endif

  // More than 8 inputs: tiles of packed_tile_rows weight rows widened into per-thread float buffers,
  // multiplied by Eigen's GEMM. int8: inputs quantised (to integer-valued Scalars) first, so a prompt
  // computes what feeding it token by token computes, up to float summation order.
  void many_rows(index_t first, index_t count, const Scalar* x, index_t ldx, index_t n, const Scalar* bias, Scalar* y,
                 index_t ldy) const {
    const bool int8 = type_ == weight_type::int8;
    const Scalar* in = x;
    index_t ld_in = ldx;
    Scalar* sx = nullptr;
    if (int8) {
      Scalar* qx = detail::thread_scratch<Scalar, 1>(n * ld_);
      sx = detail::thread_scratch<Scalar, 2>(n);
      std::int8_t* row = detail::thread_scratch<std::int8_t, 0>(ld_);
      for (index_t i = 0; i < n; ++i) {
        sx[i] = detail::quantize_row(x + i * ldx, cols_, ld_, row);
        for (index_t k = 0; k < cols_; ++k) qx[i * ld_ + k] = static_cast<Scalar>(row[k]);
      }
      in = qx, ld_in = ld_;
    }
    const index_t tile_rows = detail::packed_tile_rows(count, cols_, threads_for(n, count));
    const index_t tiles = (count + tile_rows - 1) / tile_rows;
    const int threads = static_cast<int>(std::min<index_t>(tiles, threads_for(n, count)));
    const auto xs = make_view(in, n, cols_, ld_in);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
    for (index_t t = 0; t < tiles; ++t) {
      const index_t o = t * tile_rows, rows = std::min(tile_rows, count - o);
      Scalar* tile = detail::thread_scratch<Scalar, 3>(tile_rows * cols_);
      for (index_t r = 0; r < rows; ++r) {
        const index_t row = first + o + r;
        if (int8) {
          const std::int8_t* src = q8_.data() + row * ld_;
          for (index_t k = 0; k < cols_; ++k) tile[r * cols_ + k] = static_cast<Scalar>(src[k]);
        } else {
          widen(q16_.data() + row * ld_, tile + r * cols_, cols_);
        }
      }
      auto yt = make_view(y + o, n, rows, ldy);
      yt.noalias() = xs * make_view(static_cast<const Scalar*>(tile), rows, cols_).transpose();
      for (index_t i = 0; i < n; ++i) {
        for (index_t r = 0; r < rows; ++r) {
          Scalar& v = y[i * ldy + o + r];
          if (int8) v = sx[i] == Scalar(0) ? Scalar(0) : v / (sx[i] * scale_.data()[first + o + r]);
          if (bias) v += bias[o + r];
        }
      }
    }
  }

  weight_type type_ = weight_type::float32;
  index_t rows_ = 0, cols_ = 0, ld_ = 0;
  tensor<std::uint16_t> q16_;  // [rows, ld] bfloat16 or float16 bits
  tensor<std::int8_t> q8_;     // [rows, ld] int8
  tensor<Scalar> scale_;       // [rows] int8 scales
  tensor<std::int32_t> sum_;   // [rows] int8: sum_k Q[o, k] (the AVX512-VNNI kernel's offset correction)
};

}  // namespace eigenformer
