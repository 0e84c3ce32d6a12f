// The command-line tool (docs/cli.md), driven as a user drives it: exit codes, stdout,
// the one-line errors on stderr, and output files that appear whole or not at all.
#include <eigenformer/eigenformer.hpp>
#include <eigenformer/io/model_loader.hpp>
#include <eigenformer/io/npy.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/wait.h>

#include "fixture_util.hpp"
#include "test_util.hpp"

namespace ef = eigenformer;
namespace fs = std::filesystem;
using ef::index_t;
using namespace ef::testing;

namespace {

struct run_result {
  int status = -1;
  std::string out, err;
};

/// This test's own scratch folder: ctest runs the tests of this file in parallel processes.
fs::path scratch() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(EIGENFORMER_TEST_TMP) / "cli" / info->name();
  fs::create_directories(dir);
  return dir;
}

/// Runs the tool with `args` (a shell-quoted string), capturing stdout and stderr. `setup` is shell
/// code run first in the same shell (limits, traps), whose settings the tool inherits.
run_result run(const std::string& args, const std::string& setup = "") {
  const auto out = scratch() / "stdout", err = scratch() / "stderr";
  const std::string cmd =
      setup + "'" + EIGENFORMER_CLI + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_file(out), read_file(err)};
}

std::string tmp_path(const std::string& name) { return (scratch() / name).string(); }

std::string fixture(const std::string& name, const std::string& file) { return (fixture_root() / name / file).string(); }

const std::string base = "postln_relu_paper_f32";

/// The lines of the tool's output, each as its token ids.
std::vector<std::vector<long>> id_lines(const std::string& text) {
  std::vector<std::vector<long>> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream ids(line);
    lines.emplace_back();
    for (long id; ids >> id;) lines.back().push_back(id);
  }
  return lines;
}

/// The V counts `sample` prints.
std::vector<long> counts_of(const std::string& text) {
  std::vector<long> c;
  std::istringstream in(text);
  for (long x; in >> x;) c.push_back(x);
  return c;
}

/// Asserts a failed run: the status, a single line on stderr containing `needle`, nothing on stdout.
void expect_error(const run_result& r, int status, const std::string& needle) {
  EXPECT_EQ(r.status, status) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err << "\nexpected: " << needle;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

}  // namespace

TEST(Cli, ScoreReproducesPyTorchOnEveryFixture) {
  for (const auto& name : fixture_cases()) {
    SCOPED_TRACE(name);
    const std::string out = tmp_path(name + ".npy");
    const auto r = run("score --model " + fixture(name, "model.safetensors") + " --src-file " + fixture(name, "src.txt") +
                       " --tgt-file " + fixture(name, "tgt.txt") + " --out " + out);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto got = ef::io::read_npy<float>(out);
    const auto expected = ef::io::read_npy<double>(fixture_root() / name / "logprobs.npy");
    ASSERT_EQ(got.shape(), expected.shape());
    EXPECT_LT(max_abs_diff(got.values(), expected.values()), 1e-5);
    EXPECT_EQ(ef::io::read_npy_header(out).descr, "<f4");
  }
}

TEST(Cli, BatchSizeDoesNotChangeScores) {
  const std::string a = tmp_path("all.npy"), b = tmp_path("one.npy");
  const std::string common = "score --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt") +
                             " --tgt-file " + fixture(base, "tgt.txt");
  ASSERT_EQ(run(common + " --out " + a).status, 0);
  ASSERT_EQ(run(common + " --out " + b + " --batch-size 1 --threads 1").status, 0);
  const auto x = ef::io::read_npy<float>(a), y = ef::io::read_npy<float>(b);
  ASSERT_EQ(x.shape(), y.shape());
  // Different batch sizes take different kernels (GEMM or the small-batch one): equal within float rounding.
  EXPECT_LT(max_abs_diff(x.values(), y.values()), 1e-5);
}

TEST(Cli, GenerateIsReproducibleAndIndependentOfBatchSize) {
  const std::string model = " --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  for (const std::string opts : {"", " --beam-size 3", " --temperature 0.9 --top-k 10 --top-p 0.9 --min-p 0.01 --seed 7"}) {
    const auto a = run("generate" + model + opts + " --max-new-tokens 12");
    const auto b = run("generate" + model + opts + " --max-new-tokens 12 --batch-size 1 --threads 1");
    ASSERT_EQ(a.status, 0) << a.err;
    EXPECT_EQ(a.out, b.out) << opts;
    EXPECT_EQ(std::count(a.out.begin(), a.out.end(), '\n'), 3) << a.out;  // one line per source line
  }
  EXPECT_EQ(run("generate" + model + " --temperature 0").out, run("generate" + model).out);  // T = 0 is greedy
}

// --seed is the one seed (generation_options::seed): another seed, other draws; the same seed, the
// same output. Catches a tool that puts the seed where nothing reads it (it used to set
// sampling_options::seed as well, which the chain ignores): both seeds would then give one output;
// and a seed taken from the clock or std::random_device: two runs with one seed would differ.
TEST(Cli, SeedChoosesTheDraws) {
  const std::string model = " --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  const auto s1 = run("generate" + model + " --temperature 1.5 --seed 1");
  const auto s1_again = run("generate" + model + " --temperature 1.5 --seed 1");
  const auto s2 = run("generate" + model + " --temperature 1.5 --seed 2");
  ASSERT_EQ(s1.status, 0) << s1.err;
  ASSERT_EQ(s2.status, 0) << s2.err;
  EXPECT_EQ(s1.out, s1_again.out);
  EXPECT_NE(s1.out, s2.out);

  const std::string logits = tmp_path("flat.npy");
  ef::io::write_npy(logits, ef::tensor<float>({8}));  // 8 equal logits
  const std::string draw = "sample --logits " + logits + " --n 200 --temperature 1 --seed ";
  EXPECT_EQ(run(draw + "1").out, run(draw + "1").out);
  EXPECT_NE(run(draw + "1").out, run(draw + "2").out);
}

TEST(Cli, SampleCountsFollowTheTruncatedDistribution) {
  const std::string logits = tmp_path("logits.npy");
  ef::tensor<float> l({4});
  const double p[] = {0.1, 0.2, 0.3, 0.4};
  for (int i = 0; i < 4; ++i) l(i) = float(std::log(p[i]));
  ef::io::write_npy(logits, l);
  // top-p 0.7 keeps {0.4, 0.3}: renormalised 4/7 and 3/7.
  const auto r = run("sample --logits " + logits + " --n 70000 --top-p 0.7 --seed 3");
  ASSERT_EQ(r.status, 0) << r.err;
  std::istringstream in(r.out);
  std::array<long, 4> c{};
  for (auto& x : c) in >> x;
  EXPECT_EQ(c[0], 0);
  EXPECT_EQ(c[1], 0);
  EXPECT_EQ(c[2] + c[3], 70000);
  EXPECT_NEAR(double(c[3]) / 70000, 4.0 / 7.0, 0.01);
  EXPECT_EQ(run("sample --logits " + logits + " --n 5 --temperature 0").out, "0 0 0 5\n");  // T = 0: greedy
  EXPECT_EQ(run("sample --logits " + logits + " --n 100 --temperature 1 --seed 9").out,
            run("sample --logits " + logits + " --n 100 --temperature 1 --seed 9").out);
}

