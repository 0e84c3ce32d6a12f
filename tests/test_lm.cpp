// Decoder-only language models (issue 13: llama, mistral, qwen2, gpt2, mixtral), loaded from the Hugging Face folders
// of tests/fixtures/lm (README.md there: tools/hf/make_lm_fixtures.py, transformers 4.46.3) and
// held to what transformers computes on them: teacher-forced log-probabilities, greedy and beam
// outputs, one-pass prompt processing, the grouped-query KV cache, and the configs we refuse.
// EIGENFORMER_PRINT_DEVIATIONS=1 prints every measured deviation.
//
// Each test's comment names the wrong implementation it would catch.
#include <eigenformer/decode.hpp>
#include <eigenformer/io/model_loader.hpp>
#include <eigenformer/io/npy.hpp>
#include <eigenformer/layers/moe.hpp>
#include <eigenformer/sampling/sampling.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/hf_fixtures.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
using ef::index_t;
using ef::token_id;
using namespace ef::testing;

namespace {

namespace fs = std::filesystem;

fs::path lm_root() { return fixture_root() / "lm"; }

void print_deviation(const std::string& what, double v) {
  if (std::getenv("EIGENFORMER_PRINT_DEVIATIONS")) std::printf("[deviation] %s: %.3g\n", what.c_str(), v);
}

/// max |ours - reference| over the rows of each sequence (past its end both are 0 anyway).
template <class S>
double max_deviation(const ef::tensor<S>& ours, const ef::tensor<double>& ref, const ef::token_batch& tgt) {
  EXPECT_EQ(ours.rank(), 3);
  for (index_t i = 0; i < 3; ++i) EXPECT_EQ(ours.dim(i), ref.dim(i));
  const index_t T = ref.dim(1), V = ref.dim(2);
  double m = 0;
  for (index_t b = 0; b < tgt.size(); ++b)
    for (index_t t = 0; t < tgt.length(b); ++t)
      for (index_t v = 0; v < V; ++v) {
        const index_t i = (b * T + t) * V + v;
        m = std::max(m, std::fabs(static_cast<double>(ours.data()[i]) - ref.data()[i]));
      }
  return m;
}

/// A copy of fixture case `name` whose config.json has `edit` applied, for a test to break.
fs::path edited_copy(const std::string& name, const std::string& as, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path dst = fs::path(EIGENFORMER_TEST_TMP) / "lm" / as;
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors"}) fs::copy(lm_root() / name / f, dst / f);
  auto j = nlohmann::json::parse(read_file(dst / "config.json"));
  edit(j);
  write_file(dst / "config.json", j.dump(2));
  return dst;
}

class LmCase : public ::testing::TestWithParam<std::string> {
 protected:
  fs::path dir() const { return lm_root() / GetParam(); }
  ef::token_batch lines(const char* file) const { return ef::token_batch::from_sequences(id_lines(dir() / file)); }
};

// Catches: rotary applied to one of q/k only or at relative instead of absolute positions, KV head
// h mapped as h % n_kv instead of h / (n_heads / n_kv), RMSNorm with a mean subtracted, silu on the
// up projection, a tied head read from the wrong table, Qwen2's biases dropped; GPT-2's Conv1D
// weights read as [out, in] (not transposed), its positions counted from 1, exact gelu instead of
// gelu_new, q/k/v taken as row instead of column blocks of c_attn; Mixtral's top-2 weights not
// renormalised (softmax over all experts kept), w1 and w3 swapped, the router read transposed.
TEST_P(LmCase, TeacherForcedLogProbsFloat) {
  const auto m = ef::load_model<float>(dir());
  const auto tgt = lines("tgt.txt");
  const auto ours = m.score(tgt);
  const double dev = max_deviation(ours, ef::io::read_npy<double>(dir() / "logprobs.npy"), tgt);
  print_deviation(GetParam() + " float vs logprobs.npy", dev);
  EXPECT_LT(dev, 1e-4);  // measured 1.3e-5 to 2.0e-5 (-march=native), gpt2 and mixtral included
}

// Catches: the double model computing any part in float (angles, norms, softmax), which the float
// test above cannot see: logprobs_exact_f64.npy is a true float64 computation. GPT-2 has no such
// file: transformers computes it in float64 throughout, so logprobs.npy is exact for it.
TEST_P(LmCase, TeacherForcedLogProbsDoubleExact) {
  const auto m = ef::load_model<double>(dir());
  const auto tgt = lines("tgt.txt");
  const auto ours = m.score(tgt);
  const fs::path exact_file = fs::exists(dir() / "logprobs_exact_f64.npy") ? dir() / "logprobs_exact_f64.npy" : dir() / "logprobs.npy";
  const double exact = max_deviation(ours, ef::io::read_npy<double>(exact_file), tgt);
  const double mixed = max_deviation(ours, ef::io::read_npy<double>(dir() / "logprobs.npy"), tgt);
  print_deviation(GetParam() + " double vs " + exact_file.filename().string(), exact);
  print_deviation(GetParam() + " double vs logprobs.npy (transformers' mixed float64)", mixed);
  EXPECT_LT(exact, 1e-11);  // measured 2.5e-14 to 3.9e-14 (-march=native)
  EXPECT_LT(mixed, 3e-5);   // measured 5.9e-6 to 7.9e-6: transformers keeps RMSNorm, rotary, softmax in float32
}

// Catches: the prompt's rows scored as new tokens, the start token fed before the prompt, padding
// or batching changing results (all prompts run as one batch), the hypothesis holding the prompt.
TEST_P(LmCase, GreedyMatchesTransformers) {
  const auto m = ef::load_model<float>(dir());
  ef::generation_options o;
  o.max_new_tokens = 16;
  const auto results = ef::generate(m, lines("prompts.txt"), o);
  const auto expected = id_lines(dir() / "greedy.txt");
  ASSERT_EQ(results.size(), expected.size());
  for (std::size_t b = 0; b < expected.size(); ++b) EXPECT_EQ(results[b].best().tokens, expected[b]) << "prompt " << b;
}

// Catches: beam scores counting the prompt in the length, beams not sharing the prompt's cache rows
// after reorder (the prompt cached in slot 0 only), early stopping judged as without it.
TEST_P(LmCase, BeamSearchMatchesTransformers) {
  const auto m = ef::load_model<float>(dir());
  ef::generation_options o;
  o.max_new_tokens = 16;
  o.beam_size = 4;
  o.early_stopping = true;
  const auto results = ef::generate(m, lines("prompts.txt"), o);
  const auto expected = id_lines(dir() / "beam4.txt");
  ASSERT_EQ(results.size(), expected.size());
  for (std::size_t b = 0; b < expected.size(); ++b) EXPECT_EQ(results[b].best().tokens, expected[b]) << "prompt " << b;
}

// Catches: n-best hypotheses in the wrong order, a finished hypothesis dropped for a running one,
// scores divided by a length that counts the prompt (or omits the eos).
TEST_P(LmCase, BeamNBestMatchesTransformers) {
  const auto m = ef::load_model<float>(dir());
  ef::generation_options o;
  o.max_new_tokens = 16;
  o.beam_size = 4;
  o.num_return_sequences = 2;
  o.early_stopping = true;
  const auto results = ef::generate(m, lines("prompts.txt"), o);
  std::istringstream in(read_file(dir() / "beam4_nbest.txt"));
  std::string line;
  std::vector<std::size_t> seen(results.size(), 0);
  double worst = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    std::string prompt, score, ids;
    std::getline(fields, prompt, '\t');
    std::getline(fields, score, '\t');
    std::getline(fields, ids);
    const auto b = static_cast<std::size_t>(std::stoul(prompt));
    ASSERT_LT(b, results.size());
    const std::size_t r = seen[b]++;
    ASSERT_LT(r, results[b].hypotheses.size()) << "prompt " << b;
    std::vector<token_id> expected;
    std::istringstream id_stream(ids);
    for (token_id t; id_stream >> t;) expected.push_back(t);
    const auto& h = results[b].hypotheses[r];
    EXPECT_EQ(h.tokens, expected) << "prompt " << b << ", hypothesis " << r;
    worst = std::max(worst, std::fabs(h.score - std::stod(score)));
  }
  for (std::size_t b = 0; b < results.size(); ++b) EXPECT_EQ(seen[b], 2u) << "prompt " << b;
  print_deviation(GetParam() + " beam4 n-best scores vs transformers' sequences_scores", worst);
  EXPECT_LT(worst, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LmCase, ::testing::Values("llama", "llama_scaled", "mistral", "qwen2", "gpt2", "mixtral"));

// ---- mixtral: the router through the library's MoE layer --------------------------------------

/// Reads mixtral's teacher-forced pass with router statistics (logits kept).
template <class S>
ef::moe_router_stats mixtral_router_stats() {
  const auto m = ef::load_model<S>(lm_root() / "mixtral");
  ef::moe_router_stats stats;
  stats.keep_logits = true;
  stats.keep_choices = true;
  (void)m.score(ef::token_batch::from_sequences(id_lines(lm_root() / "mixtral" / "tgt.txt")), {.stats = &stats});
  return stats;
}

/// max |ours - ref| with ref [layers, tokens, experts] and ours one entry per layer.
double router_deviation(const ef::moe_router_stats& stats, const ef::tensor<double>& ref) {
  EXPECT_EQ(static_cast<index_t>(stats.layers().size()), ref.dim(0));
  double dev = 0;
  for (index_t l = 0; l < ref.dim(0) && l < static_cast<index_t>(stats.layers().size()); ++l) {
    const auto& st = stats.layers()[static_cast<std::size_t>(l)];
    EXPECT_EQ(static_cast<index_t>(st.logits.size()), ref.dim(1) * ref.dim(2)) << "layer " << l;
    for (index_t i = 0; i < ref.dim(1) * ref.dim(2) && i < static_cast<index_t>(st.logits.size()); ++i)
      dev = std::max(dev, std::fabs(st.logits[static_cast<std::size_t>(i)] - ref.data()[l * ref.dim(1) * ref.dim(2) + i]));
  }
  return dev;
}

// Catches: router logits of the wrong input (before the post-attention norm, or the residual
// stream), a router weight read transposed, tokens of the batch recorded in another order than
// packed, layer statistics overwritten by the other layer.
TEST(Lm, MixtralRouterLogitsMatchTransformers) {
  const double f = router_deviation(mixtral_router_stats<float>(), ef::io::read_npy<double>(lm_root() / "mixtral" / "router_logits.npy"));
  const auto exact_stats = mixtral_router_stats<double>();
  const double exact = router_deviation(exact_stats, ef::io::read_npy<double>(lm_root() / "mixtral" / "router_logits_exact_f64.npy"));
  print_deviation("mixtral router logits, float vs router_logits.npy", f);
  print_deviation("mixtral router logits, double vs router_logits_exact_f64.npy", exact);
  EXPECT_LT(f, 1e-4);
  EXPECT_LT(exact, 1e-11);
}

// Catches: statistics missing from the decoder-only path, a layer routing each token to fewer or
// more than k experts, counts of padding rows, every token sent to one expert (non-trivial routing).
TEST(Lm, MixtralRouterStatisticsAreRecorded) {
  const auto stats = mixtral_router_stats<float>();
  ASSERT_EQ(stats.layers().size(), 2u);
  for (std::size_t l = 0; l < 2; ++l) {
    const auto& st = stats.layers()[l];
    EXPECT_EQ(st.scope, "transformer.decoder.layers." + std::to_string(l));
    EXPECT_EQ(st.tokens, 37);  // 12 + 8 + 17 teacher-forced tokens
    EXPECT_EQ(st.k, 2);
    index_t sum = 0, used = 0;
    for (index_t c : st.counts) {
      sum += c;
      used += c > 0 ? 1 : 0;
    }
    EXPECT_EQ(sum, 37 * 2) << "layer " << l;
    EXPECT_GE(used, 3) << "layer " << l;
    ASSERT_EQ(st.choices.size(), 37u * 2u);
    for (index_t i = 0; i < 37; ++i) {  // the two chosen experts have the two largest logits
      const auto* h = st.logits.data() + i * 4;
      const index_t a = st.choices[static_cast<std::size_t>(2 * i)], b = st.choices[static_cast<std::size_t>(2 * i + 1)];
      EXPECT_NE(a, b);
      for (index_t e = 0; e < 4; ++e) {
        if (e != a && e != b) {
          EXPECT_LE(h[e], h[b]) << "layer " << l << ", token " << i;
        }
      }
      EXPECT_GE(h[a], h[b]);
    }
  }
}

// Catches: the top-k gate not renormalised as Mixtral does (p = softmax over all E, keep the top
// k, divide by their sum: weights p_e instead of p_e / sum), the experts' gate and up projections
// swapped, the gated expert run without silu. Computes Mixtral's formula by hand, in double, on
// layer 0 of the fixture and random inputs, against the library's moe_layer (top_k gate).
TEST(Lm, MixtralMoeIsSoftmaxTopKRenormalised) {
  using S = double;
  const ef::io::hf_directory dir(lm_root() / "mixtral");
  auto w = dir.read_weights<S>();
  const auto& c = dir.config();
  ASSERT_TRUE(c.moe);
  const auto gate_w = *w.find("transformer.decoder.layers.0.moe.gate.weight");  // [E, d]
  const auto layer = ef::moe_layer<S>::load(w, "transformer.decoder.layers.0", c, 0);
  ASSERT_TRUE(layer.gated());
  const index_t n = 9, d = c.d_model, E = layer.n_experts(), k = c.moe->top_k;
  ef::tensor<S> x({n, d}), out({n, d});  // [n, d_model]
  for (index_t i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.37 * double(i) + 0.1) * 1.5;
  ef::workspace<S> ws;
  const std::vector<index_t> offsets{0, n};
  layer(x.matrix(), out.matrix(), ef::forward_context{{offsets, {}, {}}, {}}, ws);
  double dev = 0, unnormalised = 0;
  for (index_t i = 0; i < n; ++i) {
    Eigen::VectorXd h = gate_w.matrix() * x.matrix().row(i).transpose();  // [E]
    Eigen::VectorXd p = (h.array() - h.maxCoeff()).exp();
    p /= p.sum();  // softmax over all E (MixtralSparseMoeBlock)
    std::vector<index_t> order(static_cast<std::size_t>(E));
    for (index_t e = 0; e < E; ++e) order[static_cast<std::size_t>(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return p[a] > p[b]; });
    double kept = 0;
    for (index_t j = 0; j < k; ++j) kept += p[order[static_cast<std::size_t>(j)]];
    Eigen::RowVectorXd y = Eigen::RowVectorXd::Zero(d), y_raw = Eigen::RowVectorXd::Zero(d);
    for (index_t j = 0; j < k; ++j) {
      const auto& ex = layer.gated_expert(order[static_cast<std::size_t>(j)]);
      const Eigen::RowVectorXd xi = x.matrix().row(i);
      Eigen::RowVectorXd g = xi * ex.gate.weight.matrix().transpose(), u = xi * ex.up.weight.matrix().transpose();
      g = (g.array() / (1.0 + (-g.array()).exp()) * u.array()).matrix();
      const Eigen::RowVectorXd e_out = g * ex.down.weight.matrix().transpose();
      y += (p[order[static_cast<std::size_t>(j)]] / kept) * e_out;  // renormalised to sum 1
      y_raw += p[order[static_cast<std::size_t>(j)]] * e_out;
    }
    dev = std::max(dev, (out.matrix().row(i) - y).cwiseAbs().maxCoeff());
    unnormalised = std::max(unnormalised, (y_raw - y).cwiseAbs().maxCoeff());
  }
  print_deviation("mixtral MoE layer vs softmax-top-k-renormalise by hand (double)", dev);
  EXPECT_LT(dev, 1e-12);
  EXPECT_GT(unnormalised, 1e-2);  // the renormalisation matters on these inputs: the test can see it
}

// Catches: a prompt block attended without the causal mask, or its keys rotated at positions 0..n-1
// of the block instead of after what the slot holds: one-pass prefill must equal token-by-token.
TEST(Lm, PrefillInOnePassEqualsTokenByToken) {
  const auto m = ef::load_model<float>(lm_root() / "llama");
  const auto prompts = id_lines(lm_root() / "llama" / "prompts.txt");
  const auto& prompt = prompts.back();
  const index_t n = static_cast<index_t>(prompt.size()), V = m.config().tgt_vocab_size;
  const ef::token_batch one = ef::token_batch::from_sequences({prompt});
  const auto memory = m.encode(one);
  ef::kv_cache<float> block, single;
  m.start_decoding(memory, 1, n + 1, block);
  m.start_decoding(memory, 1, n + 1, single);
  ef::tensor<float> all({n, V}), step({1, V});
  const index_t slot = 0;
  m.decode_step(block, ef::decode_request{std::span(&slot, 1), prompt, std::span(&n, 1), ef::step_output::logits, {}}, all.matrix());
  for (index_t i = 0; i < n; ++i) {
    m.decode_step(single, std::span(&slot, 1), std::span(&prompt[static_cast<std::size_t>(i)], 1), step.matrix(),
                  ef::step_output::logits);
    double dev = 0;
    for (index_t v = 0; v < V; ++v) dev = std::max(dev, std::fabs(double(all.data()[i * V + v]) - double(step.data()[v])));
    // Raw logits (magnitudes ~10): measured 5.3e-6 with -march=native, 1.2e-5 portable (another
    // summation order in the block's GEMM than in the one-row GEMV); the wrong implementations named
    // above move them by 1e-1 and more.
    EXPECT_LT(dev, 5e-5) << "prompt row " << i;
    if (i == n - 1) print_deviation("prefill vs token-by-token, last prompt row", dev);
  }
  EXPECT_EQ(block.steps(0), n);
}

// Seeded sampling of a decoder-only model is reproducible and does not depend on the batch: the
// same seed gives the same continuations again, each prompt alone (stream_offset = its index) and a
// later part of the batch (stream_offset = its first index) give what the whole batch gave, and
// another seed gives other continuations; the draws differ from greedy, so the sampler is used.
// Catches: one random stream shared by the batch (outputs change with batch composition), prompts of
// different lengths padded inside the model (a shorter prompt alone would then differ), a sampler
// state carried from one generate() to the next, the seed ignored. llama (GQA, rotary), gpt2
// (learned positions), mixtral (top-2 MoE: expert grouping must not depend on the batch).
TEST(Lm, SeededSamplingIsReproducibleAndIndependentOfTheBatch) {
  ef::sampling::sampling_options so;
  so.temperature = 1.3f;
  so.top_k = 12;
  so.top_p = 0.95f;
  const auto chain = ef::sampling::make_chain(so);
  for (const std::string name : {"llama", "gpt2", "mixtral"}) {
    const auto m = ef::load_model<float>(lm_root() / name);
    const auto prompts = id_lines(lm_root() / name / "prompts.txt");
    ASSERT_GE(prompts.size(), 3u) << name;
    ef::generation_options o;
    o.max_new_tokens = 12;
    o.sampler = &chain;
    o.seed = 2026;
    const auto batch = ef::generate(m, ef::token_batch::from_sequences(prompts), o);
    const auto again = ef::generate(m, ef::token_batch::from_sequences(prompts), o);
    const std::vector<std::vector<token_id>> tail(prompts.begin() + 1, prompts.end());
    auto tail_opt = o;
    tail_opt.stream_offset = 1;
    const auto later = ef::generate(m, ef::token_batch::from_sequences(tail), tail_opt);
    ef::generation_options greedy;
    greedy.max_new_tokens = 12;
    const auto argmax = ef::generate(m, ef::token_batch::from_sequences(prompts), greedy);
    o.seed = 7;
    const auto other = ef::generate(m, ef::token_batch::from_sequences(prompts), o);
    o.seed = 2026;
    bool differs_from_greedy = false, differs_by_seed = false;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      const auto& got = batch[b].best().tokens;
      EXPECT_EQ(again[b].best().tokens, got) << name << " prompt " << b;
      auto alone_opt = o;
      alone_opt.stream_offset = b;
      const auto alone = ef::generate(m, ef::token_batch::from_sequences({prompts[b]}), alone_opt);
      EXPECT_EQ(alone[0].best().tokens, got) << name << " prompt " << b << " alone";
      if (b > 0) {
        EXPECT_EQ(later[b - 1].best().tokens, got) << name << " prompt " << b << " in a later batch";
      }
      differs_from_greedy |= got != argmax[b].best().tokens;
      differs_by_seed |= got != other[b].best().tokens;
    }
    EXPECT_TRUE(differs_from_greedy) << name;
    EXPECT_TRUE(differs_by_seed) << name;
  }
}

