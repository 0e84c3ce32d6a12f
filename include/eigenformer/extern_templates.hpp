// eigenformer/extern_templates.hpp: `extern template` declarations of the heavy float and double
// instantiations, for users of the prebuilt library eigenformer::compiled.
//
// Why: a translation unit that loads a model and calls generate() instantiates and optimises the
// whole model (every layer, attention, Eigen's GEMM kernels) for each Scalar it uses: most of its
// compile time (docs/performance.md, "Compile time of a host application"). The CMake target
// eigenformer::compiled holds those instantiations once (src/eigenformer.cpp) and defines
// EIGENFORMER_EXTERN_TEMPLATES for its users; this header, included last by the umbrella header,
// then declares them extern so that the user's translation units only call them.
//
// Without EIGENFORMER_EXTERN_TEMPLATES it declares nothing: the library stays header-only.
// Including a few headers instead of the umbrella header also works, only without the saving
// unless this header is included too. Every other Scalar, and every template not listed here, is
// still instantiated where it is used.
//
// The list is a macro so that the declarations here and the definitions in src/eigenformer.cpp
// cannot drift apart: EIGENFORMER_DETAIL_INSTANTIATE(extern, float) declares,
// EIGENFORMER_DETAIL_INSTANTIATE(, float) defines. It expands inside namespace eigenformer.
#pragma once

// model<Scalar>: every member (constructor, encode, decode, score, start_decoding, decode_step)
// and through them the layers and attention; kv_cache<Scalar>: the caller-owned decoding state;
// read_weights and load_model: the loader; generate: greedy, sampled and beam-search decoding.
#define EIGENFORMER_DETAIL_INSTANTIATE(EXTERN, Scalar)                                                          \
  EXTERN template class model<Scalar>;                                                                       \
  EXTERN template class kv_cache<Scalar>;                                                                    \
  EXTERN template weight_map<Scalar> read_weights<Scalar>(const io::safetensors_file&);                      \
  EXTERN template model<Scalar> load_model<Scalar>(const std::filesystem::path&, const load_options&);      \
  EXTERN template std::vector<generation_result> generate<Scalar>(const model<Scalar>&, const token_batch&, \
                                                                  const generation_options&);

#if defined(EIGENFORMER_EXTERN_TEMPLATES)

#include <filesystem>
#include <vector>

#include "batch.hpp"
#include "decode.hpp"
#include "io/model_loader.hpp"
#include "io/safetensors.hpp"
#include "kv_cache.hpp"
#include "model.hpp"
#include "weights.hpp"

namespace eigenformer {
EIGENFORMER_DETAIL_INSTANTIATE(extern, float)
EIGENFORMER_DETAIL_INSTANTIATE(extern, double)
}  // namespace eigenformer

#endif
