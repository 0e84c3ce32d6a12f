// Compiled with eigenformer::compiled's EIGENFORMER_EXTERN_TEMPLATES and never linked:
// check_extern.cmake reads its symbols (nm) and expects the heavy float and double instantiations
// it calls to be undefined references (to the library), not definitions of its own.
#include <eigenformer/eigenformer.hpp>

#include <cstddef>

template <class Scalar>
std::size_t use(const char* path) {
  const auto m = eigenformer::load_model<Scalar>(path);
  const auto src = eigenformer::token_batch::from_sequences({{4, 5, 6}});
  const auto memory = m.encode(src);
  const auto lp = m.score(src, src);
  return eigenformer::generate(m, src, {}).size() + static_cast<std::size_t>(memory.batch() + lp.size());
}

std::size_t extern_check(const char* path) { return use<float>(path) + use<double>(path); }
