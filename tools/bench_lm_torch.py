"""PyTorch peer of bench/bench_lm.cpp: transformers' LlamaForCausalLM at the same shapes, same machine.

Run from the repository root with the Hugging Face environment (transformers 4.46.3 on Debian's
PyTorch 1.13), once per thread count:

    PY=/work/main/build/hf-venv/bin/python   # or any python with torch and transformers
    $PY tools/bench_lm_torch.py --threads 1 --blas-dir /tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-openmp
    $PY tools/bench_lm_torch.py --threads 2 --blas-dir ...

Shapes (random init, float32, eager attention, vocab 32000, no biases, untied lm_head):
  125M mha   hidden 768, 12 layers, 12 heads, 12 KV heads, intermediate 2048
  125M gqa4  the same with 4 KV heads
  1B gqa8    hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 5632

Under torch.inference_mode(), batch 1:
  prefill   model(prompt of 128 tokens, past_key_values=DynamicCache(), use_cache=True): the logits of every position, as
            bench_lm's BM_Prefill computes them; prompt_tokens_per_s = 128 / time. Also with
            num_logits_to_keep=1 (the last position only, what generate() asks for in 4.46): prefill_last.
  decode    64 greedy steps after that prompt, each model(next token, past_key_values=cache,
            use_cache=True) and an argmax, as generate(do_sample=False) runs them without its
            bookkeeping; ms_per_token and gen_tokens_per_s. The prefill is outside the timing.
Time: wall clock (time.perf_counter, as bench_lm's UseRealTime), median of --reps measurements
(--reps-1b for the 1B shape: its decode takes seconds).

BLAS: Debian's torch does float GEMM through the system libblas.so.3; with the reference BLAS the
numbers mean nothing. --blas-dir names a folder with OpenBLAS's libblas.so.3 (tools/bench_torch.py
says how to get one).
"""
import argparse
import json
import os
import statistics
import sys
import time


def _early_args():
    ap = argparse.ArgumentParser(description="transformers LlamaForCausalLM tokens/s (peer of bench_lm)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="measurements per case (median), 125M shapes")
    ap.add_argument("--reps-1b", type=int, default=1, help="measurements per case, 1B shape")
    ap.add_argument("--shapes", default="125M mha,125M gqa4,1B gqa8", help="comma-separated shape names")
    ap.add_argument("--json", action="store_true", help="print one JSON object per case instead of the table")
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
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

PROMPT, NEW = 128, 64
SHAPES = {
    "125M mha": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                     intermediate_size=2048),
    "125M gqa4": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                      intermediate_size=2048),
    "1B gqa8": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=5632),
}


def loaded_blas():
    try:
        with open(f"/proc/{os.getpid()}/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower() and "/" in line}
    except OSError:
        return "unknown"
    names = sorted(os.path.realpath(p) for p in libs)
    if any("openblas" in n for n in names):
        return "OpenBLAS"
    return "reference (" + ", ".join(names) + ")" if names else "none found"


def build(shape):
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      attention_bias=False, mlp_bias=False, torch_dtype="float32", attn_implementation="eager",
                      **SHAPES[shape])
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).float().eval()
    return m


def prompt():
    return torch.tensor([[3 + (i * 7919) % 31990 for i in range(PROMPT)]], dtype=torch.long)


def prefill(m, ids, last_only):
    kw = {"num_logits_to_keep": 1} if last_only else {}
    t0 = time.perf_counter()
    out = m(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, **kw)
    return time.perf_counter() - t0, out


def decode(m, ids):
    cache = DynamicCache()  # what generate() uses: grows by concatenation each step
    out = m(input_ids=ids, past_key_values=cache, use_cache=True, num_logits_to_keep=1)
    nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
    t0 = time.perf_counter()
    for _ in range(NEW):
        out = m(input_ids=nxt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
    return time.perf_counter() - t0


def main():
    torch.set_num_threads(ARGS.threads)
    print(f"# torch {torch.__version__}, BLAS {loaded_blas()}, threads {torch.get_num_threads()}", file=sys.stderr)
    rows = []
    for shape in [s.strip() for s in ARGS.shapes.split(",") if s.strip()]:
        m = build(shape)
        params = sum(p.numel() for p in m.parameters())
        reps = ARGS.reps_1b if shape.startswith("1B") else ARGS.reps
        ids = prompt()
        with torch.inference_mode():
            prefill(m, ids, False)  # warm-up
            full = statistics.median(prefill(m, ids, False)[0] for _ in range(reps))
            last = statistics.median(prefill(m, ids, True)[0] for _ in range(reps))
            dec = statistics.median(decode(m, ids) for _ in range(reps))
        row = dict(shape=shape, threads=ARGS.threads, params_M=params / 1e6, prefill_ms=full * 1e3,
                   prompt_tokens_per_s=PROMPT / full, prefill_last_ms=last * 1e3,
                   prompt_tokens_per_s_last=PROMPT / last, ms_per_token=dec * 1e3 / NEW, gen_tokens_per_s=NEW / dec)
        rows.append(row)
        if ARGS.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{shape:10s} threads {ARGS.threads}  params {row['params_M']:7.1f} M  "
                  f"prefill {row['prefill_ms']:8.1f} ms ({row['prompt_tokens_per_s']:7.1f} tok/s; last-only "
                  f"{row['prompt_tokens_per_s_last']:7.1f})  decode {row['ms_per_token']:7.2f} ms/token "
                  f"({row['gen_tokens_per_s']:6.1f} tok/s)", flush=True)
        del m


if __name__ == "__main__":
    main()