// decode_request::skip (generate() skips all but a prompt's last row): the rows kept equal the same
// rows of the full request, the cache advances over every row, and a skip that would leave a slot
// without its last row is refused by name. Two slots of different lengths, so rows must be taken
// from the right slot. Catches: kept rows taken from the front of the block instead of each slot's
// end, the final norm applied to rows not yet moved, the cache left short of the skipped rows.
TEST(Lm, SkippedRowsGetNoDistributionAndTheOthersAreUnchanged) {
  const auto m = ef::load_model<float>(lm_root() / "llama");
  const auto prompts = id_lines(lm_root() / "llama" / "prompts.txt");
  const std::vector<token_id>& a = prompts[1];
  const std::vector<token_id>& b = prompts[2];
  const index_t na = static_cast<index_t>(a.size()), nb = static_cast<index_t>(b.size()), V = m.config().tgt_vocab_size;
  std::vector<token_id> tokens(a);
  tokens.insert(tokens.end(), b.begin(), b.end());
  const ef::token_batch two = ef::token_batch::from_sequences({a, b});
  const auto memory = m.encode(two);
  ef::kv_cache<float> full, skipped;
  m.start_decoding(memory, 1, std::max(na, nb) + 1, full);
  m.start_decoding(memory, 1, std::max(na, nb) + 1, skipped);
  const std::vector<index_t> slots = {0, 1}, counts = {na, nb}, skip = {na - 1, 1};
  ef::tensor<float> all({na + nb, V}), kept({1 + nb - 1, V});
  m.decode_step(full, ef::decode_request{slots, tokens, counts, ef::step_output::log_probs, {}}, all.matrix());
  m.decode_step(skipped, ef::decode_request{slots, tokens, counts, ef::step_output::log_probs, {}, skip}, kept.matrix());
  const std::vector<index_t> rows_kept = {na - 1};  // slot 0's last row, then slot 1's rows 1 .. nb-1
  std::vector<index_t> want = rows_kept;
  for (index_t r = 1; r < nb; ++r) want.push_back(na + r);
  ASSERT_EQ(static_cast<index_t>(want.size()), kept.shape().dims()[0]);
  for (std::size_t k = 0; k < want.size(); ++k) {
    double dev = 0;
    for (index_t v = 0; v < V; ++v) dev = std::max(dev, std::fabs(double(kept.data()[index_t(k) * V + v]) - double(all.data()[want[k] * V + v])));
    // The same sums, maybe in another order: the output projection is Eigen's GEMM over 12 rows here
    // and 19 there, and with AVX-512 its remainder rows take other kernels (measured 1.9e-6, one
    // float ulp of a log-probability near -20; 0 on an AVX2 host). A row from the wrong slot or
    // position is off by ~1.
    EXPECT_LT(dev, 1e-5) << "kept row " << k;
  }
  EXPECT_EQ(skipped.steps(0), na);
  EXPECT_EQ(skipped.steps(1), nb);
  ef::kv_cache<float> fresh;
  m.start_decoding(memory, 1, std::max(na, nb) + 1, fresh);
  const std::vector<index_t> bad = {na, 0};
  EIGENFORMER_EXPECT_THROW_WITH(
      m.decode_step(fresh, ef::decode_request{slots, tokens, counts, ef::step_output::log_probs, {}, bad}, all.matrix()),
      ef::invalid_argument, "skip");
  EXPECT_EQ(fresh.steps(0), 0);  // refused before anything changed
}