// `sample` always draws: with no option, from softmax(logits) (temperature 1), unlike `generate`,
// which is greedy by default. Catches a tool that reuses generate's default for sample (every draw
// on the argmax: counts 0 0 0 N) and one that draws from something else than softmax(logits) (a
// uniform pick, or a tempered distribution: the counts or the exact draws of temperature 1 differ).
TEST(Cli, SampleDrawsWithoutOptions) {
  // Flat logits: each of the 4 tokens has p = 1/4, so each count is Binomial(4000, 1/4): mean
  // 1000, standard deviation sqrt(4000 x 1/4 x 3/4) = 27.4. The bound, 6 standard deviations (165),
  // is passed by a correct sampler with probability 1 - 2e-9 per count whatever the seed, while
  // the argmax (4000 0 0 0) misses it by thousands.
  const std::string flat = tmp_path("flat.npy");
  ef::io::write_npy(flat, ef::tensor<float>({4}));
  const auto r = run("sample --logits " + flat + " --n 4000");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto c = counts_of(r.out);
  ASSERT_EQ(c.size(), 4u) << r.out;
  for (long x : c) EXPECT_NEAR(double(x), 1000.0, 165.0) << r.out;
  EXPECT_EQ(c[0] + c[1] + c[2] + c[3], 4000);

  // {0.1, 0.2, 0.3, 0.4}: not all on the argmax; and exactly the draws of --temperature 1, seed for seed.
  const std::string skewed = tmp_path("skewed.npy");
  ef::tensor<float> l({4});
  const double p[] = {0.1, 0.2, 0.3, 0.4};
  for (int i = 0; i < 4; ++i) l(i) = float(std::log(p[i]));
  ef::io::write_npy(skewed, l);
  const auto d = run("sample --logits " + skewed + " --n 1000 --seed 9");
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_NE(d.out, "0 0 0 1000\n");
  const auto dc = counts_of(d.out);
  ASSERT_EQ(dc.size(), 4u) << d.out;
  for (int i = 0; i < 4; ++i) {  // Binomial(1000, p_i): 6 standard deviations, as above
    EXPECT_NEAR(double(dc[static_cast<std::size_t>(i)]), 1000 * p[i], 6 * std::sqrt(1000 * p[i] * (1 - p[i]))) << d.out;
  }
  EXPECT_EQ(d.out, run("sample --logits " + skewed + " --n 1000 --seed 9 --temperature 1").out);
  // generate keeps its greedy default: no option and --temperature 0 agree.
  const std::string model = " --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  EXPECT_EQ(run("generate" + model + " --max-new-tokens 8").out, run("generate" + model + " --max-new-tokens 8 --temperature 0").out);
}

// --target-prefix-file: line n's ids are the first generated tokens of line n, printed with them;
// an empty line forces nothing. Catches a tool that ignores the file, one that forces the prefix but
// does not print it, and one that gives every batch the prefixes of the first lines (or all of
// them) instead of its own slice: --batch-size 1 and 2 would then differ from one batch, or fail.
TEST(Cli, TargetPrefixStartsEachLine) {
  const std::string model = " --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  const std::string prefix = tmp_path("prefix.txt");
  write_file(prefix, "5 6\n\n9 3 4\n");
  const std::vector<std::vector<long>> forced = {{5, 6}, {}, {9, 3, 4}};
  const auto plain = run("generate" + model + " --max-new-tokens 10");
  ASSERT_EQ(plain.status, 0) << plain.err;
  for (const std::string opts : {"", " --temperature 0.9 --seed 4", " --beam-size 3"}) {
    SCOPED_TRACE(opts);
    const auto r = run("generate" + model + opts + " --max-new-tokens 10 --target-prefix-file " + prefix);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto lines = id_lines(r.out);
    ASSERT_EQ(lines.size(), 3u) << r.out;
    for (std::size_t n = 0; n < 3; ++n) {
      ASSERT_GE(lines[n].size(), forced[n].size()) << r.out;
      EXPECT_TRUE(std::equal(forced[n].begin(), forced[n].end(), lines[n].begin())) << "line " << n + 1 << ": " << r.out;
    }
    if (opts.empty()) {
      EXPECT_EQ(lines[1], id_lines(plain.out)[1]);  // an empty prefix line: as without the file
    }
    for (const std::string b : {" --batch-size 1", " --batch-size 2"}) {
      EXPECT_EQ(run("generate" + model + opts + " --max-new-tokens 10 --target-prefix-file " + prefix + b).out, r.out) << b;
    }
  }
}

// Errors of --target-prefix-file name the file, and the line for a bad id. Catches a prefix checked
// against the source vocabulary instead of the target one (25 is a target id only), a bad id
// reported without its file and line, and a file of the wrong length silently padded or cut.
TEST(Cli, TargetPrefixFileErrors) {
  const std::string model = " --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  const std::string prefix = tmp_path("prefix.txt");
  write_file(prefix, "5 6\n4 40\n1\n");
  expect_error(run("generate" + model + " --target-prefix-file " + prefix), 1,
               "prefix.txt:2: token id 40 outside the target vocabulary (0 to 28)");
  write_file(prefix, "5 6\n\n25\n");  // 25 is a target id (vocabulary 29) but not a source id (23)
  EXPECT_EQ(run("generate" + model + " --max-new-tokens 3 --target-prefix-file " + prefix).status, 0);
  write_file(prefix, "5 6\n4\n");
  expect_error(run("generate" + model + " --target-prefix-file " + prefix), 1,
               "prefix.txt: 2 lines, expected 3 (one per line of ");
  write_file(prefix, "5 6\n4 y\n1\n");
  expect_error(run("generate" + model + " --target-prefix-file " + prefix), 1, "prefix.txt:2: 'y' is not a token id");
  expect_error(run("generate" + model + " --target-prefix-file /nonexistent/prefix.txt"), 1, "/nonexistent/prefix.txt");
  // A prefix longer than --max-new-tokens, or holding the end token, is refused naming its line
  // (catches a tool that cuts the prefix silently, or lets the library report "sequence 2" of a batch).
  write_file(prefix, "5 6\n4\n1 3 4\n");
  expect_error(run("generate" + model + " --max-new-tokens 2 --target-prefix-file " + prefix), 1,
               "prefix.txt:3: 3 tokens, expected at most 2 (--max-new-tokens)");
  write_file(prefix, "5 6\n4 2\n1\n");
  expect_error(run("generate" + model + " --target-prefix-file " + prefix), 1, "prefix.txt:2: token id 2 is the end token");
  expect_error(run("sample --logits x.npy --n 1 --target-prefix-file " + prefix), 2, "unknown option '--target-prefix-file'");
}

