// CTranslate2 model directories (io/ct2_directory.hpp) against what transformers and CTranslate2
// 4.5.0 computed: tests/fixtures/hf/<case>_ct2_<float32|int8|float16>/ (tests/fixtures/hf/README.md),
// conversions of the Hugging Face cases beside them.
#include <eigenformer/eigenformer.hpp>
#include <eigenformer/io/npy.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
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

/// reference.json of a Hugging Face case (transformers' outputs).
nlohmann::json reference_of(const std::string& hf_case) {
  std::ifstream in(hf_root() / hf_case / "reference.json");
  return nlohmann::json::parse(in);
}

nlohmann::json reference(const fs::path& dir) {
  std::ifstream in(dir / "ct2_reference.json");
  return nlohmann::json::parse(in);
}

// How CTranslate2 was driven (ct2_reference.json target_prefix): mBART's converter leaves
// decoder_start_token null and the language code given as target_prefix is the start token;
// elsewhere the prefix is the forced BOS, returned with the output.
struct ct2_case {
  std::string base;                  // the Hugging Face case
  std::optional<std::string> start;  // decoder start token given by the caller
  std::vector<token_id> prefix;      // forced first target tokens
};

ct2_case case_of(const fs::path& dir) {
  ct2_case c;
  const auto r = reference(dir);
  c.base = r.at("case").get<std::string>();
  const ef::io::ct2_directory probe_vocab_only = [&] {
    // decoder_start_token null: the prefix's one token is the start.
    try {
      return ef::io::ct2_directory(dir);
    } catch (const ef::config_error&) {
      c.start = r.at("target_prefix").at(0).get<std::string>();
      return ef::io::ct2_directory(dir, c.start);
    }
  }();
  if (!c.start && r.at("target_prefix").is_array()) {
    const auto& vocab = probe_vocab_only.target_vocabulary();
    for (const auto& tok : r.at("target_prefix")) {
      for (std::size_t i = 0; i < vocab.size(); ++i)
        if (vocab[i] == tok.get<std::string>()) c.prefix.push_back(static_cast<token_id>(i));
    }
  }
  return c;
}

std::vector<fs::path> folders(const std::string& quantization) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(hf_root()))
    if (e.is_directory() && e.path().filename().string().ends_with("_ct2_" + quantization)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

template <class Scalar>
ef::model<Scalar> load(const fs::path& dir, const ct2_case& c) {
  const ef::io::ct2_directory d(dir, c.start);
  auto w = d.read_weights<Scalar>();
  return ef::model<Scalar>(d.config(), w);
}

std::vector<std::vector<token_id>> greedy(const ef::model<float>& m, const fs::path& src, const ct2_case& c) {
  const auto source = id_lines(src);
  ef::generation_options o;
  o.max_new_tokens = 20;  // max_decoding_length 20, the forced BOS included
  if (!c.prefix.empty()) o.prefix.assign(source.size(), c.prefix);
  std::vector<std::vector<token_id>> out;
  for (const auto& r : ef::generate(m, ef::token_batch::from_sequences(source), o)) out.push_back(r.best().tokens);
  return out;
}

}  // namespace

// Teacher-forced log-probs of every float32 conversion equal transformers' (float64) within 1e-4
// in float and double. Marian conversions drop `<pad>` (the last id) and start from a zero
// embedding: the loader appends a zero row as the start token, so the ids line up with transformers'
// (tgt.txt starts with pad = 59) and the comparison runs over the kept vocabulary (transformers'
// pad column, logit -20, is left out; its mass, < 1e-8, is within the tolerance).
TEST(CTranslate2, TeacherForcedLogProbsEqualTransformers) {
  const auto dirs = folders("float32");
  ASSERT_FALSE(dirs.empty());
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir.filename().string());
    const ct2_case c = case_of(dir);
    const fs::path base = hf_root() / c.base;
    const auto src = ef::token_batch::from_sequences(id_lines(base / "src.txt"));
    const auto tgt = ef::token_batch::from_sequences(id_lines(base / "tgt.txt"));
    const auto expected = ef::io::read_npy<double>(base / "logprobs.npy");
    const ef::io::ct2_directory d(dir, c.start);
    const index_t kept = static_cast<index_t>(d.target_vocabulary().size());
    const auto lf = load<float>(dir, c).score(src, tgt);
    const auto ld = load<double>(dir, c).score(src, tgt);
    ASSERT_EQ(lf.shape(), expected.shape());
    const index_t V = expected.shape()[2];
    double worst_f = 0, worst_d = 0;
    for (index_t i = 0; i < expected.size(); ++i) {
      if (i % V >= kept) continue;
      worst_f = std::max(worst_f, std::abs(double(lf.data()[i]) - expected.data()[i]));
      worst_d = std::max(worst_d, std::abs(ld.data()[i] - expected.data()[i]));
    }
    // The measured margin, for docs/models.md's table.
    std::printf("[ measured ] %s: largest |log-prob - reference| float %.1e, double %.1e\n", dir.filename().string().c_str(), worst_f, worst_d);
    EXPECT_LT(worst_f, 1e-4);
    EXPECT_LT(worst_d, 1e-4);
  }
}