// Catches: a KV cache sized for every query head (n_heads * d_head per token) instead of the KV heads.
TEST(Lm, GroupedQueryCacheHoldsOnlyKvHeads) {
  for (const auto& [name, kv_heads] : {std::pair<std::string, index_t>{"llama", 2}, {"llama_scaled", 1}}) {
    const auto m = ef::load_model<float>(lm_root() / name);
    EXPECT_EQ(m.config().kv_heads(), kv_heads) << name;
    const auto memory = m.encode(ef::token_batch::from_sequences({{1, 5}}));
    ef::kv_cache<float> cache;
    m.start_decoding(memory, 1, 8, cache);
    EXPECT_EQ(cache.kv_dim(), kv_heads * m.config().d_head()) << name;
    EXPECT_EQ(cache.self_kv(0).dim(1), 2 * kv_heads * m.config().d_head()) << name;
    // 16 more steps cost, per layer (2), 16 key and value rows of kv_dim floats, plus 16 scores per
    // thread (each thread's block of scores is whole 64-byte lines: 32 -> 48 steps adds one line).
    const std::uint64_t per_16_steps = m.cache_bytes(1, 0, 0, 1, 48) - m.cache_bytes(1, 0, 0, 1, 32);
    EXPECT_EQ(per_16_steps, 16u * 2u * 2u * std::uint64_t(kv_heads * 8) * sizeof(float) +
                                16u * std::uint64_t(ef::num_threads()) * sizeof(float))
        << name;
  }
}

