"""PyTorch peer of bench/bench_attention.cpp: the attention core at the same shapes, same machine.

Run (Debian's PyTorch 1.13), from the repository root:

    /usr/bin/python3 tools/bench_attention_torch.py [--threads 1] [--json] [--quick] [--blas-dir DIR]

fp32, d_model 512, 1, 8 and 16 heads, batch 1 and 8, under torch.no_grad():
  self    self-attention of B sequences of T rows (not causal), T = 16, 64, 256, 1024;
  decode  one query row per sequence over a KV cache of L rows, L = 16, 64, 256, 1024, 4096;
  cross   one query row per sequence over S source rows, S = 32, 128, 512.

What is timed: the attention core only, as eigenformer's `*_core` benchmarks time it, written the
way nn.MultiheadAttention computes it (torch 1.13 has no scaled_dot_product_attention):
    scores = torch.bmm(q * (1 / sqrt(d_head)), k.transpose(1, 2)); p = torch.softmax(scores, -1);
    out = torch.bmm(p, v)
on q [B H, Tq, d_head], k, v [B H, Tk, d_head] contiguous (PyTorch's own layout for heads, as
MultiheadAttention leaves it after its view/transpose and as Hugging Face caches keep K/V). The
Q/K/V/out projections and the head split/merge copies are not timed (eigenformer needs no copies:
its heads are strided views). The causal mask of a single decode row is empty and is not applied.
decode and cross rotate through copies of K/V (at least 256 MiB in all), as the C++ benchmark does,
so that K/V come from memory; self-attention reuses one set.

Counters as in bench_attention.cpp: GFLOP/s counts 4 B Tq Tk d_model (the two products), K/V GB/s
counts B Tk 2 d_model 4 bytes per call. Time: CPU time of the process per call (time.process_time,
which is what Google Benchmark's default column reports), median of --reps measurements of at least
--seconds each; wall time is reported in the JSON too.

BLAS: Debian's torch does float GEMM through the system libblas.so.3; with the reference BLAS the
numbers mean nothing. Give --blas-dir a folder with OpenBLAS's libblas.so.3 (see tools/bench_torch.py:
`apt-get download libopenblas0-openmp && dpkg -x libopenblas0-openmp_*.deb /tmp/openblas`, then
--blas-dir /tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-openmp).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


def _early_args():
    ap = argparse.ArgumentParser(description="PyTorch attention-core timings (peer of bench_attention)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--quick", action="store_true", help="one short measurement each (a smoke test)")
    ap.add_argument("--seconds", type=float, default=0.1, help="minimum time per measurement")
    ap.add_argument("--reps", type=int, default=3, help="measurements per shape (median)")
    ap.add_argument("--filter", default="", help="only shapes whose name contains this")
    ap.add_argument("--blas-dir", help="folder holding the libblas.so.3 to use (re-runs with LD_LIBRARY_PATH)")
    args = ap.parse_args()
    if args.blas_dir:
        d = os.path.abspath(args.blas_dir)
        if not os.path.exists(os.path.join(d, "libblas.so.3")):
            sys.exit(f"--blas-dir: {d}: no libblas.so.3 there")
        paths = os.environ.get("LD_LIBRARY_PATH", "").split(":")
        if paths[0] != d:
            os.environ["LD_LIBRARY_PATH"] = ":".join([d] + [p for p in paths if p])
            os.execv(sys.executable, [sys.executable] + sys.argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    return args


ARGS = _early_args()

import torch  # noqa: E402  (after the environment is set)

D_MODEL = 512
ROTATE_BYTES = 256 << 20
HEADS = (1, 8, 16)
BATCHES = (1, 8)
SELF_T = (16, 64, 256, 1024)
DECODE_L = (16, 64, 256, 1024, 4096)
CROSS_S = (32, 128, 512)


def loaded_blas():
    try:
        with open(f"/proc/{os.getpid()}/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower() and "/" in line}
    except OSError:
        return "unknown"
    names = sorted(os.path.realpath(p) for p in libs)
    if any("openblas" in n for n in names):
        return "OpenBLAS (" + ", ".join(os.path.basename(n) for n in names) + ")"
    return "reference (" + ", ".join(names) + ")" if names else "none found"


def core(q, k, v, scale):
    s = torch.bmm(q * scale, k.transpose(1, 2))
    p = torch.softmax(s, dim=-1)
    return torch.bmm(p, v)


def measure(fn, seconds, reps):
    """Median (CPU seconds, wall seconds) per call over `reps` measurements of >= `seconds` each."""
    fn()
    # calibrate the number of calls per measurement
    n = 1
    while True:
        c0 = time.process_time()
        for _ in range(n):
            fn()
        dt = time.process_time() - c0
        if dt >= seconds / 4 or n >= 1 << 20:
            break
        n *= 4
    n = max(1, int(math.ceil(n * seconds / max(dt, 1e-9))))
    cpu, wall = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        cpu.append((time.process_time() - c0) / n)
        wall.append((time.perf_counter() - w0) / n)
    return statistics.median(cpu), statistics.median(wall)


def shapes():
    for h in HEADS:
        for b in BATCHES:
            for t in SELF_T:
                yield "self", h, b, t
    for h in HEADS:
        for b in BATCHES:
            for l in DECODE_L:
                yield "decode", h, b, l
    for h in HEADS:
        for b in BATCHES:
            for s in CROSS_S:
                yield "cross", h, b, s


def name(kind, h, b, n):
    return f"{kind}_core/heads:{h}/batch:{b}/{ {'self': 'T', 'decode': 'L', 'cross': 'S'}[kind] }:{n}".replace(" ", "")


def run_shape(kind, h, b, n, seconds, reps):
    g = torch.Generator().manual_seed(1)
    dh = D_MODEL // h
    tq = n if kind == "self" else 1
    tk = n
    kv_bytes = b * tk * 2 * D_MODEL * 4
    flops = 4.0 * b * tq * tk * D_MODEL
    q = torch.rand(b * h, tq, dh, generator=g) * 2 - 1
    if kind == "self":
        sets = [(torch.rand(b * h, tk, dh, generator=g) * 2 - 1, torch.rand(b * h, tk, dh, generator=g) * 2 - 1)]
    else:
        k0 = torch.rand(b * h, tk, dh, generator=g) * 2 - 1
        v0 = torch.rand(b * h, tk, dh, generator=g) * 2 - 1
        copies = max(2, math.ceil(ROTATE_BYTES / kv_bytes))
        sets = [(k0.clone(), v0.clone()) for _ in range(copies)]
    scale = 1.0 / math.sqrt(dh)
    state = {"i": 0}

    def fn():
        k, v = sets[state["i"]]
        state["i"] = (state["i"] + 1) % len(sets)
        return core(q, k, v, scale)

    cpu, wall = measure(fn, seconds, reps)
    del sets
    return {"us": cpu * 1e6, "wall_us": wall * 1e6, "GFLOP_per_s": flops / cpu / 1e9,
            "KV_GB_per_s": kv_bytes / cpu / 1e9, "flops": flops, "kv_bytes": kv_bytes}


def check():
    """The core equals nn.MultiheadAttention's (projections applied around it) on one shape."""
    torch.manual_seed(0)
    h, b, t = 8, 2, 5
    mha = torch.nn.MultiheadAttention(D_MODEL, h, batch_first=True).eval()
    x = torch.randn(b, t, D_MODEL)
    ref = mha(x, x, x, need_weights=False)[0]
    qkv = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    dh = D_MODEL // h
    q, k, v = (qkv[..., i * D_MODEL:(i + 1) * D_MODEL].reshape(b, t, h, dh).transpose(1, 2).reshape(b * h, t, dh)
               for i in range(3))
    ctx = core(q, k, v, 1.0 / math.sqrt(dh)).reshape(b, h, t, dh).transpose(1, 2).reshape(b, t, D_MODEL)
    out = mha.out_proj(ctx)
    err = (out - ref).abs().max().item()
    if err > 1e-4:
        sys.exit(f"core check failed: max |difference| to nn.MultiheadAttention {err}")
    return err


def main():
    torch.set_num_threads(ARGS.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    seconds, reps = (0.02, 1) if ARGS.quick else (ARGS.seconds, ARGS.reps)
    with torch.no_grad():
        err = check()
        results = {}
        for kind, h, b, n in shapes():
            key = name(kind, h, b, n)
            if ARGS.filter and ARGS.filter not in key:
                continue
            results[key] = run_shape(kind, h, b, n, seconds, reps)
            if not ARGS.json:
                r = results[key]
                print(f"{key:40s} {r['us']:12.2f} us {r['GFLOP_per_s']:8.2f} GFLOP/s {r['KV_GB_per_s']:8.2f} GB/s K/V",
                      flush=True)
    meta = {"torch": torch.__version__, "blas": loaded_blas(), "threads": ARGS.threads, "mha_check_max_abs": err}
    if ARGS.json:
        print(json.dumps({**meta, "results": results}))
    else:
        print(json.dumps(meta))


if __name__ == "__main__":
    main()