// --length-penalty A reaches beam search (finished hypotheses ranked by score / length^A) and is
// accepted with one beam. On the bundled g2p model (trained, so its beams end at different
// lengths), A = -4 favours short pronunciations and A = 4 long ones. Catches a tool that rejects
// the option, one that parses it and drops it (-4 and 4 would agree), and one that applies it the
// wrong way round (score x length^A: -4 would give the longer output).
TEST(Cli, LengthPenaltyIsAccepted) {
  const std::string src = tmp_path("words.txt");
  write_file(src, "4 5 4 21 8\n16 12 22 22 12 22 22 12 19 19 12\n20 24 8 24 8\n");  // abare mississippi queue
  const std::string model = " --model " + std::string(EIGENFORMER_SOURCE_DIR) + "/examples/models/g2p.safetensors --src-file " + src;
  const std::string beam = "generate" + model + " --beam-size 4";
  const auto shortest = run(beam + " --length-penalty -4"), longest = run(beam + " --length-penalty 4");
  ASSERT_EQ(shortest.status, 0) << shortest.err;
  ASSERT_EQ(longest.status, 0) << longest.err;
  const auto tokens = [](const std::string& out) {
    std::size_t n = 0;
    for (const auto& line : id_lines(out)) n += line.size();
    return n;
  };
  EXPECT_EQ(id_lines(shortest.out).size(), 3u) << shortest.out;
  EXPECT_LT(tokens(shortest.out), tokens(longest.out)) << shortest.out << "\n" << longest.out;
  EXPECT_EQ(run(beam + " --length-penalty 1").out, run(beam).out);  // the default is 1
  const auto one = run("generate" + model + " --length-penalty 2");  // one beam: accepted, no effect
  ASSERT_EQ(one.status, 0) << one.err;
  EXPECT_EQ(one.out, run("generate" + model).out);
  expect_error(run(beam + " --length-penalty much"), 2, "--length-penalty: 'much' is not a number");
  expect_error(run(beam + " --length-penalty inf"), 2, "--length-penalty: 'inf' is not a finite number");
}

TEST(Cli, InfoAndHelp) {
  const auto r = run("info --model " + fixture(base, "model.safetensors"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"d_model\": 16"), std::string::npos);
  EXPECT_NE(r.out.find("parameters: "), std::string::npos);
  EXPECT_NE(r.out.find("F32"), std::string::npos);
  for (const std::string cmd : {"info", "score", "generate", "sample"}) {
    const auto h = run(cmd + " --help");
    EXPECT_EQ(h.status, 0);
    EXPECT_NE(h.out.find("usage: eigenformer " + cmd), std::string::npos);
  }
  EXPECT_EQ(run("--help").status, 0);
  EXPECT_EQ(run("").status, 2);
}

// --weights: info reports the type and fewer bytes than float32; generate with int8 weights gives
// what the library gives with load_options::weights int8 (the tool passes the option through), and
// float32 what no option gives; a bad type is a usage error naming --weights. Catches the option
// parsed but not passed to load_model (int8 output = float32 output, bytes unchanged) and a CTranslate2
// int8 default applied to every model.
TEST(Cli, WeightsOption) {
  const std::string model = (fs::path(EIGENFORMER_SOURCE_DIR) / "examples/models/g2p.safetensors").string();
  const auto bytes_of = [](const std::string& info) {
    const auto at = info.find("\nweights: ");
    EXPECT_NE(at, std::string::npos) << info;
    const auto comma = info.find(", ", at);
    return std::stoull(info.substr(comma + 2));
  };
  const auto f32 = run("info --model " + model);
  ASSERT_EQ(f32.status, 0) << f32.err;
  EXPECT_NE(f32.out.find("\nweights: float32, "), std::string::npos) << f32.out;
  const auto q8 = run("info --model " + model + " --weights int8");
  ASSERT_EQ(q8.status, 0) << q8.err;
  EXPECT_NE(q8.out.find("\nweights: int8, "), std::string::npos) << q8.out;
  EXPECT_LT(bytes_of(q8.out), bytes_of(f32.out) / 2);

  const std::vector<std::vector<ef::token_id>> src = {{10, 11, 12, 13}, {20, 5, 7, 9, 14, 15}, {8, 8, 29}};
  const std::string src_path = tmp_path("src.txt");
  {
    std::ofstream f(src_path);
    for (const auto& s : src) {
      for (std::size_t i = 0; i < s.size(); ++i) f << (i ? " " : "") << s[i];
      f << "\n";
    }
  }
  ef::load_options lo;
  lo.weights = ef::weight_type::int8;
  const auto m = ef::load_model<float>(model, lo);
  ef::generation_options g;
  g.max_new_tokens = 20;
  std::string expected;
  for (const auto& r : ef::generate(m, ef::token_batch::from_sequences(src), g)) {
    for (std::size_t i = 0; i < r.best().tokens.size(); ++i) {
      if (i) expected += ' ';  // (not `(i ? " " : "") + std::to_string(...)`: g++ 12 warns -Wrestrict on it)
      expected += std::to_string(r.best().tokens[i]);
    }
    expected += "\n";
  }
  const auto got = run("generate --model " + model + " --src-file " + src_path + " --max-new-tokens 20 --weights int8");
  ASSERT_EQ(got.status, 0) << got.err;
  EXPECT_EQ(got.out, expected);
  const auto plain = run("generate --model " + model + " --src-file " + src_path + " --max-new-tokens 20");
  EXPECT_EQ(run("generate --model " + model + " --src-file " + src_path + " --max-new-tokens 20 --weights float32").out, plain.out);
  expect_error(run("info --model " + model + " --weights int4"), 2, "--weights: 'int4', expected float32, bfloat16, float16 or int8");

  // A CTranslate2 conversion stored in int8 loads as int8 (its int8 scalar flags do not make a float32
  // conversion one), unless --weights says otherwise.
  const std::string hf = (fixture_root() / "hf").string();
  EXPECT_NE(run("info --model " + hf + "/marian_ct2_int8").out.find("\nweights: int8, "), std::string::npos);
  EXPECT_NE(run("info --model " + hf + "/marian_ct2_int8 --weights float32").out.find("\nweights: float32, "), std::string::npos);
  EXPECT_NE(run("info --model " + hf + "/marian_ct2_float32").out.find("\nweights: float32, "), std::string::npos);
}