// Catches: kv_bytes_per_token counting the query heads (llama: 4 heads, 512 bytes) instead of the
// 2 KV heads, leaving out the value half or a layer, or a fixed 4-byte element (double: 512, not 256).
// Hand-computed: 2 layers x (key + value) x 2 KV heads x d_head 8 x 4 bytes = 256 bytes per token.
TEST(Lm, KvBytesPerTokenCountsKvHeads) {
  const auto m = ef::load_model<float>(lm_root() / "llama");
  ASSERT_EQ(m.config().n_heads, 4);
  EXPECT_EQ(m.kv_bytes_per_token(), 256u);
  EXPECT_EQ(ef::load_model<double>(lm_root() / "llama").kv_bytes_per_token(), 512u);
  // llama_scaled: multi-query, one KV head.
  const auto mq = ef::load_model<float>(lm_root() / "llama_scaled");
  EXPECT_EQ(mq.kv_bytes_per_token(), std::uint64_t(mq.config().n_decoder_layers) * 2u * 1u * std::uint64_t(mq.config().d_head()) * 4u);
}

// Catches: decoder-only fields lost or invented by to_json/from_json (and encoder-decoder files
// changed by them: the new keys are written only when set).
TEST(Lm, ConfigRoundTrip) {
  const ef::io::hf_directory dir(lm_root() / "qwen2");
  const auto& c = dir.config();
  EXPECT_TRUE(c.decoder_only());
  EXPECT_EQ(c.attn_bias, ef::attention_bias::qkv);
  const auto back = ef::model_config::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
  const ef::model_config plain;
  for (const char* key : {"n_kv_heads", "normalization", "feed_forward", "attention_bias", "rope_theta", "rope_scaling_factor"})
    EXPECT_FALSE(plain.to_json().contains(key)) << key;
  const ef::io::hf_directory scaled(lm_root() / "llama_scaled");
  EXPECT_EQ(scaled.config().rope_scaling_factor, 2.0);
  EXPECT_EQ(scaled.config().rope_theta, 500000.0);
  EXPECT_TRUE(scaled.config().tie_output);
  // gpt2: learned positions from 0 (no offset), LayerNorm, dense gelu_tanh; mixtral: gated experts in a top_k MoE.
  for (const char* name : {"gpt2", "mixtral"}) {
    const auto cfg = ef::io::hf_directory(lm_root() / name).config();  // a copy: the directory is a temporary
    EXPECT_EQ(ef::model_config::from_json(cfg.to_json()).to_json(), cfg.to_json()) << name;
  }
  const auto gpt2 = ef::io::hf_directory(lm_root() / "gpt2").config();
  EXPECT_EQ(gpt2.positional, ef::positional_encoding::learned);
  EXPECT_EQ(gpt2.position_offset, 0);
  EXPECT_EQ(gpt2.max_positions, 64);
  EXPECT_EQ(gpt2.d_ff, 128);  // n_inner null: 4 n_embd
  EXPECT_EQ(gpt2.activation_kind, ef::activation::gelu_tanh);
  EXPECT_EQ(gpt2.norm, ef::normalization::layer_norm);
  EXPECT_TRUE(gpt2.tie_output);
  EXPECT_EQ(gpt2.eos_id, 95);
  const auto mixtral = ef::io::hf_directory(lm_root() / "mixtral").config();
  ASSERT_TRUE(mixtral.moe);
  EXPECT_EQ(mixtral.moe->n_experts, 4);
  EXPECT_EQ(mixtral.moe->top_k, 2);
  EXPECT_EQ(mixtral.moe->gate_kind, ef::gate::top_k);
  EXPECT_EQ(mixtral.moe->decoder_layers, (std::vector<index_t>{0, 1}));
  EXPECT_EQ(mixtral.ff, ef::feed_forward_kind::gated);
}