// Greedy ids of every float32 and float16 conversion equal CTranslate2's own (ct2_greedy.txt): the
// fixtures' greedy margins are >= 0.05, and float16 weights are widened exactly (CTranslate2 on the
// CPU computes float16 models in float32 too).
TEST(CTranslate2, GreedyIdsEqualCTranslate2) {
  for (const char* q : {"float32", "float16"}) {
    for (const auto& dir : folders(q)) {
      SCOPED_TRACE(dir.filename().string());
      const ct2_case c = case_of(dir);
      const auto got = greedy(load<float>(dir, c), hf_root() / c.base / "src.txt", c);
      const auto expected = id_lines(dir / "ct2_greedy.txt");
      ASSERT_EQ(got.size(), expected.size());
      for (std::size_t b = 0; b < expected.size(); ++b) EXPECT_EQ(got[b], expected[b]) << "source " << b;
    }
  }
}

// Beam search (4 beams, early stopping as CTranslate2 stops) of every float32 and float16 conversion
// equals CTranslate2's translate_batch (ct2_beam4.txt), but for bart_ct2_float32: there CTranslate2
// drops an end token among the secondary candidates at the first step after the forced <s>, a rule
// transformers does not have and eigenformer does not follow (fixture README, "Beam search"); its
// beams are checked against transformers' instead (beam4_early_stopping.txt). n-best scores equal
// CTranslate2's within 1e-4 (float32; 1e-2 float16). Catches a different stopping rule, length
// normalisation or ranking of finished hypotheses.
TEST(CTranslate2, BeamIdsEqualCTranslate2) {
  for (const char* q : {"float32", "float16"}) {
    for (const auto& dir : folders(q)) {
      const std::string name = dir.filename().string();
      SCOPED_TRACE(name);
      const ct2_case c = case_of(dir);
      const auto m = load<float>(dir, c);
      const auto source = id_lines(hf_root() / c.base / "src.txt");
      ef::generation_options o;
      o.max_new_tokens = 20;
      o.beam_size = 4;
      o.num_return_sequences = 2;
      o.early_stopping = true;
      if (!c.prefix.empty()) o.prefix.assign(source.size(), c.prefix);
      const auto results = ef::generate(m, ef::token_batch::from_sequences(source), o);
      const bool transformers_rule = name == "bart_ct2_float32";
      const auto expected = id_lines(transformers_rule ? hf_root() / c.base / "beam4_early_stopping.txt" : dir / "ct2_beam4.txt");
      ASSERT_EQ(results.size(), expected.size());
      for (std::size_t b = 0; b < expected.size(); ++b) EXPECT_EQ(results[b].best().tokens, expected[b]) << "source " << b;
      if (transformers_rule) continue;
      // ct2_beam4_nbest.txt: "source<TAB>score<TAB>ids", 2 lines per source, best first.
      std::ifstream in(dir / "ct2_beam4_nbest.txt");
      std::size_t line = 0;
      for (std::string text; std::getline(in, text); ++line) {
        std::istringstream fields(text);
        std::size_t src = 0;
        double score = 0;
        fields >> src >> score;
        std::vector<token_id> ids;
        for (token_id id; fields >> id;) ids.push_back(id);
        ASSERT_LT(src, results.size());
        const auto& h = results[src].hypotheses.at(line % 2);
        EXPECT_EQ(h.tokens, ids) << "source " << src << " rank " << line % 2;
        EXPECT_NEAR(h.score, score, std::string(q) == "float32" ? 1e-4 : 1e-2) << "source " << src << " rank " << line % 2;
      }
      EXPECT_EQ(line, 2 * expected.size());
    }
  }
}