TEST(Cli, ErrorsNameTheCulpritInOneLine) {
  const std::string model = fixture(base, "model.safetensors"), src = fixture(base, "src.txt");
  expect_error(run("frobnicate"), 2, "unknown command 'frobnicate'");
  expect_error(run("generate --src-file " + src), 2, "missing option --model");
  expect_error(run("generate --model " + model + " --src-file " + src + " --colour red"), 2, "unknown option '--colour'");
  expect_error(run("generate --model " + model + " --src-file " + src + " --top-k many"), 2, "--top-k: 'many' is not an integer");
  expect_error(run("generate --model " + model + " --src-file " + src + " --top-p 1.5"), 2, "--top-p: 1.5, expected a value in (0, 1]");
  expect_error(run("generate --model " + model + " --src-file " + src + " --temperature -1"), 2, "--temperature: -1");
  expect_error(run("generate --model " + model + " --src-file " + src + " --top-k -2"), 2, "--top-k: -2");
  expect_error(run("generate --model " + model + " --src-file " + src + " --beam-size 2 --temperature 0.5"), 2, "--beam-size");
  expect_error(run("generate --model " + model + " --src-file " + src + " --threads 0"), 2, "--threads: 0");
  expect_error(run("generate --model " + model + " --src-file /nonexistent/src.txt"), 1, "/nonexistent/src.txt");
  expect_error(run("generate --model /nonexistent/m.safetensors --src-file " + src), 1, "/nonexistent/m.safetensors");

  const std::string bad = tmp_path("bad.txt");
  write_file(bad, "3 4\n5 x7 6\n");
  expect_error(run("generate --model " + model + " --src-file " + bad), 1, "bad.txt:2: 'x7' is not a token id");
  write_file(bad, "3 4\n5 99\n");
  expect_error(run("generate --model " + model + " --src-file " + bad), 1, "bad.txt:2: token id 99 outside the source vocabulary (0 to 22)");
  write_file(bad, "3 4\n\n");
  expect_error(run("generate --model " + model + " --src-file " + bad), 1, "bad.txt:2: empty line");
  std::string long_line;
  for (int i = 0; i < 1025; ++i) long_line += "3 ";
  write_file(bad, long_line + "\n");
  expect_error(run("generate --model " + model + " --src-file " + bad), 1, "bad.txt:1: 1025 tokens, expected at most 1024 (max_positions)");

  const std::string truncated = tmp_path("truncated.safetensors");
  const std::string bytes = read_file(model);
  write_file(truncated, bytes.substr(0, bytes.size() - 100));
  expect_error(run("info --model " + truncated), 1, "truncated.safetensors");
  const std::string logits = tmp_path("logits2d.npy");
  ef::io::write_npy(logits, ef::tensor<float>({2, 3}));
  expect_error(run("sample --logits " + logits + " --n 3"), 1, "logits2d.npy: shape [2, 3], expected [V]");
  // A NaN logit names the file (not only "logits", the library's name for the argument).
  const std::string nan_logits = tmp_path("nan_logits.npy");
  ef::tensor<float> with_nan({3});
  with_nan(1) = std::numeric_limits<float>::quiet_NaN();
  ef::io::write_npy(nan_logits, with_nan);
  expect_error(run("sample --logits " + nan_logits + " --n 3"), 1, "eigenformer sample: " + nan_logits + ": NaN at token 1");
}

TEST(Cli, OutputIsWholeOrAbsent) {
  const std::string model = fixture(base, "model.safetensors"), src = fixture(base, "src.txt");
  const std::string out = tmp_path("never.npy");
  fs::remove(out);
  const std::string short_tgt = tmp_path("short_tgt.txt");
  write_file(short_tgt, "1 2\n");
  expect_error(run("score --model " + model + " --src-file " + src + " --tgt-file " + short_tgt + " --out " + out), 1,
               "short_tgt.txt: 1 lines, expected 3");
  EXPECT_FALSE(fs::exists(out));

  // An existing output survives a run that fails while writing it. The failure must come after
  // the point where a careless tool would already have opened (truncated) the output: here the
  // write itself fails. The file-size limit (ulimit -f 1: 512 bytes in dash, 1024 in bash) is
  // below the [3, 9, 29] float32 array (3260 bytes), and SIGXFSZ is ignored (the tool inherits
  // that), so a write past the limit fails with EFBIG instead of killing the tool. The run reads,
  // checks and scores everything first. Catches a tool that opens the output before computing it,
  // or writes it in place: the old file would be cut or hold a partial array; and a writer that
  // leaves its temporary behind (checked at the end).
  write_file(out, "previous");
  const std::string score = "score --model " + model + " --src-file " + src + " --tgt-file " + fixture(base, "tgt.txt");
  expect_error(run(score + " --out " + out, "ulimit -f 1 && trap '' XFSZ && "), 1, out);
  EXPECT_EQ(read_file(out), "previous");
  // Without the limit the same run replaces it whole (so the failure above was the write's).
  ASSERT_EQ(run(score + " --out " + out).status, 0);
  EXPECT_EQ(ef::io::read_npy<float>(out).shape(), ef::io::read_npy<double>(fixture_root() / base / "logprobs.npy").shape());

  // The output path is a folder: everything is computed and written, and moving the file into
  // place fails; the folder and its content stay as they were.
  const fs::path folder = tmp_path("folder.npy");
  fs::create_directories(folder / "inside");
  expect_error(run(score + " --out " + folder.string()), 1, "folder.npy");
  EXPECT_TRUE(fs::is_directory(folder / "inside"));

  // A run that fails before computing anything leaves an existing output alone too.
  write_file(out, "previous");
  const std::string bad_tgt = tmp_path("bad_tgt.txt");
  write_file(bad_tgt, "1 2\n1 40\n1\n");
  expect_error(run("score --model " + model + " --src-file " + src + " --tgt-file " + bad_tgt + " --out " + out), 1,
               "bad_tgt.txt:2: token id 40 outside the target vocabulary (0 to 28)");
  EXPECT_EQ(read_file(out), "previous");
  expect_error(run("score --model " + model + " --src-file " + src + " --tgt-file " + fixture(base, "tgt.txt") +
                   " --out /nonexistent/dir/o.npy"),
               1, "/nonexistent/dir/o.npy");
  for (const auto& e : fs::directory_iterator(fs::path(out).parent_path()))  // no temporary left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

// ---- A hostile environment ----

namespace {
/// Runs the tool with standard output on /dev/full (every write fails with ENOSPC), stderr captured.
run_result run_to_full_disk(const std::string& args) {
  const auto err = scratch() / "stderr";
  std::string cmd = "'";  // built with += : GCC 12 warns falsely (-Wrestrict) on "'" + std::string
  cmd += EIGENFORMER_CLI;
  cmd += "' " + args + " >/dev/full 2>'" + err.string() + "'";
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, "", read_file(err)};
}
}  // namespace

// A failed write to standard output is an error (exit 1, one line naming it), never exit 0 with
// the output lost. Catches a tool that ignores what fwrite, fflush and std::cout report (it used
// to exit 0 on `> /dev/full`), and one that checks fwrite only (the small output sits in stdio's
// buffer; only the flush fails).
TEST(Cli, AFullStandardOutputIsAnError) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  const std::string model = fixture(base, "model.safetensors"), src = fixture(base, "src.txt");
  const std::string logits = tmp_path("logits.npy");
  ef::io::write_npy(logits, ef::tensor<float>({4}));
  for (const std::string& args : {"generate --model " + model + " --src-file " + src, "info --model " + model,
                                 "sample --logits " + logits + " --n 10", std::string("generate --help")}) {
    SCOPED_TRACE(args);
    const auto r = run_to_full_disk(args);
    const std::string command = args.substr(0, args.find(' '));
    expect_error(r, 1, "eigenformer " + command + ": standard output: write error (No space left on device)");
  }
}