// Catches: inconsistent decoder-only configs accepted (and run wrongly) instead of refused by name.
TEST(Lm, ValidateNamesTheKey) {
  auto c = ef::io::hf_directory(lm_root() / "llama").config();
  auto bad = c;
  bad.n_kv_heads = 3;
  EIGENFORMER_EXPECT_THROW_WITH(bad.validate(), ef::config_error, "config.n_kv_heads: 3 does not divide n_heads 4");
  bad = c;
  bad.n_heads = 32;  // d_head 1: odd
  EIGENFORMER_EXPECT_THROW_WITH(bad.validate(), ef::config_error, "needs an even head dimension");
  bad = c;
  bad.n_encoder_layers = 1;
  EIGENFORMER_EXPECT_THROW_WITH(bad.validate(), ef::config_error, "config.n_encoder_layers: 1, expected 0 (decoder-only)");
}

// Catches: configs whose computation we do not implement loaded and run as if they were plain
// Llama (each error a line naming the key).
TEST(Lm, HostileConfigsNameTheKey) {
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("llama", "kv_heads_3", [](auto& j) { j["num_key_value_heads"] = 3; })),
      ef::config_error, "num_key_value_heads: 3, expected a divisor of num_attention_heads (4)");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(edited_copy("llama", "rope_dynamic", [](auto& j) {
                                  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
                                })),
                                ef::config_error, "rope_scaling: type 'dynamic' is not supported");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("mistral", "window", [](auto& j) { j["sliding_window"] = 16; })),
      ef::config_error, "sliding_window: 16, expected null or at least max_position_embeddings 64");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("qwen2", "qwen_window", [](auto& j) { j["use_sliding_window"] = true; })),
      ef::config_error, "use_sliding_window: true, expected false");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(edited_copy("llama", "mlp_bias", [](auto& j) { j["mlp_bias"] = true; })),
                                ef::config_error, "mlp_bias: true, expected false");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(edited_copy("llama", "new_key", [](auto& j) { j["rope_foo"] = 1; })),
                                ef::config_error, "key 'rope_foo' (1) is not supported for model_type llama");
  // GPT-2: each option that changes GPT2Attention or GPT2MLP beyond what we compute, by key.
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("gpt2", "inv_layer", [](auto& j) { j["scale_attn_by_inverse_layer_idx"] = true; })),
      ef::config_error, "scale_attn_by_inverse_layer_idx: true, expected false");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("gpt2", "upcast", [](auto& j) { j["reorder_and_upcast_attn"] = true; })),
      ef::config_error, "reorder_and_upcast_attn: true, expected false");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("gpt2", "unscaled", [](auto& j) { j["scale_attn_weights"] = false; })),
      ef::config_error, "scale_attn_weights: false, expected true");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("gpt2", "quick_gelu", [](auto& j) { j["activation_function"] = "quick_gelu"; })),
      ef::config_error, "activation_function: \"quick_gelu\", expected gelu_new");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("gpt2", "cross", [](auto& j) { j["add_cross_attention"] = true; })),
      ef::config_error, "add_cross_attention: true, expected false");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(edited_copy("gpt2", "gpt2_key", [](auto& j) { j["n_foo"] = 2; })),
                                ef::config_error, "key 'n_foo' (2) is not supported for model_type gpt2");
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(edited_copy("gpt2", "no_embd", [](auto& j) { j["n_embd"] = "32"; })),
                                ef::config_error, "n_embd: \"32\", expected an integer");
  // Mixtral: router jitter (a training device) and k outside 1 .. E.
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("mixtral", "jitter", [](auto& j) { j["router_jitter_noise"] = 0.1; })),
      ef::config_error, "router_jitter_noise: 0.1, expected 0");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("mixtral", "k5", [](auto& j) { j["num_experts_per_tok"] = 5; })),
      ef::config_error, "num_experts_per_tok: 5, expected 1 to num_local_experts (4)");
  EIGENFORMER_EXPECT_THROW_WITH(
      ef::load_model<float>(edited_copy("mixtral", "no_experts", [](auto& j) { j.erase("num_local_experts"); })),
      ef::config_error, "num_local_experts: missing, expected an integer");
  // Families not supported: refused by model_type, naming the supported ones.
  EIGENFORMER_EXPECT_THROW_WITH(ef::load_model<float>(edited_copy("llama", "phi", [](auto& j) { j["model_type"] = "phi"; })),
                                ef::config_error,
                                "model_type 'phi' is not supported, expected marian, bart, mbart or m2m_100 (encoder-decoder); "
                                "llama, mistral, qwen2, mixtral or gpt2 (decoder-only)");
}