// The 8- and 16-bit conversions, scored: per-token log-probabilities of transformers' greedy outputs
// (teacher-forced) against transformers' own (float64, HF reference.json) and CTranslate2's
// score_batch at that precision (ct2_reference.json). float16 weights are widened exactly and
// CTranslate2 computes them in float32: both must agree as float32 computations do (1e-4 against
// CTranslate2). int8 conversions load as int8 weights (the same integers, re-quantised per row) with
// activations quantised per row, as int8_float32 computes: against transformers the rounding moves a
// log-probability by at most 0.8 on these models (measured 0.15-0.62), and against CTranslate2 the
// triangle inequality through transformers bounds the difference (ours - transformers, plus
// CTranslate2 int8 - its float32 run, the recorded quantisation error, plus 1e-4). Measured against
// CTranslate2's own int8 scores: 0.16-0.39, no closer than with float activations (not investigated:
// the fixtures' int8 numbers come from the AVX-512 host that made them, and CTranslate2's int8 paths
// differ by instruction set); ours are an independent int8 computation, not a replica of its. Catches int8 scales applied per column or not at all, float16 read
// as bfloat16, a row offset.
TEST(CTranslate2, QuantisedLogProbsAgreeWithCTranslate2) {
  for (const char* q : {"float16", "int8"}) {
    for (const auto& dir : folders(q)) {
      SCOPED_TRACE(dir.filename().string());
      const ct2_case c = case_of(dir);
      const auto r = reference(dir);
      const auto m = load<float>(dir, c);
      const auto targets = id_lines(hf_root() / c.base / "greedy.txt");
      const auto& scored = r.at("score_batch").at("log_probs");
      ASSERT_EQ(scored.size(), targets.size());
      const auto src = id_lines(hf_root() / c.base / "src.txt");
      const nlohmann::json hf_ref = reference_of(c.base);
      const auto& hf = hf_ref.at("greedy");  // transformers' raw log-probs per token
      double worst = 0, worst_hf = 0;
      for (std::size_t b = 0; b < targets.size(); ++b) {
        std::vector<token_id> tgt = {m.config().bos_id};  // the decoder start, then the tokens scored
        tgt.insert(tgt.end(), targets[b].begin(), targets[b].end());
        const auto lp = m.score(ef::token_batch::from_sequences({src[b]}), ef::token_batch::from_sequences({tgt}));
        const index_t V = lp.shape()[2];
        // score_batch's last entry is the eos CTranslate2 appends: compared only where it is a token
        // of the output (the line ended), as the fixture README says; here the ids alone.
        for (std::size_t t = 0; t < targets[b].size(); ++t) {
          const double got = lp.data()[static_cast<index_t>(t) * V + targets[b][t]];
          worst = std::max(worst, std::abs(got - scored[b][t].get<double>()));
          worst_hf = std::max(worst_hf, std::abs(got - hf[b].at("token_logprobs")[t].get<double>()));
        }
      }
      const double error = r.at("quantisation_error").at("value").get<double>();
      std::printf("[ measured ] %s: largest |log-prob - transformers| %.2e, |log-prob - CTranslate2 score_batch| %.2e "
                  "(its quantisation error %.2e)\n",
                  dir.filename().string().c_str(), worst_hf, worst, error);
      if (std::string(q) == "float16") {
        EXPECT_LT(worst, 1e-4);
      } else {
        EXPECT_LT(worst_hf, 0.8);
        EXPECT_LE(worst, worst_hf + error + 1e-4);
      }
    }
  }
}

// int8 conversions: CTranslate2's int8 weights, loaded as int8 (load_model's default for them).
// Quantisation changes log-probs by up to the recorded quantisation error (0.2-0.6). Rule: where CTranslate2's int8 greedy output equals
// transformers' (every step's margin exceeded that error), ours must equal it whole; where it does
// not (greedy_differences_from_transformers: a step whose margin was below the error), ours must
// equal it up to that first differing position only.
TEST(CTranslate2, Int8GreedyIdsEqualCTranslate2WhereTheMarginAllows) {
  const auto dirs = folders("int8");
  ASSERT_FALSE(dirs.empty());
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir.filename().string());
    const ct2_case c = case_of(dir);
    const auto got = greedy(load<float>(dir, c), hf_root() / c.base / "src.txt", c);
    const auto expected = id_lines(dir / "ct2_greedy.txt");
    ASSERT_EQ(got.size(), expected.size());
    std::vector<std::size_t> limit(expected.size(), std::string::npos);
    const nlohmann::json r = reference(dir);  // kept: a range-for over a temporary's member dangles
    for (const auto& diff : r.at("greedy_differences_from_transformers")) {
      limit.at(diff.at("source").get<std::size_t>()) = diff.at("first_differing_position").get<std::size_t>();
    }
    for (std::size_t b = 0; b < expected.size(); ++b) {
      if (limit[b] == std::string::npos) {
        EXPECT_EQ(got[b], expected[b]) << "source " << b;
      } else {
        const std::size_t n = std::min({limit[b], got[b].size(), expected[b].size()});
        EXPECT_GE(got[b].size(), n);
        EXPECT_EQ(std::vector<token_id>(got[b].begin(), got[b].begin() + n),
                  std::vector<token_id>(expected[b].begin(), expected[b].begin() + n))
            << "source " << b << " (first " << n << " tokens)";
      }
    }
  }
}

