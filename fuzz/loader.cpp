// fuzz/loader.cpp: libFuzzer target for load_model<float>, a complete model file: the safetensors
// container, __metadata__'s format and config (model_config::parse), every tensor's dtype and values
// (NaN and Inf refused), and the model taking its tensors by name and shape.
//
// load_model() takes a path, so each input goes to one scratch file (harness.hpp). A file that loads
// must also run: one source token and one target token through score(), so that whatever the loader
// accepts (odd configs: d_model 1, zero layers, huge max_positions) is a model that computes.
#include <cstdint>
#include <vector>

#include <eigenformer/io/model_loader.hpp>

#include "harness.hpp"

namespace ef = eigenformer;
using ef::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ef::fuzz::scratch_file scratch("model.safetensors");
  const auto& path = scratch.write(data, size);
  try {
    const ef::model<float> m = ef::load_model<float>(path);
    const ef::model_config& c = m.config();
    require(c.d_model > 0 && c.tgt_vocab_size > 0 && c.max_sequence_length() > 0, "a loaded config is valid");
    const auto src = ef::token_batch::from_sequences({{0}});
    const auto tgt = ef::token_batch::from_sequences({{c.bos_id}});
    const ef::tensor<float> log_probs = m.score(src, tgt);
    require(log_probs.shape() == ef::tensor_shape({1, 1, c.tgt_vocab_size}), "score() is [1, 1, tgt_vocab_size]");
  } catch (const ef::error& e) {
    ef::fuzz::check_message(e);
  }
  return 0;
}