// Catches: generate() on a decoder-only model accepting an empty prompt (nothing to predict from) or
// score(src, tgt) silently running the encoder-decoder path.
TEST(Lm, DecoderOnlyCallsRefuseMisuse) {
  const auto m = ef::load_model<float>(lm_root() / "llama");
  ef::generation_options o;
  o.max_new_tokens = 4;
  EIGENFORMER_EXPECT_THROW_WITH(ef::generate(m, ef::token_batch::from_sequences({{1, 5}, {}}), o), ef::invalid_argument,
                                "prompt 1 is empty");
  const auto t = ef::token_batch::from_sequences({{1, 5}});
  EIGENFORMER_EXPECT_THROW_WITH(m.score(t, t), ef::invalid_argument, "use score(tgt)");
}

// ---------------------------------------------------------------------------------------------
// CTranslate2 conversions of llama and gpt2 (TransformerDecoderSpec: <case>_ct2_{float32,int8},
// TransformersConverter output, what CTranslate2 4.5.0's Generator computed in ct2_greedy.txt and
// ct2_reference.json).

nlohmann::json ct2_reference(const fs::path& dir) {
  std::ifstream in(dir / "ct2_reference.json");
  return nlohmann::json::parse(in);
}

/// Log-probabilities of `ids` after `prompt`, with the eos CTranslate2 counts when the output ended
/// before `limit` tokens: CTranslate2's greedy score is their mean.
std::vector<double> continuation_logprobs(const ef::model<float>& m, const std::vector<token_id>& prompt,
                                          const std::vector<token_id>& ids, std::size_t limit) {
  std::vector<token_id> seq = prompt;
  seq.insert(seq.end(), ids.begin(), ids.end());
  if (ids.size() < limit) seq.push_back(m.config().eos_id);
  const auto lp = m.score(ef::token_batch::from_sequences({seq}));
  const index_t V = lp.dim(2);
  std::vector<double> out;
  for (std::size_t t = prompt.size(); t < seq.size(); ++t) out.push_back(lp.data()[static_cast<index_t>(t - 1) * V + seq[t]]);
  return out;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

class Ct2LmCase : public ::testing::TestWithParam<std::string> {
 protected:
  fs::path hf() const { return lm_root() / GetParam(); }
  fs::path ct2(const char* q) const { return lm_root() / (GetParam() + "_ct2_" + q); }
  ef::token_batch lines(const char* file) const { return ef::token_batch::from_sequences(id_lines(hf() / file)); }
};

// Catches (float32 conversions): linear_0 (gate) and linear_0_noact (up) swapped, the fused
// linear_0 split with n_heads instead of num_heads_kv key/value rows, RMSNorm taken for LayerNorm
// (or the reverse), GPT-2's tied projection not detected (the alias) or its positions counted from
// 1, a wrong epsilon; and a float32 conversion held in int8 because its int8 attribute scalars
// (activation, pre_norm, ...) were taken for int8 weights. Same weights as the Hugging Face original:
// our two loads agree to float rounding, and both to transformers' float64 log-probs within 1e-4.
TEST_P(Ct2LmCase, Float32LogProbsEqualTheHuggingFaceOriginal) {
  const auto m = ef::load_model<float>(ct2("float32"));
  EXPECT_EQ(m.weights(), ef::weight_type::float32);
  const auto tgt = lines("tgt.txt");
  const auto ours = m.score(tgt);
  const auto original = ef::load_model<float>(hf()).score(tgt);
  ASSERT_EQ(ours.size(), original.size());
  double same = 0;
  for (index_t i = 0; i < ours.size(); ++i) same = std::max(same, double(std::fabs(ours.data()[i] - original.data()[i])));
  const double dev = max_deviation(ours, ef::io::read_npy<double>(hf() / "logprobs.npy"), tgt);
  print_deviation(GetParam() + "_ct2_float32 vs the Hugging Face original loaded by us", same);
  print_deviation(GetParam() + "_ct2_float32 vs logprobs.npy", dev);
  EXPECT_LT(same, 1e-6);  // measured 0 (the same weights, the same computation)
  EXPECT_LT(dev, 1e-4);   // measured 1.7e-5 (llama), 1.1e-5 (gpt2)
}

// Catches: the prompt scored or fed differently from CTranslate2's Generator (include_prompt_in_result
// false), eos (config.json eos_token) mapped to the wrong id, a greedy score that is a sum or
// excludes the eos (CTranslate2's is the mean log-probability, eos included).
TEST_P(Ct2LmCase, Float32GreedyEqualsCTranslate2) {
  const auto m = ef::load_model<float>(ct2("float32"));
  ef::generation_options o;
  o.max_new_tokens = 16;
  const auto results = ef::generate(m, lines("prompts.txt"), o);
  const auto expected = id_lines(ct2("float32") / "ct2_greedy.txt");
  const nlohmann::json r = ct2_reference(ct2("float32"));
  ASSERT_EQ(results.size(), expected.size());
  double worst = 0;
  for (std::size_t b = 0; b < expected.size(); ++b) {
    EXPECT_EQ(results[b].best().tokens, expected[b]) << "prompt " << b;
    worst = std::max(worst, std::fabs(results[b].best().score - r.at("greedy_scores").at(b).get<double>()));
  }
  print_deviation(GetParam() + "_ct2_float32 greedy scores vs CTranslate2's", worst);
  EXPECT_LT(worst, 1e-5);  // measured about 1e-6
}

// float16 conversions: CTranslate2 on a CPU computes a float16 model in float32 (its weights
// widened), which is what load_model does by default (cli.md: float32 unless the model is stored in
// 8 bits); held as float16 (--weights float16) the kernel widens the same values exactly, so only the
// summation order differs. Catches: float16 bits read as bfloat16 or as integers, the byte order of
// the halves swapped, a float16 conversion taken for an int8 one, the kernel's widening wrong.
TEST_P(Ct2LmCase, Float16GreedyEqualsCTranslate2) {
  const auto widened = ef::load_model<float>(ct2("float16"));
  EXPECT_EQ(widened.weights(), ef::weight_type::float32);
  ef::load_options lo;
  lo.weights = ef::weight_type::float16;
  const auto held = ef::load_model<float>(ct2("float16"), lo);
  EXPECT_EQ(held.weights(), ef::weight_type::float16);
  ef::generation_options o;
  o.max_new_tokens = 16;
  const auto expected = id_lines(ct2("float16") / "ct2_greedy.txt");
  const nlohmann::json r = ct2_reference(ct2("float16"));
  for (const auto* m : {&widened, &held}) {
    const auto results = ef::generate(*m, lines("prompts.txt"), o);
    ASSERT_EQ(results.size(), expected.size());
    double worst = 0;
    for (std::size_t b = 0; b < expected.size(); ++b) {
      EXPECT_EQ(results[b].best().tokens, expected[b]) << "prompt " << b;
      worst = std::max(worst, std::fabs(results[b].best().score - r.at("greedy_scores").at(b).get<double>()));
    }
    const bool kernel = m == &held;
    print_deviation(GetParam() + "_ct2_float16 greedy scores vs CTranslate2's" + (kernel ? " (held as float16)" : ""), worst);
    EXPECT_LT(worst, 1e-5);
  }
}

// Catches: int8 weights read without their per-row <name>_scale (or with it per column), an int8
// conversion not held as int8 by default. With load_options::weights float32 the int8 values /
// scale are computed in float32, which is what CTranslate2 did for greedy_compute_type_float32
// (the same model.bin loaded with compute_type float32): the same ids.
TEST_P(Ct2LmCase, Int8DequantisedGreedyEqualsCTranslate2Float32Run) {
  EXPECT_EQ(ef::load_model<float>(ct2("int8")).weights(), ef::weight_type::int8);
  ef::load_options lo;
  lo.weights = ef::weight_type::float32;
  const auto m = ef::load_model<float>(ct2("int8"), lo);
  ef::generation_options o;
  o.max_new_tokens = 16;
  const auto results = ef::generate(m, lines("prompts.txt"), o);
  const nlohmann::json r = ct2_reference(ct2("int8"));
  const auto& expected = r.at("greedy_compute_type_float32");
  ASSERT_EQ(results.size(), expected.size());
  for (std::size_t b = 0; b < expected.size(); ++b)
    EXPECT_EQ(results[b].best().tokens, expected[b].get<std::vector<token_id>>()) << "prompt " << b;
}

// int8 conversions held in int8 (the default; activations quantised per row as CTranslate2's
// int8_float32). CTranslate2's own int8 run is far from transformers on these random models: its
// score_batch differs from transformers' float64 log-probs by up to 7.1 (llama) and 5.8 (gpt2)
// (ct2_reference.json), and its int8 greedy leaves transformers' at the first token for most prompts.
// Ours stays closer. Measured: |ours - logprobs.npy| 0.97 (llama), 0.44 (gpt2); the mean log-prob
// we give CTranslate2's int8 greedy outputs vs its greedy_scores, up to 0.80 (llama), 0.56 (gpt2).
// Bounds about twice those. Catches: scales inverted (w * scale), per-column scales, the int8
// embeddings or projection left quantised as raw integers (log-probs off by far more than these).
TEST_P(Ct2LmCase, Int8ScoresAgreeWithTheirBounds) {
  const auto m = ef::load_model<float>(ct2("int8"));
  const auto tgt = lines("tgt.txt");
  const double dev = max_deviation(m.score(tgt), ef::io::read_npy<double>(hf() / "logprobs.npy"), tgt);
  const nlohmann::json r = ct2_reference(ct2("int8"));
  const auto prompts = id_lines(hf() / "prompts.txt");
  const auto expected = id_lines(ct2("int8") / "ct2_greedy.txt");
  ASSERT_EQ(expected.size(), prompts.size());
  double worst = 0;
  for (std::size_t b = 0; b < expected.size(); ++b) {
    const double ours = mean(continuation_logprobs(m, prompts[b], expected[b], 16));
    worst = std::max(worst, std::fabs(ours - r.at("greedy_scores").at(b).get<double>()));
  }
  print_deviation(GetParam() + "_ct2_int8 (int8) vs logprobs.npy", dev);
  print_deviation(GetParam() + "_ct2_int8 (int8) mean log-prob of CTranslate2's int8 greedy vs its greedy_scores", worst);
  const bool llama = GetParam() == "llama";
  EXPECT_LT(dev, llama ? 2.0 : 0.9);
  EXPECT_LT(worst, llama ? 1.6 : 1.2);
}

// Where CTranslate2's int8 greedy output still equals transformers' (a prefix: up to its first
// differing token), ours in int8 must equal it; past it the two int8 computations may part (their
// quantisation differs by more than these margins). Catches an int8 model whose first steps already
// differ from both references (e.g. the quantised prompt processed with the wrong scales).
TEST_P(Ct2LmCase, Int8GreedyEqualsCTranslate2WhereTheMarginAllows) {
  const auto m = ef::load_model<float>(ct2("int8"));
  ef::generation_options o;
  o.max_new_tokens = 16;
  const auto results = ef::generate(m, lines("prompts.txt"), o);
  const auto expected = id_lines(ct2("int8") / "ct2_greedy.txt");
  const auto transformers = id_lines(hf() / "greedy.txt");
  ASSERT_EQ(results.size(), expected.size());
  std::size_t compared = 0;
  for (std::size_t b = 0; b < expected.size(); ++b) {
    std::size_t n = 0;
    while (n < expected[b].size() && n < transformers[b].size() && expected[b][n] == transformers[b][n]) ++n;
    compared += n;
    const auto& got = results[b].best().tokens;
    ASSERT_GE(got.size(), n) << "prompt " << b;
    EXPECT_EQ(std::vector<token_id>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(n)),
              std::vector<token_id>(expected[b].begin(), expected[b].begin() + static_cast<std::ptrdiff_t>(n)))
        << "prompt " << b << " (first " << n << " tokens)";
  }
  // gpt2: 10 tokens (0, 5, 4, 1 per prompt). llama: CTranslate2's int8 greedy leaves transformers' at
  // the first token of every prompt, so there is nothing to compare: reported as skipped, not passed
  // (Int8ScoresAgreeWithTheirBounds covers llama's int8).
  if (compared == 0) GTEST_SKIP() << "no token where CTranslate2's int8 greedy equals transformers'";
  if (GetParam() == "gpt2") {
    EXPECT_EQ(compared, 10u);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Ct2LmCase, ::testing::Values("llama", "gpt2"));

/// A copy of lm/<name> whose model.bin has the int8 scalar attributes `attrs` set to `value`.
fs::path ct2_with_attribute(const std::string& name, const std::vector<std::string>& attrs, char value) {
  const fs::path dst = fs::path(EIGENFORMER_TEST_TMP) / "lm" / (name + "_" + std::to_string(int(value)));
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const char* f : {"config.json", "vocabulary.json", "model.bin"}) fs::copy(lm_root() / name / f, dst / f);
  std::string b = read_file(dst / "model.bin");
  for (const auto& attr : attrs) {
    const std::string key = attr + '\0';
    const std::size_t at = b.find(key);
    EXPECT_NE(at, std::string::npos) << attr;
    if (at == std::string::npos) return dst;
    const std::size_t v = at + key.size() + 1 + 1 + 4;  // rank 0, dtype int8, byte count 1, the value
    EXPECT_EQ(b[at + key.size()], '\0');
    EXPECT_EQ(b[at + key.size() + 1], '\1');
    b[v] = value;
  }
  write_file(dst / "model.bin", b);
  return dst;
}

