// Hugging Face model directories (io/hf_directory.hpp) against what transformers 4.46.3 computed on
// the same weights: tests/fixtures/hf, written by tools/hf/make_hf_fixtures.py (its README gives the
// layout). One folder per case, each a save_pretrained() directory of a small random-weight model
// covering its family's distinct features, with the reference outputs beside it.
#include <eigenformer/eigenformer.hpp>
#include <eigenformer/io/npy.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fixture_util.hpp"
#include "support/hf_fixtures.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
namespace fs = std::filesystem;
using ef::index_t;
using ef::token_id;
using namespace ef::testing;

namespace {

// The cases transformers generated (folders holding config.json and reference outputs).
const std::vector<std::string> cases = {"marian", "marian_unshared", "bart", "bart_scaled", "mbart", "m2m100"};
constexpr index_t max_new_tokens = 20;  // manifest.json: generate(max_new_tokens=20)

}  // namespace

// Teacher-forced log-probabilities equal transformers' (float64 reference) within 1e-4 in float and
// 1e-5 in double (transformers rounds the sinusoid tables of Marian and M2M100 to float32 even in
// float64). Catches any mapping or semantic slip: a wrong layer-norm placement, the q/k/v rows
// in another order, positions from the wrong offset or layout, a missing layernorm_embedding,
// final_logits_bias or embedding scale, the wrong activation, untied or unshared tables.
TEST(HuggingFace, TeacherForcedLogProbsEqualTransformers) {
  for (const auto& name : cases) {
    SCOPED_TRACE(name);
    const fs::path dir = hf_root() / name;
    const auto src = ef::token_batch::from_sequences(id_lines(dir / "src.txt"));
    const auto tgt = ef::token_batch::from_sequences(id_lines(dir / "tgt.txt"));
    const auto expected = ef::io::read_npy<double>(dir / "logprobs.npy");
    const auto f = ef::load_model<float>(dir);
    const auto d = ef::load_model<double>(dir);
    const auto lf = f.score(src, tgt);
    const auto ld = d.score(src, tgt);
    ASSERT_EQ(lf.shape(), expected.shape());
    double worst_f = 0, worst_d = 0;
    for (index_t i = 0; i < expected.size(); ++i) {
      worst_f = std::max(worst_f, std::abs(double(lf.data()[i]) - expected.data()[i]));
      worst_d = std::max(worst_d, std::abs(ld.data()[i] - expected.data()[i]));
    }
    // The measured margin, for docs/models.md's table.
    std::printf("[ measured ] %s: largest |log-prob - reference| float %.1e, double %.1e\n", name.c_str(), worst_f, worst_d);
    EXPECT_LT(worst_f, 1e-4);
    EXPECT_LT(worst_d, 1e-5);
  }
}

// Greedy ids equal transformers' generate() (decoder start and eos stripped, a forced first token
// kept), at max_new_tokens 20 including the forced token: the fixtures keep every greedy margin above
// 0.05, far beyond float rounding. Catches a wrong decoder start token, a forced_bos_token_id not
// applied (m2m100, bart), and a different length limit.
TEST(HuggingFace, GreedyIdsEqualTransformers) {
  for (const auto& name : cases) {
    SCOPED_TRACE(name);
    const fs::path dir = hf_root() / name;
    const auto m = ef::load_model<float>(dir);
    ef::generation_options o;
    o.max_new_tokens = max_new_tokens;
    const auto results = ef::generate(m, ef::token_batch::from_sequences(id_lines(dir / "src.txt")), o);
    const auto expected = id_lines(dir / "greedy.txt");
    ASSERT_EQ(results.size(), expected.size());
    for (std::size_t b = 0; b < expected.size(); ++b) EXPECT_EQ(results[b].best().tokens, expected[b]) << "source " << b;
  }
}

// The sharded copy of bart (model.safetensors.index.json and three shards) loads to the same model.
// Catches an index whose tensors are looked up in the wrong shard or not at all.
TEST(HuggingFace, ShardedCheckpointEqualsTheSingleFile) {
  const auto single = ef::load_model<float>(hf_root() / "bart");
  const auto sharded = ef::load_model<float>(hf_root() / "bart_sharded");
  const auto src = ef::token_batch::from_sequences(id_lines(hf_root() / "bart" / "src.txt"));
  const auto tgt = ef::token_batch::from_sequences(id_lines(hf_root() / "bart" / "tgt.txt"));
  const auto a = single.score(src, tgt), b = sharded.score(src, tgt);
  EXPECT_EQ(max_abs_diff(a.values(), b.values()), 0.0);
  EXPECT_EQ(single.parameter_count(), sharded.parameter_count());
}

namespace {
fs::path scratch_copy(const std::string& name, const std::string& as) { return ef::testing::scratch_copy(name, "hf", as); }
void replace_in(const fs::path& file, const std::string& from, const std::string& to) {
  std::string text = read_file(file);
  const auto at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  text.replace(at, from.size(), to);
  write_file(file, text);
}
}  // namespace