// An empty option value is a command-line mistake named as such, whichever form gave it. Catches
// a tool that passes "" on (to open "" as a model: "cannot open" with no name).
TEST(Cli, EmptyValuesAreRefused) {
  const std::string src = fixture(base, "src.txt");
  expect_error(run("generate --model= --src-file " + src), 2, "--model: empty value");
  expect_error(run("generate --model '' --src-file " + src), 2, "--model: empty value");
  expect_error(run("info --model="), 2, "eigenformer info: --model: empty value");
}

// --beam-size 1000000 asks for a cache of about 100 GB: refused at once (exit 1, one line naming
// the request, the bytes and the limit), instead of std::bad_alloc after the allocation was tried
// (or the OOM killer). Catches a tool and library that allocate first.
TEST(Cli, AnOversizedBeamIsRefusedBeforeAllocating) {
  const std::string model = fixture(base, "model.safetensors"), src = fixture(base, "src.txt");
  const auto r = run("generate --model " + model + " --src-file " + src + " --beam-size 1000000");
  expect_error(r, 1, "eigenformer generate: --max-cache-bytes: beam_size 1000000 x 3 sources x 128 steps: the KV cache needs ");
  EXPECT_NE(r.err.find("over the limit of 17.2 GB"), std::string::npos) << r.err;
}

// --max-cache-bytes sets the limit both ways, in bytes or with a unit: 1kB refuses the greedy run the
// default accepts, 64GiB shows up in the refusal of the huge beam; sizes that are not sizes are
// command-line errors. Catches an option parsed and ignored, units read as bytes ("64GiB" as 64),
// decimal and binary units confused, and a count times unit that wraps past 2^64.
TEST(Cli, MaxCacheBytesRaisesOrLowersTheLimit) {
  const std::string gen = "generate --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  ASSERT_EQ(run(gen + " --max-new-tokens 4").status, 0);
  auto r = run(gen + " --max-new-tokens 4 --max-cache-bytes 1kB");
  expect_error(r, 1, "eigenformer generate: --max-cache-bytes: beam_size 1 x 3 sources x 4 steps");
  EXPECT_NE(r.err.find("over the limit of 1.0 kB"), std::string::npos) << r.err;
  expect_error(run(gen + " --beam-size 1000000 --max-cache-bytes 64GiB"), 1, "over the limit of 68.7 GB");
  expect_error(run(gen + " --beam-size 1000000 --max-cache-bytes 64000000000"), 1, "over the limit of 64.0 GB");
  EXPECT_EQ(run(gen + " --max-new-tokens 4 --max-cache-bytes 1MB").status, 0);
  expect_error(run(gen + " --max-cache-bytes 12XB"), 2, "--max-cache-bytes: '12XB' is not a size");
  expect_error(run(gen + " --max-cache-bytes GB"), 2, "--max-cache-bytes: 'GB' is not a size");
  expect_error(run(gen + " --max-cache-bytes 99999999999TiB"), 2, "--max-cache-bytes: '99999999999TiB' is more than 2^64 bytes");
}

// Logits that turn non-finite at run time (weights finite but huge: the loader accepts them) stop the
// tool with the source file's line and the step, not the sequence's index in its batch. Line 2 alone
// holds token 13, whose embedding overflows; --batch-size 1 puts it first in the second batch.
// Catches a message that names the batch index ("sequence 0"), and a tool that prints token 0.
TEST(Cli, NonFiniteLogitsNameTheSourceLine) {
  const std::string model = tmp_path("huge.safetensors"), src = tmp_path("src.txt");
  const ef::io::safetensors_file file(fixture(base, "model.safetensors"));
  auto weights = ef::read_weights<float>(file);
  std::vector<std::string> names;
  for (const auto& t : file.tensors()) names.push_back(t.name);
  std::vector<ef::tensor<float>> values;
  for (const auto& n : names) values.push_back(*weights.find(n));
  std::vector<ef::io::named_tensor<float>> list;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (names[i] == "src_embed.weight")
      for (index_t j = 0; j < values[i].dim(1); ++j) values[i](13, j) = 3e38f;
    list.push_back({names[i], values[i]});
  }
  ef::io::write_safetensors<float>(model, list, file.metadata());
  write_file(src, "3 4 5\n6 13 7\n8 9\n");
  const std::string needle = src + ":2: step 0: the model's logits are not finite (NaN or Inf)";
  expect_error(run("generate --model " + model + " --src-file " + src + " --batch-size 3"), 1, needle);
  // Batches stream: with one line a batch, line 1's output is out before line 2 fails.
  for (const std::string extra : {" --batch-size 1", " --beam-size 2 --batch-size 1"}) {
    const auto r = run("generate --model " + model + " --src-file " + src + extra);
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_EQ(r.err, "eigenformer generate: " + needle + "\n");
    EXPECT_EQ(id_lines(r.out).size(), 1u) << r.out;
  }
}

// --threads above the machine's cores is capped (and --help says so): the run works and gives the
// output of one thread. Catches a help text that does not tell.
TEST(Cli, ThreadsAreCappedAtTheCores) {
  const std::string model = " --model " + fixture(base, "model.safetensors") + " --src-file " + fixture(base, "src.txt");
  const auto many = run("generate" + model + " --max-new-tokens 6 --threads 10000");
  ASSERT_EQ(many.status, 0) << many.err;
  EXPECT_EQ(many.out, run("generate" + model + " --max-new-tokens 6 --threads 1").out);
  for (const std::string cmd : {"generate", "score"})
    EXPECT_NE(run(cmd + " --help").out.find("never more than the machine's cores"), std::string::npos) << cmd;
}

