"""eigenformer's attention core against PyTorch's, same shapes, same machine, one table.

    /usr/bin/python3 tools/attention_compare.py [--threads 1] [--build build/release] [--reps 3]
        [--blas-dir /tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-openmp] [--quick] [--json FILE]

Runs, one after the other so they never share the cores, with OMP_NUM_THREADS=--threads:
  <build>/bench/bench_attention   (Google Benchmark; --reps repetitions, medians)
  tools/bench_attention_torch.py  (PyTorch 1.13, explicit bmm / softmax / bmm; medians of --reps)
and prints, per shape: CPU µs per call of each (the attention core: scores, softmax, weighted sum;
no projections on either side), ratio = PyTorch / eigenformer (above 1: eigenformer faster),
eigenformer's GFLOP/s and K/V GB/s, that bandwidth as a fraction of the machine's single-thread read
bandwidth measured in the same bench_attention run (1 GiB sum, huge pages as eigenformer's tensors
get them), and, for scale, eigenformer's public function with its projections (self_attention /
attention_over_kv). See bench/bench_attention.cpp for what exactly is timed and counted.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def google_benchmark(binary, threads, reps, quick):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [binary, "--benchmark_format=json"]
    if quick:
        cmd += ["--benchmark_min_time=0.01"]
    elif reps > 1:
        cmd += [f"--benchmark_repetitions={reps}", "--benchmark_report_aggregates_only=true"]
    out = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    results = {}
    for b in out["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]
        for suffix in ("/iterations:4", "/min_time:0.100"):
            name = name.replace(suffix, "")
        results[name] = b
    return out["context"], results


def us(b):
    return b["cpu_time"] * {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b["time_unit"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--blas-dir", help="OpenBLAS folder for PyTorch (see tools/bench_attention_torch.py)")
    ap.add_argument("--quick", action="store_true", help="short runs, one repetition (a smoke test)")
    ap.add_argument("--json", help="also write both runs' medians to this file")
    args = ap.parse_args()

    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    ctx, ours = google_benchmark(os.path.join(args.build, "bench", "bench_attention"), args.threads, args.reps,
                                 args.quick)
    cmd = [sys.executable, os.path.join(HERE, "bench_attention_torch.py"), "--json", "--threads", str(args.threads),
           "--reps", str(args.reps)] + (["--quick"] if args.quick else [])
    if args.blas_dir:
        cmd += ["--blas-dir", args.blas_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    peer = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    bw = ours["read_bandwidth/huge_pages"]["GB_per_s"]
    bw4k = ours["read_bandwidth/4k_pages"]["GB_per_s"]
    print(f"threads {args.threads}; load average before {' '.join(load_before)}, after {' '.join(load_after)}; "
          f"PyTorch {peer['torch']}, BLAS {peer['blas']}")
    print(f"read bandwidth, 1 thread, 1 GiB sum (same run): {bw:.1f} GB/s with huge pages, {bw4k:.1f} GB/s with 4 KiB pages")
    if "reference" in peer["blas"]:
        print("WARNING: PyTorch runs on the reference BLAS: its numbers mean nothing (use --blas-dir)")
    print()
    print("| shape | eigenformer µs | PyTorch µs | ratio | eigenformer GFLOP/s | K/V GB/s | of bandwidth "
          "| PyTorch K/V GB/s | eigenformer with projections µs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, b in ours.items():
        if "_core/" not in name:
            continue
        p = peer["results"].get(name)
        api = ours.get(name.replace("_core/", "_api/"))
        e_us = us(b)
        kind, rest = name.split("_core/")
        shape = kind + " " + rest.replace("heads:", "h").replace("/batch:", " b").replace("/", " ").replace(":", "=")
        p_us = p["us"] if p else float("nan")
        row = {"name": name, "eigenformer_us": e_us, "torch_us": p_us, "ratio": p_us / e_us,
               "GFLOP_per_s": b["GFLOP_per_s"], "KV_GB_per_s": b["KV_GB_per_s"], "of_bandwidth": b["KV_GB_per_s"] / bw,
               "torch_KV_GB_per_s": p["KV_GB_per_s"] if p else float("nan"), "api_us": us(api) if api else float("nan")}
        rows.append(row)
        print(f"| {shape} | {e_us:.1f} | {p_us:.1f} | {row['ratio']:.2f} | {row['GFLOP_per_s']:.1f} | "
              f"{row['KV_GB_per_s']:.2f} | {row['of_bandwidth']:.2f} | {row['torch_KV_GB_per_s']:.2f} | {row['api_us']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_before": load_before, "load_after": load_after, "read_GB_per_s": bw,
                       "read_GB_per_s_4k": bw4k, "context": ctx, "torch": peer, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
