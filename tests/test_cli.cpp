// The command-line tool (shared/spec/cli.md), driven as a user drives it: exit codes, stdout,
// the one-line errors on stderr, and output files that appear whole or not at all.
#include <eigenformer/io/npy.hpp>

#include <array>
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

/// Runs the tool with `args` (a shell-quoted string), capturing stdout and stderr.
run_result run(const std::string& args) {
  const auto out = scratch() / "stdout", err = scratch() / "stderr";
  const std::string cmd = std::string("'") + EIGENFORMER_CLI + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_file(out), read_file(err)};
}

std::string tmp_path(const std::string& name) { return (scratch() / name).string(); }

std::string fixture(const std::string& name, const std::string& file) { return (fixture_root() / name / file).string(); }

const std::string base = "postln_relu_paper_f32";

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
  const auto s1 = run("generate" + model + " --temperature 1.5 --seed 1");
  const auto s2 = run("generate" + model + " --temperature 1.5 --seed 2");
  EXPECT_NE(s1.out, s2.out);
  EXPECT_EQ(run("generate" + model + " --temperature 0").out, run("generate" + model).out);  // T = 0 is greedy
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
  EXPECT_EQ(run("sample --logits " + logits + " --n 5").out, "0 0 0 5\n");  // no option: greedy
  EXPECT_EQ(run("sample --logits " + logits + " --n 100 --temperature 1 --seed 9").out,
            run("sample --logits " + logits + " --n 100 --temperature 1 --seed 9").out);
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
  // An existing output survives a failed run untouched.
  write_file(out, "previous");
  const std::string bad_tgt = tmp_path("bad_tgt.txt");
  write_file(bad_tgt, "1 2\n1 40\n1\n");
  expect_error(run("score --model " + model + " --src-file " + src + " --tgt-file " + bad_tgt + " --out " + out), 1,
               "bad_tgt.txt:2: token id 40 outside the target vocabulary (0 to 28)");
  std::ifstream in(out);
  std::string kept;
  std::getline(in, kept);
  EXPECT_EQ(kept, "previous");
  expect_error(run("score --model " + model + " --src-file " + src + " --tgt-file " + fixture(base, "tgt.txt") +
                   " --out /nonexistent/dir/o.npy"),
               1, "/nonexistent/dir/o.npy");
  for (const auto& e : fs::directory_iterator(fs::path(out).parent_path()))  // no temporary left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}
