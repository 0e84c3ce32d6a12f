// Test helper: incremental decoding (model::decode_step over a kv_cache) checked against teacher
// forcing (model::score). Shared by test_model (dense layers) and test_moe (mixture-of-experts layers).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include <eigenformer/batch.hpp>
#include <eigenformer/kv_cache.hpp>
#include <eigenformer/model.hpp>
#include <eigenformer/tensor.hpp>

namespace eigenformer::testing {

/// Feeds `targets` (sequence b in slot b) through `m.decode_step` one token per step, a sequence
/// leaving the step once it is finished, and asserts that every step's log-probs equal `full`, the
/// teacher-forced `m.score(...)` [batch, max target length, tgt vocab] of the same targets, within
/// `tol`. `cache` must come from `m.start_decoding` with one slot per sequence; `moe` goes to every
/// step. Wrap the call in ASSERT_NO_FATAL_FAILURE to stop the test at the first mismatch.
template <class Scalar>
void expect_decode_steps_match_scores(const model<Scalar>& m, kv_cache<Scalar>& cache,
                                      const std::vector<std::vector<token_id>>& targets, const tensor<Scalar>& full,
                                      double tol, const moe_runtime& moe = {}) {
  const index_t vocab = m.config().tgt_vocab_size;
  std::size_t steps = 0;
  for (const auto& t : targets) steps = std::max(steps, t.size());
  tensor<Scalar> lp({index_t(targets.size()), vocab});
  for (index_t t = 0; t < index_t(steps); ++t) {
    std::vector<index_t> slots;
    std::vector<token_id> tokens;
    for (index_t b = 0; b < index_t(targets.size()); ++b)  // finished sequences leave the step
      if (t < index_t(targets[std::size_t(b)].size())) {
        slots.push_back(b);
        tokens.push_back(targets[std::size_t(b)][std::size_t(t)]);
      }
    lp.resize({index_t(slots.size()), vocab});
    m.decode_step(cache, {.slots = slots, .tokens = tokens, .moe = moe}, lp.matrix());
    for (std::size_t i = 0; i < slots.size(); ++i)
      for (index_t v = 0; v < vocab; ++v)
        ASSERT_NEAR(lp(index_t(i), v), full(slots[i], t, v), tol) << "step " << t << " slot " << slots[i];
  }
}

/// Two beams of `source`: both step token 1, then 5 and 9; the cache is reordered so that both
/// continue beam 1's history [1, 9]; both step token 4. Expects both beams' log-probs to equal
/// teacher forcing of [1, 9, 4] at its last position, within `tol`.
template <class Scalar>
void expect_reorder_follows_parents(const model<Scalar>& m, const std::vector<token_id>& source, double tol) {
  const index_t vocab = m.config().tgt_vocab_size;
  const auto memory = m.encode(token_batch::from_sequences({source}));
  kv_cache<Scalar> cache;
  m.start_decoding(memory, 2, 4, cache);  // two beams of one source
  tensor<Scalar> lp({2, vocab});
  const std::vector<index_t> slots{0, 1};
  m.decode_step(cache, slots, std::vector<token_id>{1, 1}, lp.matrix());
  m.decode_step(cache, slots, std::vector<token_id>{5, 9}, lp.matrix());
  cache.reorder(std::vector<index_t>{1, 1});  // both beams continue beam 1's history [1, 9]
  m.decode_step(cache, slots, std::vector<token_id>{4, 4}, lp.matrix());
  const auto full = m.score(token_batch::from_sequences({source}), token_batch::from_sequences({{1, 9, 4}}));
  for (index_t v = 0; v < vocab; ++v) {
    EXPECT_NEAR(lp(0, v), full(0, 2, v), tol);
    EXPECT_NEAR(lp(1, v), full(0, 2, v), tol);
  }
}

}  // namespace eigenformer::testing