namespace {

fs::path scratch_copy(const std::string& name, const std::string& as) { return ef::testing::scratch_copy(name, "ct2", as); }

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const fs::path& p, const std::string& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << b;
}

/// load_model(dir) throws E with a one-line message holding every one of `parts`.
template <class E>
void expect_error(const fs::path& dir, std::vector<std::string> parts) {
  try {
    (void)ef::load_model<float>(dir);
    ADD_FAILURE() << "no error for " << dir;
  } catch (const E& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    for (const auto& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
  }
}

}  // namespace

// Hostile or foreign files: one-line errors naming the file and the variable.
TEST(CTranslate2, TruncatedModelBinNamesTheVariable) {
  const fs::path dir = scratch_copy("marian_ct2_float32", "truncated");
  const std::string b = bytes_of(dir / "model.bin");
  write_bytes(dir / "model.bin", b.substr(0, b.size() / 2));
  expect_error<ef::format_error>(dir, {"model.bin", "variable '", "past the end of the file"});
}

TEST(CTranslate2, WrongShapeNamesTheVariable) {
  // ffn/linear_1/weight is [16, 32]: stored as [32, 16] it has the same byte count, another shape.
  const fs::path dir = scratch_copy("marian_ct2_float32", "wrong_shape");
  std::string b = bytes_of(dir / "model.bin");
  const std::string name = std::string("encoder/layer_0/ffn/linear_1/weight") + '\0';
  const std::size_t at = b.find(name);
  ASSERT_NE(at, std::string::npos);
  const std::size_t dims = at + name.size() + 1;  // after the rank byte
  ASSERT_EQ(b[at + name.size()], '\2');
  std::swap_ranges(b.begin() + dims, b.begin() + dims + 4, b.begin() + dims + 4);
  write_bytes(dir / "model.bin", b);
  expect_error<ef::shape_error>(dir, {"model.bin", "variable 'encoder/layer_0/ffn/linear_1/weight'"});
}

TEST(CTranslate2, UnknownSpecIsAConfigError) {
  const fs::path dir = scratch_copy("marian_ct2_float32", "unknown_spec");
  std::string b = bytes_of(dir / "model.bin");
  const std::size_t at = b.find("TransformerSpec");
  ASSERT_NE(at, std::string::npos);
  b.replace(at, 15, "TransformerSpek");
  write_bytes(dir / "model.bin", b);
  expect_error<ef::config_error>(dir, {"model.bin", "spec 'TransformerSpek'", "TransformerSpec"});
}

TEST(CTranslate2, UnsupportedAttributeNamesTheVariable) {
  // decoder/alibi (int8 scalar 0) set to 1.
  const fs::path dir = scratch_copy("marian_ct2_float32", "alibi");
  std::string b = bytes_of(dir / "model.bin");
  const std::string name = std::string("decoder/alibi") + '\0';
  const std::size_t at = b.find(name);
  ASSERT_NE(at, std::string::npos);
  // rank 0, dtype int8 (1), byte count 1, the value.
  const std::size_t value = at + name.size() + 1 + 1 + 4;
  ASSERT_EQ(b[value], '\0');
  b[value] = '\1';
  write_bytes(dir / "model.bin", b);
  expect_error<ef::config_error>(dir, {"model.bin", "variable 'decoder/alibi'", "ALiBi"});
}

TEST(CTranslate2, NullDecoderStartNeedsTheCaller) {
  expect_error<ef::config_error>(hf_root() / "mbart_ct2_float32", {"decoder_start_token", "null"});
}
