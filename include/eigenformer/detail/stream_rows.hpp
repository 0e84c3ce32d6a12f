// eigenformer/detail/stream_rows.hpp: a few input rows against weight rows read in memory order
// (AVX-512), for float32, bfloat16 and float16 weights: the inner kernel of a decode step.
//
// Why in order: a decode step reads every weight once, so its time is the weights' bytes over the
// rate memory delivers them. Reading 4 weight rows side by side (64 bytes of each per step, the
// classic register block) streamed 9-12 GB/s on this machine (AMD EPYC Zen 4, one thread) where
// reading the same bytes in order streamed 21-27 GB/s: the hardware prefetcher follows one stream,
// not four interleaved ones. So each weight row is read start to end, against all NA inputs at once
// (NA accumulators, one per input; the inputs stay in L1).
#pragma once

#include <cstdint>

#include "../types.hpp"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define EIGENFORMER_STREAM_ROWS_AVX512 1

namespace eigenformer::detail {

/// How far ahead of the row being read the kernels ask for weights, in bytes, and into L2
/// (prefetcht1). At 4 and 8 inputs a row's multiply-adds take long enough that the hardware
/// prefetcher falls behind: a 32000 x 512 float matrix against 8 inputs took 7.4 ms without, 5.3 ms
/// with 8 KiB ahead (one thread, Zen 4); 2-8 KiB measured alike, 16 KiB no better; prefetcht0 gained
/// nothing, prefetchnta lost. At one input the hardware keeps up alone and the extra instruction
/// measured 0-15 % slower, so one-input kernels do not ask. A prefetch past the end of the matrix
/// is harmless: prefetches do not fault.
inline constexpr index_t stream_prefetch_bytes = 8192;

inline void prefetch_ahead(const void* p) noexcept {
  // Through an integer: the address may lie past the matrix, where pointer arithmetic is undefined.
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + stream_prefetch_bytes), _MM_HINT_T1);
}

/// 16 weights as floats. W: float, or std::uint16_t holding bfloat16 / float16.
template <class W, bool Bf16>
inline __m512 load_weights16(const W* w) noexcept {
  if constexpr (sizeof(W) == 4) {
    return _mm512_loadu_ps(w);
  } else if constexpr (Bf16) {  // bfloat16: the high half of a float
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w))), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  }
}

/// The same for the lanes in `m` (the others zero, their memory not read).
template <class W, bool Bf16>
inline __m512 load_weights16(const W* w, __mmask16 m) noexcept {
  if constexpr (sizeof(W) == 4) {
    return _mm512_maskz_loadu_ps(m, w);
  } else if constexpr (Bf16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w)), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w));
  }
}

/// out[i * ldo + r] = sum_{k < in} x[i * ldx + k] w[r * ldw + k] for i < NA (<= 8) and r < rows, float
/// accumulation, each weight row read in order (lanes past `in` masked: neither x nor w is read
/// there). Two rows side by side (halving the loads of x per multiply-add) measured slower at every
/// batch: 10.1 against 7.4 ms for 8 inputs through a 32000 x 512 float matrix.
template <int NA, class W, bool Bf16 = false>
inline void dot_rows(const float* x, index_t ldx, const W* w, index_t ldw, index_t rows, index_t in, float* out,
                     index_t ldo) noexcept {
  const index_t full = in / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (in - full)) - 1u);
  for (index_t r = 0; r < rows; ++r) {
    const W* wr = w + r * ldw;
    __m512 s[NA];
    for (int i = 0; i < NA; ++i) s[i] = _mm512_setzero_ps();
    for (index_t k = 0; k < full; k += 16) {
      if constexpr (NA > 1) prefetch_ahead(wr + k);
      const __m512 vw = load_weights16<W, Bf16>(wr + k);
      for (int i = 0; i < NA; ++i) s[i] = _mm512_fmadd_ps(vw, _mm512_loadu_ps(x + i * ldx + k), s[i]);
    }
    if (tail) {
      const __m512 vw = load_weights16<W, Bf16>(wr + full, tail);
      for (int i = 0; i < NA; ++i) s[i] = _mm512_fmadd_ps(vw, _mm512_maskz_loadu_ps(tail, x + i * ldx + full), s[i]);
    }
    for (int i = 0; i < NA; ++i) out[i * ldo + r] = _mm512_reduce_add_ps(s[i]);
  }
}

/// y[i * ldy + r] += bias[r] for i < n, r < rows (bias null: nothing), after dot_rows on a block.
inline void add_bias_rows(float* y, index_t ldy, index_t n, const float* bias, index_t rows) noexcept {
  if (!bias) return;
  for (index_t i = 0; i < n; ++i) {
    for (index_t r = 0; r < rows; ++r) y[i * ldy + r] += bias[r];
  }
}

/// dot_rows for a run-time n in [1, 8].
template <class W, bool Bf16 = false>
inline void dot_rows_n(index_t n, const float* x, index_t ldx, const W* w, index_t ldw, index_t rows, index_t in,
                       float* out, index_t ldo) noexcept {
  switch (n) {
    case 1: return dot_rows<1, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    case 2: return dot_rows<2, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    case 3: return dot_rows<3, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    case 4: return dot_rows<4, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    case 5: return dot_rows<5, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    case 6: return dot_rows<6, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    case 7: return dot_rows<7, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
    default: return dot_rows<8, W, Bf16>(x, ldx, w, ldw, rows, in, out, ldo);
  }
}

}  // namespace eigenformer::detail

#endif
