"""eigenformer against PyTorch on the same machine, in one run: prints the table of docs/performance.md.

    /usr/bin/python3 tools/compare_speed.py [--threads 1] [--build build/release] [--quick]

Runs, one after the other so they never share the cores:
  build/release/bench/bench_encoder  (eigenformer encoder, Transformer-base, batch 1/8, source 32/128)
  build/release/bench/bench_decode   (one KV-cached decode step, batch 1 and 8, vocab 32000)
  tools/bench_torch.py --json         (PyTorch 1.13: the same shapes; see its header for the variants)
with OMP_NUM_THREADS / torch threads set to --threads, and prints medians and ratios
(PyTorch time / eigenformer time: above 1 means eigenformer is faster).
Needs the Release build (scripts/test or scripts/demo make it), Debian's python3-torch and, for
meaningful PyTorch numbers, OpenBLAS (apt-get install libopenblas0-openmp).
"""
import argparse
import json
import os
import subprocess
import sys


def google_benchmark(binary, threads, repetitions):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([binary, "--benchmark_format=json", f"--benchmark_repetitions={repetitions}",
                          "--benchmark_report_aggregates_only=true"],
                         env=env, check=True, capture_output=True, text=True).stdout
    medians = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") == "median":
            medians[b["run_name"]] = b
    return medians


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
    return b["real_time"] * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    args = ap.parse_args()
    reps = 3 if args.quick else 5
    enc = google_benchmark(os.path.join(args.build, "bench", "bench_encoder"), args.threads, reps)
    dec = google_benchmark(os.path.join(args.build, "bench", "bench_decode"), args.threads, reps)
    torch_cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_torch.py"),
                 "--json", "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    peer = json.loads(subprocess.run(torch_cmd, check=True, capture_output=True, text=True).stdout)

    print(f"threads: {args.threads}; PyTorch {peer['torch']} with {peer['blas']} BLAS")
    print()
    print("| Transformer-base, fp32 | eigenformer | PyTorch | PyTorch / eigenformer |")
    print("|---|---|---|---|")
    for B in (1, 8):
        for S in (32, 128):
            ours = ms(enc[f"BM_Encode/{B}/{S}/real_time"])
            theirs = peer["encoder_ms"][f"b{B}_s{S}"]
            print(f"| encoder, batch {B}, source {S} (ms) | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f} |")
    ours1 = ms(dec["BM_DecodeStep<float>/1/real_time"])
    for name, label in (("iii_kv_addmv", "KV cache + addmv (its fastest)"), ("ii_kv_linear", "KV cache + F.linear"),
                        ("i_full_prefix", "nn.Transformer decoder on the whole prefix")):
        theirs = peer["decode_b1_ms_per_token"][name]
        print(f"| decode, batch 1 (ms/token) vs PyTorch {label} | {ours1:.2f} | {theirs:.2f} | {theirs / ours1:.2f} |")
    ours8 = ms(dec["BM_DecodeStep<float>/8/real_time"])
    theirs8 = peer["decode_b8_kv_linear_ms_per_step"]
    print(f"| decode, batch 8 (ms/step) vs PyTorch KV cache + F.linear | {ours8:.2f} | {theirs8:.2f} | {theirs8 / ours8:.2f} |")
    print(f"| decode, batch 1, fp64 (ms/token) | {ms(dec['BM_DecodeStep<double>/1/real_time']):.2f} | | |")
    print(f"| decode, batch 8, fp64 (ms/step) | {ms(dec['BM_DecodeStep<double>/8/real_time']):.2f} | | |")


if __name__ == "__main__":
    main()