// --out through a symbolic link writes the link's target (the link stays a link, as with cp or a
// shell's >), and an existing read-only --out file is refused before anything is computed, and
// left as it was. Catches a writer whose rename replaces the link by a regular file (the target
// keeps its old bytes) and one that replaces a read-only file silently (rename only needs the
// folder's permission).
TEST(Cli, OutFollowsLinksAndKeepsReadOnlyFiles) {
  const std::string model = fixture(base, "model.safetensors"), src = fixture(base, "src.txt");
  const std::string score = "score --model " + model + " --src-file " + src + " --tgt-file " + fixture(base, "tgt.txt") + " --out ";
  const auto expected_shape = ef::io::read_npy<double>(fixture_root() / base / "logprobs.npy").shape();

  const fs::path target = tmp_path("target.npy"), link = tmp_path("link.npy");
  write_file(target.string(), "previous");
  fs::remove(link);
  fs::create_symlink("target.npy", link);  // relative: resolved against the link's folder
  const auto r = run(score + link.string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link)));
  EXPECT_EQ(fs::read_symlink(link), fs::path("target.npy"));
  EXPECT_EQ(ef::io::read_npy<float>(target).shape(), expected_shape);

  const fs::path dangling = tmp_path("dangling.npy"), created = tmp_path("created.npy");  // a link to a file to be
  fs::remove(dangling);
  fs::remove(created);
  fs::create_symlink(created, dangling);
  ASSERT_EQ(run(score + dangling.string()).status, 0);
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(dangling)));
  EXPECT_EQ(ef::io::read_npy<float>(created).shape(), expected_shape);

  const fs::path locked = tmp_path("locked.npy");
  fs::remove(locked);
  write_file(locked.string(), "previous");
  fs::permissions(locked, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  expect_error(run(score + locked.string()), 1, "eigenformer score: --out: " + locked.string() + ": read-only, not replaced");
  EXPECT_EQ(read_file(locked.string()), "previous");
  EXPECT_EQ(fs::status(locked).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  fs::permissions(locked, fs::perms::owner_write, fs::perm_options::add);  // so the next run can clean up
}

// --model takes a Hugging Face directory: generate prints transformers' greedy ids (the forced first
// token of m2m100 included, as it prints a --target-prefix-file's), score writes its teacher-forced
// log-probabilities, info names the family; and a CTranslate2 directory. Catches a tool that only
// opens files, that loses the config's forced_bos_token_id on the way to generate(), or that takes a
// CTranslate2 folder's config.json for Hugging Face's.
TEST(Cli, HuggingFaceDirectories) {
  for (const std::string name : {"marian", "marian_unshared", "bart", "bart_scaled", "mbart", "m2m100"}) {
    const std::string dir = (fixture_root() / "hf" / name).string();
    const auto r = run("generate --model " + dir + " --src-file " + dir + "/src.txt --max-new-tokens 20");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, read_file(dir + "/greedy.txt")) << name;
    const std::string out = tmp_path(name + ".npy");
    ASSERT_EQ(run("score --model " + dir + " --src-file " + dir + "/src.txt --tgt-file " + dir + "/tgt.txt --out " + out).status, 0);
    const auto got = ef::io::read_npy<float>(out);
    const auto want = ef::io::read_npy<double>(dir + "/logprobs.npy");
    ASSERT_EQ(got.shape(), want.shape());
    for (index_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got.data()[i], want.data()[i], 1e-4) << name << " " << i;
  }
  const auto info = run("info --model " + (fixture_root() / "hf" / "bart_sharded").string());
  ASSERT_EQ(info.status, 0) << info.err;
  EXPECT_NE(info.out.find("(Hugging Face bart)"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("model.encoder.layernorm_embedding.weight F32 [16]"), std::string::npos) << info.out;
  // A CTranslate2 folder (it holds a config.json too, which is not Hugging Face's): info names the
  // spec and lists model.bin's variables; generate prints CTranslate2's own greedy ids.
  const std::string ct2 = (fixture_root() / "hf" / "marian_ct2_float32").string();
  const auto ct2_info = run("info --model " + ct2);
  ASSERT_EQ(ct2_info.status, 0) << ct2_info.err;
  EXPECT_NE(ct2_info.out.find("(CTranslate2 TransformerSpec)"), std::string::npos) << ct2_info.out;
  EXPECT_NE(ct2_info.out.find("  encoder/layer_0/self_attention/linear_0/weight float32 [48, 16]"), std::string::npos)
      << ct2_info.out;
  const auto ct2_gen = run("generate --model " + ct2 + " --src-file " + (fixture_root() / "hf" / "marian" / "src.txt").string() +
                           " --max-new-tokens 20");
  ASSERT_EQ(ct2_gen.status, 0) << ct2_gen.err;
  EXPECT_EQ(ct2_gen.out, read_file(ct2 + "/ct2_greedy.txt"));
  // The other float32 conversions, driven as CTranslate2 was: bart and m2m100 with their forced
  // first token as the target prefix (CTranslate2's config has no forced BOS). mBART's start token is
  // null: generate refuses it, naming what gives it.
  for (const auto& [name, prefix] : std::vector<std::pair<std::string, std::string>>{
           {"marian_unshared", ""}, {"bart", "0"}, {"m2m100", "68"}}) {
    const std::string dir = (fixture_root() / "hf" / (name + "_ct2_float32")).string();
    const std::string src = (fixture_root() / "hf" / name / "src.txt").string();
    std::string args = "generate --model " + dir + " --src-file " + src + " --max-new-tokens 20";
    if (!prefix.empty()) {
      const std::string pf = tmp_path(name + "_prefix.txt");
      std::ofstream out(pf);
      for (std::size_t i = 0; i < id_lines(read_file(src)).size(); ++i) out << prefix << "\n";
      out.close();
      args += " --target-prefix-file " + pf;
    }
    const auto r = run(args);
    ASSERT_EQ(r.status, 0) << name << ": " << r.err;
    EXPECT_EQ(r.out, read_file(dir + "/ct2_greedy.txt")) << name;
  }
  const std::string mbart_ct2 = (fixture_root() / "hf" / "mbart_ct2_float32").string();
  expect_error(run("generate --model " + mbart_ct2 + " --src-file " + (fixture_root() / "hf" / "mbart" / "src.txt").string()), 1,
               "decoder_start_token: null");
}

// translate: text in, text out on the Hugging Face fixtures (transformers' greedy text), from a file
// and from standard input; --tgt-lang reaches the model (M2M100's forced first token); a folder
// without tokenizer files, a Marian model given a language and a missing input are one-line errors.
// Catches: a tokenizer or detokenizer differing from transformers', input read from the wrong place,
// output lines out of order or merged, options of generate not accepted.
TEST(Cli, Translate) {
  if (!EIGENFORMER_HAVE_TEXT) {
    expect_error(run("translate --model " + (fixture_root() / "hf" / "marian").string()), 1, "without SentencePiece");
    GTEST_SKIP() << "built without SentencePiece";
  }
  for (const std::string name : {"marian", "mbart", "m2m100"}) {
    const std::string dir = (fixture_root() / "hf" / name).string();
    const auto r = run("translate --model " + dir + " --src-file " + dir + "/text_src.txt --max-new-tokens 20 --batch-size 2");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, read_file(dir + "/text_greedy.txt")) << name;
    const auto piped = run("translate --model " + dir + " --max-new-tokens 20 <'" + dir + "/text_src.txt'");
    ASSERT_EQ(piped.status, 0) << piped.err;
    EXPECT_EQ(piped.out, r.out) << name;
  }
  const std::string m2m = (fixture_root() / "hf" / "m2m100").string();
  const auto de = run("translate --model " + m2m + " --src-file " + m2m + "/text_src.txt --max-new-tokens 20 --src-lang en --tgt-lang de");
  ASSERT_EQ(de.status, 0) << de.err;
  EXPECT_EQ(de.out, read_file(m2m + "/text_greedy.txt"));
  // translate takes generate's options: beam search runs (test_text checks its text against the ids).
  const auto beam = run("translate --model " + m2m + " --src-file " + m2m + "/text_src.txt --max-new-tokens 20 --beam-size 4");
  ASSERT_EQ(beam.status, 0) << beam.err;
  EXPECT_EQ(id_lines(beam.out).size(), 3u);
  // A CTranslate2 mBART conversion with the tokenizer files copied beside model.bin: the start token
  // (null in its config.json) is tokenizer_config.json's tgt_lang, ro_RO.
  const fs::path ct2 = scratch() / "mbart_ct2";
  fs::remove_all(ct2);
  fs::copy(fixture_root() / "hf" / "mbart_ct2_float32", ct2, fs::copy_options::recursive);
  for (const char* f : {"tokenizer_config.json", "sentencepiece.bpe.model"})
    fs::copy_file(fixture_root() / "hf" / "mbart" / f, ct2 / f);
  const std::string mbart = (fixture_root() / "hf" / "mbart").string();
  const auto ct2_text = run("translate --model " + ct2.string() + " --src-file " + mbart + "/text_src.txt --max-new-tokens 20");
  ASSERT_EQ(ct2_text.status, 0) << ct2_text.err;
  EXPECT_EQ(ct2_text.out, read_file(mbart + "/text_greedy.txt"));
  expect_error(run("translate --model " + m2m + " --src-file " + m2m + "/text_src.txt --tgt-lang xx"), 1, "--tgt-lang: \"xx\"");
  expect_error(run("translate --model " + (fixture_root() / "hf" / "marian").string() + " --src-lang en </dev/null"), 1,
               "--src-lang");
  expect_error(run("translate --model " + (fixture_root() / "hf" / "bart").string() + " </dev/null"), 1,
               "tokenizer_config.json: missing");
  expect_error(run("translate --model " + m2m + " --src-file " + tmp_path("absent.txt")), 1, "absent.txt: cannot open");
  // A line too long for the model names the file and line.
  std::string long_line;
  for (int i = 0; i < 80; ++i) long_line += "the ";
  const std::string src = tmp_path("long.txt");
  std::ofstream(src) << "the red cat\n" << long_line << "\n";
  expect_error(run("translate --model " + m2m + " --src-file " + src), 1, "long.txt:2: ");
}

