// eigenformer/workspace.hpp: the scratch buffers of one forward pass or of decode steps.
//
// Layers never allocate: they resize() these tensors, which reallocate only when a buffer must
// grow, so a workspace reused across decode steps stops allocating after the first step.
#pragma once

#include <span>
#include <vector>

#include "tensor.hpp"

namespace eigenformer {

/// Scratch of a mixture-of-experts layer (layers/moe.hpp). n tokens, E experts, k experts per
/// token (k = E for the softmax gate), m = n k routed rows.
template <class Scalar>
struct moe_scratch {
  tensor<Scalar> logits;         // [n, E]     gate logits h (noise added)
  tensor<Scalar> noise_logits;   // [n, E]     softplus(x Wn^T) (noisy_top_k with noise on)
  std::vector<double> eps;       // [n * E]    the noise source's eps
  std::vector<index_t> choice;   // [n * k]    chosen experts per token, slot order
  tensor<Scalar> weight;         // [n * k]    gate weight per (token, slot)
  std::vector<index_t> starts;   // [E + 1]    first routed row of each expert (counting sort)
  std::vector<index_t> cursor;   // [E]
  std::vector<index_t> row_token;  // [m]      token of each routed row
  std::vector<index_t> slot_row;   // [n * k]  routed row of each (token, slot)
  std::vector<index_t> active;     // experts with at least one row
  tensor<Scalar> gathered;       // [m, d_model]  the rows of each expert, contiguous
  tensor<Scalar> hidden;         // [m, d_ff]
  tensor<Scalar> expert_out;     // [m, d_model]
};

template <class Scalar>
struct workspace {
  tensor<Scalar> qkv;     // [n, 3 * d_model]  fused Q/K/V projection (self-attention)
  tensor<Scalar> q;       // [n, d_model]      cross-attention queries
  tensor<Scalar> ctx;     // [n, d_model]      attention heads, concatenated
  tensor<Scalar> sub;     // [n, d_model]      a sublayer's output before the residual add
  tensor<Scalar> normed;  // [n, d_model]      pre-LN: the normalised sublayer input
  tensor<Scalar> hidden;  // [n, d_ff]         feed-forward activations
  tensor<Scalar> scores;  // [threads, Tq * Tk] attention probabilities, one block per thread
  moe_scratch<Scalar> moe_buf;  // mixture-of-experts layers
};

}  // namespace eigenformer
