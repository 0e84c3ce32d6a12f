// quickstart: the README's C++ example. Loads a model, samples two sequences with a sampler chain,
// and streams each token as it is chosen.   quickstart MODEL.safetensors
#include <eigenformer/eigenformer.hpp>

#include <iostream>

int main(int argc, char** argv) try {
  namespace ef = eigenformer;
  const auto model = ef::load_model<float>(argc > 1 ? argv[1] : "examples/models/g2p.safetensors");

  ef::sampling::sampling_options sampling;   // applied in this order: temperature, top-k, top-p, min-p, draw
  sampling.temperature = 0.7f;
  sampling.top_p = 0.9f;
  const ef::sampling::chain chain = ef::sampling::make_chain(sampling);

  ef::generation_options options;
  options.max_new_tokens = 32;
  options.sampler = &chain;               // nullptr: greedy; or options.beam_size = 4
  options.seed = 42;                      // same seed, same tokens
  options.on_token = [](const ef::token_event& e) {
    std::cout << "sequence " << e.sequence << " step " << e.step << ": token " << e.token << '\n';
    return true;                          // false stops this sequence
  };
  const auto source = ef::token_batch::from_sequences({{4, 5, 6}, {7, 8, 9, 10}});
  for (const auto& result : ef::generate(model, source, options)) {
    const ef::hypothesis& best = result.best();   // beam search: options.num_return_sequences of them
    std::cout << best.tokens.size() << " tokens, log-probability " << best.log_prob_sum << '\n';
  }
  return 0;
} catch (const eigenformer::error& e) {   // every error names the file, tensor, option or token at fault
  std::cerr << e.what() << '\n';
  return 1;
}