// Catches: the tool requiring a source for a decoder-only model, printing the prompt with the new
// tokens, or scoring through the encoder-decoder path (tests/fixtures/lm: transformers' outputs), for
// a Llama, a GPT-2 (learned positions, LayerNorm) and a Mixtral (MoE) folder.
TEST(Cli, DecoderOnlyScoreAndGenerate) {
  // The CTranslate2 float32 conversions (model.bin) score and generate as their Hugging Face originals.
  for (const std::string name : {"llama", "gpt2", "mixtral", "llama_ct2_float32", "gpt2_ct2_float32"}) {
    const std::string base = name.substr(0, name.find("_ct2_"));  // the original: tgt.txt, prompts.txt, references
    const std::string dir = (fixture_root() / "lm" / name).string();
    const std::string out = tmp_path("lm_" + name + ".npy");
    auto r = run("score --model " + dir + " --tgt-file " + fixture("lm/" + base, "tgt.txt") + " --out " + out);
    ASSERT_EQ(r.status, 0) << name << ": " << r.err;
    const auto got = ef::io::read_npy<float>(out);
    const auto expected = ef::io::read_npy<double>(fixture_root() / "lm" / base / "logprobs.npy");
    ASSERT_EQ(got.shape(), expected.shape()) << name;
    EXPECT_LT(max_abs_diff(got.values(), expected.values()), 1e-4) << name;
    r = run("generate --model " + dir + " --src-file " + fixture("lm/" + base, "prompts.txt") + " --max-new-tokens 16");
    ASSERT_EQ(r.status, 0) << name << ": " << r.err;
    EXPECT_EQ(id_lines(r.out), id_lines(read_file(fixture_root() / "lm" / base / "greedy.txt"))) << name;
  }
  const std::string dir = (fixture_root() / "lm" / "llama").string();
  expect_error(run("score --model " + dir + " --src-file " + fixture("lm/llama", "prompts.txt") + " --tgt-file " +
                   fixture("lm/llama", "tgt.txt") + " --out " + tmp_path("x.npy")),
               2, "a decoder-only model scores --tgt-file alone");
}

// `translate` on a Llama folder with tokenizer.model: text prompts in, transformers' greedy
// continuations out (tests/fixtures/lm/llama_text/greedy.txt), from a file and from standard input in
// batches of 3 (4 prompts: a second batch of one). Catches: prompts echoed, lines out of order across
// batches, the tool refusing a decoder-only model's text.
TEST(Cli, TranslateContinuesLlamaPrompts) {
  const std::string dir = (fixture_root() / "lm" / "llama_text").string();
  const std::string want = read_file(fixture_root() / "lm" / "llama_text" / "greedy.txt");
  auto r = run("translate --model " + dir + " --src-file " + fixture("lm/llama_text", "prompts.txt") + " --max-new-tokens 12");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, want);
  r = run("translate --model " + dir + " --max-new-tokens 12 --batch-size 3 < " + fixture("lm/llama_text", "prompts.txt"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, want);
  expect_error(run("translate --model " + dir + " --tgt-lang de --src-file " + fixture("lm/llama_text", "prompts.txt")), 1,
               "--tgt-lang");
}

namespace {

/// One row of `score --summary`: line (1-based, or "all"), predicted tokens, mean NLL, perplexity.
struct summary_row {
  std::string line;
  long tokens = 0;
  double nll = 0, ppl = 0;
};

/// The rows of `score --summary`'s output, after its header (checked).
std::vector<summary_row> summary_rows(const std::string& text) {
  std::istringstream in(text);
  std::string header;
  std::getline(in, header);
  EXPECT_EQ(header, "line\ttokens\tnll\tperplexity");
  std::vector<summary_row> rows;
  for (std::string l; std::getline(in, l);) {
    std::istringstream f(l);
    summary_row r;
    std::string nll, ppl;
    f >> r.line >> r.tokens >> nll >> ppl;
    r.nll = std::stod(nll);
    r.ppl = std::stod(ppl);
    rows.push_back(r);
  }
  return rows;
}

/// Per line of `tgt`: {predicted tokens, sum of -log p(token t+1)} from log-probabilities lp[n, t, v].
template <class Scalar>
std::vector<std::pair<long, double>> nll_sums(const ef::tensor<Scalar>& lp, const std::vector<std::vector<long>>& tgt) {
  std::vector<std::pair<long, double>> out;
  for (std::size_t n = 0; n < tgt.size(); ++n) {
    double sum = 0;
    for (std::size_t t = 0; t + 1 < tgt[n].size(); ++t)
      sum -= static_cast<double>(lp(static_cast<index_t>(n), static_cast<index_t>(t), static_cast<index_t>(tgt[n][t + 1])));
    out.emplace_back(tgt[n].empty() ? 0 : static_cast<long>(tgt[n].size()) - 1, sum);
  }
  return out;
}

/// Compares `score --summary`'s rows with the expected sums: tokens exactly, the mean NLL within
/// `tol` (nats) and the perplexity within `tol` relative (d exp(x) / exp(x) = dx); the last row is
/// the token-weighted mean. Lines that predict nothing print 0 tokens and nan.
void expect_summary(const std::string& text, const std::vector<std::pair<long, double>>& expected, double tol) {
  const auto rows = summary_rows(text);
  ASSERT_EQ(rows.size(), expected.size() + 1) << text;
  long all_tokens = 0;
  double all_sum = 0;
  for (std::size_t n = 0; n <= expected.size(); ++n) {
    const bool all = n == expected.size();
    const long tokens = all ? all_tokens : expected[n].first;
    const double sum = all ? all_sum : expected[n].second;
    SCOPED_TRACE(rows[n].line);
    EXPECT_EQ(rows[n].line, all ? std::string("all") : std::to_string(n + 1));
    EXPECT_EQ(rows[n].tokens, tokens);
    if (tokens == 0) {
      EXPECT_TRUE(std::isnan(rows[n].nll) && std::isnan(rows[n].ppl)) << text;
    } else {
      const double nll = sum / static_cast<double>(tokens);
      EXPECT_NEAR(rows[n].nll, nll, tol);
      EXPECT_NEAR(rows[n].ppl / std::exp(nll), 1.0, tol);
    }
    if (!all) {
      all_tokens += tokens;
      all_sum += sum;
    }
  }
}

}  // namespace