// Hostile or unsupported directories get one line naming the file and the key, tensor or shard.
// Catches a loader that guesses a family, defaults a missing key, ignores a key it does not know,
// follows a shard path out of the folder, or takes a tensor whose shape disagrees with the config.
TEST(HuggingFace, BadDirectoriesNameTheFileAndKey) {
  auto expect = [](const fs::path& dir, const std::string& needle) {
    try {
      (void)ef::load_model<float>(dir);
      ADD_FAILURE() << "expected an error: " << needle;
    } catch (const ef::error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(needle), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
      EXPECT_LT(what.size(), 400u) << what;
    }
  };
  {
    const auto d = scratch_copy("marian", "type");
    replace_in(d / "config.json", "\"model_type\": \"marian\"", "\"model_type\": \"t5\"");
    expect(d, (d / "config.json").string() + ": model_type 't5' is not supported, expected marian, bart, mbart or m2m_100");
  }
  {
    const auto d = scratch_copy("marian", "missing");
    replace_in(d / "config.json", "\"d_model\": 16,", "");
    expect(d, (d / "config.json").string() + ": d_model: missing, expected an integer");
  }
  {
    const auto d = scratch_copy("marian", "activation");
    replace_in(d / "config.json", "\"swish\"", "\"mish\"");
    expect(d, "config.json: activation_function: \"mish\", expected relu, gelu, gelu_new, gelu_pytorch_tanh, swish or silu");
  }
  {
    const auto d = scratch_copy("marian", "unknown");
    replace_in(d / "config.json", "\"d_model\": 16,", "\"d_model\": 16, \"rope_theta\": 10000.0,");
    expect(d, "config.json: key 'rope_theta' (10000.0) is not supported for model_type marian");
  }
  {
    const auto d = scratch_copy("marian", "heads");
    replace_in(d / "config.json", "\"decoder_attention_heads\": 4", "\"decoder_attention_heads\": 2");
    expect(d, "config.json: decoder_attention_heads: 2, expected encoder_attention_heads (4): one head count");
  }
  {
    const auto d = scratch_copy("bart_sharded", "shard");
    fs::remove(d / "model-00002-of-00003.safetensors");
    expect(d, (d / "model-00002-of-00003.safetensors").string() + ": cannot open");
  }
  {
    const auto d = scratch_copy("bart_sharded", "escape");
    replace_in(d / "model.safetensors.index.json", "\"model-00002-of-00003.safetensors\"", "\"../model-00002-of-00003.safetensors\"");
    expect(d, "model.safetensors.index.json: weight_map: '");
  }
  {
    const auto d = scratch_copy("marian", "vocab");
    replace_in(d / "config.json", "\"vocab_size\": 60", "\"vocab_size\": 61");
    replace_in(d / "config.json", "\"decoder_vocab_size\": 60", "\"decoder_vocab_size\": 61");
    expect(d, "tensor 'model.shared.weight': shape [60, 16], expected [61, 16]");
  }
  {
    const auto d = scratch_copy("marian", "noweights");
    fs::remove(d / "model.safetensors");
    expect(d, d.string() + ": no model.safetensors or model.safetensors.index.json");
  }
}

namespace {
/// beam4_nbest.txt: "source<TAB>score<TAB>ids" lines, best first.
struct ranked {
  index_t source = 0;
  double score = 0;
  std::vector<token_id> ids;
};
std::vector<ranked> nbest_lines(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  std::vector<ranked> out;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    ranked r;
    fields >> r.source >> r.score;
    for (token_id id; fields >> id;) r.ids.push_back(id);
    out.push_back(std::move(r));
  }
  return out;
}
}  // namespace

// Beam search (4 beams, length penalty 1) equals transformers' generate(num_beams=4): with
// early_stopping false (transformers' default heuristic) the best ids, and with num_return_sequences
// 2 both hypotheses and their scores (transformers' sequences_scores, float32: 1e-5); with
// early_stopping true (the default here, and CTranslate2's) the ids of generate(early_stopping=True).
// Catches a search that stops at the first beam_size ended hypotheses when asked not to (marian),
// one that never stops early, a score that counts the forced first token's log-probability (bart and
// m2m100 then prefer long hypotheses) and n-best lists in another order.
TEST(HuggingFace, BeamSearchEqualsTransformersInBothStoppingModes) {
  for (const auto& name : cases) {
    SCOPED_TRACE(name);
    const fs::path dir = hf_root() / name;
    const auto m = ef::load_model<float>(dir);
    const auto src = ef::token_batch::from_sequences(id_lines(dir / "src.txt"));
    ef::generation_options o;
    o.max_new_tokens = max_new_tokens;
    o.beam_size = 4;
    o.num_return_sequences = 2;
    o.early_stopping = false;
    const auto heuristic = ef::generate(m, src, o);
    o.early_stopping = true;
    const auto early = ef::generate(m, src, o);
    const auto best = id_lines(dir / "beam4.txt"), best_early = id_lines(dir / "beam4_early_stopping.txt");
    const auto nbest = nbest_lines(dir / "beam4_nbest.txt");
    ASSERT_EQ(heuristic.size(), best.size());
    ASSERT_EQ(nbest.size(), 2 * best.size());
    for (std::size_t b = 0; b < best.size(); ++b) {
      EXPECT_EQ(heuristic[b].best().tokens, best[b]) << "source " << b;
      EXPECT_EQ(early[b].best().tokens, best_early[b]) << "source " << b << " (early_stopping)";
      for (std::size_t r = 0; r < 2; ++r) {
        const auto& h = heuristic[b].hypotheses.at(r);
        const auto& want = nbest.at(2 * b + r);
        EXPECT_EQ(h.tokens, want.ids) << "source " << b << ", hypothesis " << r;
        EXPECT_NEAR(h.score, want.score, 1e-5) << "source " << b << ", hypothesis " << r;
      }
    }
  }
}
