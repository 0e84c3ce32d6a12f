// src/eigenformer.cpp: the one translation unit of eigenformer::compiled (CMake option
// EIGENFORMER_COMPILED). Defines the float and double instantiations that extern_templates.hpp
// declares extern for the library's users, so that a host application compiles them once, here,
// instead of in every translation unit that loads a model or generates.
//
// The umbrella header has already declared them extern (this target defines
// EIGENFORMER_EXTERN_TEMPLATES for itself as for its users); a definition after its declaration is
// what the standard asks for, and a declaration that matched no template would fail here first.
#include <eigenformer/eigenformer.hpp>

#if !defined(EIGENFORMER_EXTERN_TEMPLATES)
#error "src/eigenformer.cpp is built by the eigenformer_compiled target, which defines EIGENFORMER_EXTERN_TEMPLATES"
#endif

namespace eigenformer {
EIGENFORMER_DETAIL_INSTANTIATE(, float)
EIGENFORMER_DETAIL_INSTANTIATE(, double)
}  // namespace eigenformer