// score --summary against transformers' own log-probabilities (tests/fixtures/lm/llama/logprobs.npy):
// per line, the mean -ln p of tokens 2..T given those before them. Catches: a mean over T tokens
// instead of T - 1, scoring row t against token t instead of t + 1, log2 or log10 instead of ln,
// an overall line that averages the line means instead of weighting by tokens (the lines have 8, 13,
// 19 and 11 predicted tokens: the two differ, checked below), and a perplexity that is not exp(nll).
// The tolerance 1e-4 nats is the CLI's bound on each float log-probability against transformers
// (DecoderOnlyScoreAndGenerate); a mean of such errors is within it.
TEST(Cli, ScoreSummaryMatchesTransformers) {
  const std::string dir = (fixture_root() / "lm" / "llama").string(), tgt = fixture("lm/llama", "tgt.txt");
  const auto expected_lp = ef::io::read_npy<double>(fixture_root() / "lm" / "llama" / "logprobs.npy");
  const auto lines = id_lines(read_file(tgt));
  const auto expected = nll_sums(expected_lp, lines);
  double weighted = 0, unweighted = 0;
  long tokens = 0;
  for (const auto& [n, sum] : expected) {
    tokens += n;
    weighted += sum;
    unweighted += sum / static_cast<double>(n) / static_cast<double>(expected.size());
  }
  ASSERT_GT(std::fabs(weighted / static_cast<double>(tokens) - unweighted), 1e-3);  // the fixture tells them apart
  const auto r = run("score --model " + dir + " --tgt-file " + tgt + " --summary");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  expect_summary(r.out, expected, 1e-4);

  // --summary with --out does both: the same summary, and the file a plain --out run writes.
  const std::string both = tmp_path("both.npy"), plain = tmp_path("plain.npy");
  const auto r2 = run("score --model " + dir + " --tgt-file " + tgt + " --summary --out " + both + " --batch-size 3");
  ASSERT_EQ(r2.status, 0) << r2.err;
  ASSERT_EQ(run("score --model " + dir + " --tgt-file " + tgt + " --out " + plain).status, 0);
  EXPECT_LT(max_abs_diff(ef::io::read_npy<float>(both).values(), ef::io::read_npy<float>(plain).values()), 1e-5);
  expect_summary(r2.out, expected, 1e-4);
  // Neither: --out is still needed. A flag takes no value.
  expect_error(run("score --model " + dir + " --tgt-file " + tgt), 2, "missing option --out");
  expect_error(run("score --model " + dir + " --tgt-file " + tgt + " --summary=yes"), 2, "--summary: takes no value");
  // The file comes first: a write that fails prints no summary (and leaves the old file).
  write_file(both, "previous");
  expect_error(run("score --model " + dir + " --tgt-file " + tgt + " --summary --out " + both, "ulimit -f 1 && trap '' XFSZ && "),
               1, both);
  EXPECT_EQ(read_file(both), "previous");
}

// score --summary of an encoder-decoder model (tests/fixtures/hf/marian) equals what its own --out
// file gives, and a one-token line (tgt.txt line 2) predicts nothing: 0 tokens and nan, left out of
// the overall line. Catches: the summary wired only to the decoder-only path, or a one-token line
// counted as one predicted token (or dividing by zero into the overall mean).
TEST(Cli, ScoreSummaryOfAnEncoderDecoderModel) {
  const std::string dir = (fixture_root() / "hf" / "marian").string(), out = tmp_path("marian.npy");
  const std::string tgt = (fixture_root() / "hf" / "marian" / "tgt.txt").string();
  const auto r = run("score --model " + dir + " --src-file " + (fixture_root() / "hf" / "marian" / "src.txt").string() +
                     " --tgt-file " + tgt + " --out " + out + " --summary");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = id_lines(read_file(tgt));
  ASSERT_EQ(lines[1].size(), 1u);
  // Printed with 6 decimals from the same float numbers: equal to rounding.
  expect_summary(r.out, nll_sums(ef::io::read_npy<float>(out), lines), 2e-6);
}

// Catches: info counting every query head in the KV cache (llama: 4 heads, 512 bytes per token)
// instead of the 2 KV heads. Hand-computed: 2 layers x (key + value) x 2 KV heads x d_head 8 x
// 4 bytes = 256 bytes per token; max_positions 64 tokens: 16384 bytes.
TEST(Cli, InfoPrintsKvCacheBytesOfTheKvHeads) {
  const auto r = run("info --model " + (fixture_root() / "lm" / "llama").string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("kv cache: 256 bytes per token (2 layers x 2 x 2 kv heads x 8 x 4 bytes), 16384 bytes"),
            std::string::npos)
      << r.out;
}

// --stop-ids ends a line at any of the ids, not printed, and eos_id still ends lines
// (tests/fixtures/lm/llama/greedy.txt: 61 is the 4th token of lines 1 and 2 and the 5th of line 4,
// 46 the first of line 3; lines 1 and 2 end by eos_id before --max-new-tokens 16). Catches: only the
// first id honoured, the stop token printed, and the ids replacing eos_id instead of joining it (lines
// 1 and 2 would run on past their end).
TEST(Cli, StopIdsEndLines) {
  const std::string gen = "generate --model " + (fixture_root() / "lm" / "llama").string() + " --src-file " +
                          fixture("lm/llama", "prompts.txt") + " --max-new-tokens 16";
  const auto greedy = id_lines(read_file(fixture_root() / "lm" / "llama" / "greedy.txt"));
  auto r = run(gen + " --stop-ids 61,46");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(id_lines(r.out), (std::vector<std::vector<long>>{{52, 17, 35}, {40, 11, 35}, {}, {58, 59, 11, 35}}));
  r = run(gen + " --stop-ids 46");
  ASSERT_EQ(r.status, 0) << r.err;
  auto expected = greedy;
  expected[2].clear();
  EXPECT_EQ(id_lines(r.out), expected);
  expect_error(run(gen + " --stop-ids 64"), 2, "--stop-ids: token id 64 outside the target vocabulary (0 to 63)");
  expect_error(run(gen + " --stop-ids 3,x"), 2, "--stop-ids: 'x' is not a token id");
  expect_error(run(gen + " --stop-ids 3,"), 2, "--stop-ids: '' is not a token id");
}