// Catches: an attribute value we do not compute accepted silently: the interleaved rotary layout
// (CTranslate2 rotating pairs 2i, 2i+1: q/k rows permuted), ALiBi, post-norm; each refused naming the
// variable; and layers that disagree (one value per model).
TEST(Lm, Ct2DecoderRefusesUnsupportedAttributes) {
  const std::string rot0 = "decoder/layer_0/self_attention/rotary_interleave";
  const std::string rot1 = "decoder/layer_1/self_attention/rotary_interleave";
  EIGENFORMER_EXPECT_THROW_WITH((void)ef::load_model<float>(ct2_with_attribute("llama_ct2_float32", {rot0, rot1}, 1)),
                                ef::config_error, "variable '" + rot0 + "': 1.000000, expected 0 (the rotate-half layout");
  EIGENFORMER_EXPECT_THROW_WITH((void)ef::load_model<float>(ct2_with_attribute("llama_ct2_float32", {rot1}, 1)),
                                ef::config_error, "variable '" + rot1 + "': 1.000000, expected the value of layer 0");
  EIGENFORMER_EXPECT_THROW_WITH((void)ef::load_model<float>(ct2_with_attribute("gpt2_ct2_float32", {"decoder/alibi"}, 1)),
                                ef::config_error, "variable 'decoder/alibi'");
  EIGENFORMER_EXPECT_THROW_WITH((void)ef::load_model<float>(ct2_with_attribute("gpt2_ct2_float32", {"decoder/pre_norm"}, 0)),
                                ef::config_error, "variable 'decoder/pre_norm'");
}

}  // namespace
