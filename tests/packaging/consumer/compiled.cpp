// Linked with eigenformer::compiled: the model, the loader and generate() come from the library
// (extern_templates.hpp), in float and double. Loads the model given on the command line, generates
// in both precisions and compares their scores of one target; exits non-zero if anything is off.
#include <eigenformer/eigenformer.hpp>

#include <cmath>
#include <cstdio>
#include <exception>

#if !defined(EIGENFORMER_EXTERN_TEMPLATES)
#error "eigenformer::compiled did not define EIGENFORMER_EXTERN_TEMPLATES for its users"
#endif

int main(int argc, char** argv) try {
  namespace ef = eigenformer;
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer_compiled MODEL.safetensors\n");
    return 2;
  }
  const auto model_f = ef::load_model<float>(argv[1]);
  const auto model_d = ef::load_model<double>(argv[1]);
  const auto src = ef::token_batch::from_sequences({{4, 5, 6}});
  ef::generation_options options;
  options.max_new_tokens = 16;
  if (ef::generate(model_f, src, options).size() != 1 || ef::generate(model_d, src, options).size() != 1) {
    std::fprintf(stderr, "generate: expected one result per source\n");
    return 1;
  }
  // Teacher-forced log-probabilities of a fixed target, in both precisions.
  const auto vocab = static_cast<ef::token_id>(model_f.config().tgt_vocab_size);
  const auto tgt_batch = ef::token_batch::from_sequences({{model_f.config().bos_id, 4 % vocab, 5 % vocab, 6 % vocab}});
  const auto lp_f = model_f.score(src, tgt_batch);
  const auto lp_d = model_d.score(src, tgt_batch);
  double max_diff = 0;
  for (ef::index_t i = 0; i < lp_f.size(); ++i) {
    max_diff = std::fmax(max_diff, std::fabs(double(lp_f.data()[i]) - lp_d.data()[i]));
  }
  std::printf("consumer_compiled: float and double log-probabilities differ by %.2e\n", max_diff);
  return max_diff < 1e-3 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
