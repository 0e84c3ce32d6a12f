// eigenformer/workspace.hpp: the scratch buffers of one forward pass or one decoder state.
//
// Layers never allocate: they resize() these tensors, which reallocate only when a buffer must
// grow, so a workspace reused across decode steps stops allocating after the first step.
#pragma once

#include "tensor.hpp"

namespace eigenformer {

template <class Scalar>
struct workspace {
  tensor<Scalar> qkv;     // [n, 3 * d_model]  fused Q/K/V projection (self-attention)
  tensor<Scalar> q;       // [n, d_model]      cross-attention queries
  tensor<Scalar> ctx;     // [n, d_model]      attention heads, concatenated
  tensor<Scalar> sub;     // [n, d_model]      a sublayer's output before the residual add
  tensor<Scalar> normed;  // [n, d_model]      pre-LN: the normalised sublayer input
  tensor<Scalar> hidden;  // [n, d_ff]         feed-forward activations
  tensor<Scalar> scores;  // [threads, Tq * Tk] attention probabilities, one block per thread
};

}  // namespace eigenformer
