"""Races eigenformer against CTranslate2 on the same random Transformer-base weights.

    bench/peers/compare [--quick] [--cli build/release/examples/eigenformer] [--keep DIR]

(bench/peers/compare is a wrapper that runs this file with build/hf-venv/bin/python, creating the
environment with scripts/hf_env when it is missing: Debian's torch 1.13, ctranslate2 4.5.0.)

What it does, in one run:

1. Builds a random Transformer-base model with PyTorch (tools/reference.py): d_model 512, 8 heads,
   d_ff 2048, 6 + 6 layers, vocab 32000, post-norm, ReLU, no final layer norms (CTranslate2's
   post-norm Transformer has none). `--quick` keeps this shape (use `--layers N` for fewer layers;
   the output says so). The output projection is scaled up (logits spread like a trained
   model's) and the rows of the special tokens (pad/unk, bos, eos) are zeroed with bias -30, so that
   greedy decoding never stops early and every output reaches the requested length.
2. Writes the same weights as an eigenformer .safetensors file (docs/model-format.md) and as
   CTranslate2 models through ctranslate2.specs.TransformerSpec (one directory per compute type:
   float32, int8_float32, and bfloat16 when ctranslate2.get_supported_compute_types("cpu") lists it).
   Token i is the string str(i) ("<unk>", "<s>", "</s>" for 0, 1, 2).
3. Checks the engines agree on 8 sources of 32 tokens, 128 greedy tokens each (48 with --quick):
   float32 ids must be identical between `eigenformer generate` and Translator.translate_batch
   (beam 1); a divergence is excused only where PyTorch, teacher-forced on the common prefix, sees
   a near-tie (top-1/top-2 logit margin < 1e-3). For int8 it reports the agreement of eigenformer
   int8 with CTranslate2 int8_float32 and of each with its own float32 (likewise bfloat16), and
   compares teacher-forced log-probs (`eigenformer score`, Translator.score_batch) of int8 against
   float32. CTranslate2 4.5.0's int8 on hosts without AVX-512 is known to be off by nats: when its
   log-probs are more than 0.3 nat (mean) from its own float32, and more than 5x as far as
   eigenformer int8's are from eigenformer float32, the script prints "CTranslate2 int8
   unreliable on this host" and goes on.
4. Measures single-thread read bandwidth just before and just after the timing (numpy reductions
   over a 1 GiB array timed in CPU time, best of 5 each, best of the two -- a lower bound on what
   optimised code gets, so the floors are on the generous side) and computes the
   floor of one greedy step at batch 1: the bytes of the weight matrices read per step (each decoder
   layer's self-attention q/k/v/out, cross-attention q/out -- the cross-attention K/V of the source
   are computed once and cached -- and feed-forward, plus the output projection) / bandwidth, at
   4 bytes per weight (fp32), 2 (bf16) and 1 (int8). Attention caches, biases, norms and
   embeddings are left out (under 1 % here). With 2 threads timed, also the 2-thread read
   bandwidth (two threads each reducing half of 1 GiB, wall time), whose floor the 2-thread
   rows are compared with.
5. Times greedy decoding of sources of 32 tokens: per-step time = (time for 80 new tokens - time
   for 16) / 64, so process start, model loading and encoding cancel. Each run decodes the batch
   TIME_REPEAT (4) times over (4 batches of the same sources), so that a step's time is measured
   over 4 x 64 steps against one process start: with one batch, the variation of loading a model
   (tens of ms) swamped the difference at batch 1 (a per-step spread over rounds above 100 %).
   eigenformer runs through its CLI (`generate --weights float32|bfloat16|int8 --threads T
   --batch-size B`), CTranslate2 in-process (Translator(compute_type=...,
   intra_threads=T).translate_batch). Batch 1 and 8, threads 1 and 2, 3 rounds: per step =
   (fastest long run - fastest short run) / steps between them (noise only adds time). `--quick`:
   batch 1 and 8 at 1 thread, lengths 16 and 48, 2 rounds. Also beam 4 (one source, repeated
   likewise, per step from the same two lengths) and the encoder (a batch of 128-token sources
   encoded plus one step, per batch from 33 (batch 1) or 5 (batch 8) batches minus one), for every
   engine and type at each batch size and thread count. Wall times are the result; the CPU time
   per step is shown beside them (steadier on a busy machine, for one thread). Before timing it
   waits (up to --idle-wait seconds, 120 by default, 30 with --quick) for the machine to be idle
   (>= 90 % idle CPU over 1 s in /proc/stat); if it is not, it proceeds and prints a WARNING: the
   timings are then noisy. It checks /proc/stat again after the timing and warns likewise.
6. Prints a table: ms per step and per token (step / batch) for each engine, type, batch and thread
   count, the ratio to CTranslate2 of the same type and the ratio to the floor; a second table for
   beam 4 and the encoder with the ratio to CTranslate2; and as its last line

       eigenformer/ctranslate2 fp32 = A, int8 = B, bf16 = C, eigenformer/floor fp32 = D, int8 = E

   (batch 1, 1 thread, time ratios, lower is better; n/a where not measurable, e.g. CTranslate2
   bfloat16 on a CPU without it).

Exit status 1 when the float32 outputs disagree (other than at a near-tie), 0 otherwise.
"""
import argparse
import concurrent.futures
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from reference import Seq2Seq, export  # noqa: E402

import ctranslate2  # noqa: E402
from ctranslate2.specs import common_spec, transformer_spec  # noqa: E402

D_MODEL, N_HEADS, D_FF, VOCAB = 512, 8, 2048, 32000
PAD, BOS, EOS = 0, 1, 2
SRC_LEN = 32
ENC_SRC_LEN = 128         # the encoder rows: sources of this length, enc_repeat(batch) batches minus one
TIME_REPEAT = 4           # greedy and beam rows: batches decoded per run (see 5. above)
CHECK_LINES = 8
NEAR_TIE = 1e-3          # logit margin under which two correct float32 engines may pick differently
UNRELIABLE_NATS = 0.3    # mean |log-prob(int8) - log-prob(float32)| above which CTranslate2 int8 is
                         # off, when that is also 5x eigenformer int8's (a sane int8: ~0.05 here)
KIND = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8", "int8_float32": "int8"}


def log(msg=""):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# 1. The model


def build_model(layers, seed, output_scale):
    """A random post-norm Transformer-base (tools/reference.py), shaped for long greedy outputs."""
    torch.manual_seed(seed)
    cfg = dict(architecture="encoder-decoder", d_model=D_MODEL, n_heads=N_HEADS, d_ff=D_FF,
               n_encoder_layers=layers, n_decoder_layers=layers, src_vocab_size=VOCAB,
               tgt_vocab_size=VOCAB, bos_id=BOS, eos_id=EOS, pad_id=PAD, norm_first=False,
               activation="relu", encoder_final_norm=False, decoder_final_norm=False,
               max_positions=512)
    model = Seq2Seq(cfg).eval()
    with torch.no_grad():
        # Logits with a spread like a trained model's (default init gives std ~0.6), and the special
        # tokens never chosen: outputs run to the requested length in both engines.
        model.generator.weight.mul_(output_scale)
        model.generator.weight[[PAD, BOS, EOS]] = 0.0
        model.generator.bias[[PAD, BOS, EOS]] = -30.0
    return model


def vocabulary():
    return ["<unk>", "<s>", "</s>"] + [str(i) for i in range(3, VOCAB)]


def np32(t):
    return t.detach().to(torch.float32).contiguous().numpy().copy()


def ct2_spec(model):
    """The CTranslate2 TransformerSpec holding `model`'s weights (same numbers, same meaning)."""
    c = model.config
    L = c["n_encoder_layers"]
    spec = transformer_spec.TransformerSpec.from_config(
        (L, c["n_decoder_layers"]), c["n_heads"], pre_norm=False,
        activation=common_spec.Activation.RELU)
    spec.config.layer_norm_epsilon = c["layer_norm_eps"]
    pe = np32(model.pe)                                  # position p -> row p, as eigenformer

    def linear(s, weight, bias):
        s.weight, s.bias = np32(weight), np32(bias)

    def norm(s, m):
        s.gamma, s.beta = np32(m.weight), np32(m.bias)

    enc, dec = spec.encoder, spec.decoder
    enc.embeddings[0].weight = np32(model.src_embed.weight)
    enc.position_encodings.encodings = pe
    enc.scale_embeddings = True
    for s, m in zip(enc.layer, model.transformer.encoder.layers):
        linear(s.self_attention.linear[0], m.self_attn.in_proj_weight, m.self_attn.in_proj_bias)
        linear(s.self_attention.linear[1], m.self_attn.out_proj.weight, m.self_attn.out_proj.bias)
        norm(s.self_attention.layer_norm, m.norm1)
        linear(s.ffn.linear_0, m.linear1.weight, m.linear1.bias)
        linear(s.ffn.linear_1, m.linear2.weight, m.linear2.bias)
        norm(s.ffn.layer_norm, m.norm2)
    dec.embeddings.weight = np32(model.tgt_embed.weight)
    dec.position_encodings.encodings = pe
    dec.scale_embeddings = True
    linear(dec.projection, model.generator.weight, model.generator.bias)
    d = c["d_model"]
    for s, m in zip(dec.layer, model.transformer.decoder.layers):
        linear(s.self_attention.linear[0], m.self_attn.in_proj_weight, m.self_attn.in_proj_bias)
        linear(s.self_attention.linear[1], m.self_attn.out_proj.weight, m.self_attn.out_proj.bias)
        norm(s.self_attention.layer_norm, m.norm1)
        w, b = m.multihead_attn.in_proj_weight, m.multihead_attn.in_proj_bias
        linear(s.attention.linear[0], w[:d], b[:d])               # queries
        linear(s.attention.linear[1], w[d:], b[d:])               # keys and values, fused
        linear(s.attention.linear[2], m.multihead_attn.out_proj.weight, m.multihead_attn.out_proj.bias)
        norm(s.attention.layer_norm, m.norm2)
        linear(s.ffn.linear_0, m.linear1.weight, m.linear1.bias)
        linear(s.ffn.linear_1, m.linear2.weight, m.linear2.bias)
        norm(s.ffn.layer_norm, m.norm3)
    vocab = vocabulary()
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    return spec


def save_ct2(model, compute_type, out_dir):
    spec = ct2_spec(model)
    spec.validate()
    spec.optimize(quantization=compute_type)
    os.makedirs(out_dir, exist_ok=True)
    spec.save(out_dir)


# ----------------------------------------------------------------------------------------------
# 2. Running the engines


class Eigenformer:
    def __init__(self, cli, model_path, work):
        self.cli, self.model, self.work = cli, model_path, work

    def _src_file(self, src):
        path = os.path.join(self.work, f"src{len(src)}x{len(src[0]) if src else 0}.txt")
        with open(path, "w") as f:
            f.writelines(" ".join(map(str, s)) + "\n" for s in src)
        return path

    def generate(self, src, n, weights, threads, batch, beam=1):
        """(ids per line, wall seconds, CPU seconds) of one `eigenformer generate` process."""
        cmd = [self.cli, "generate", "--model", self.model, "--src-file", self._src_file(src),
               "--max-new-tokens", str(n), "--weights", weights, "--threads", str(threads),
               "--batch-size", str(batch), "--beam-size", str(beam)]
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
        cpu = (c1.ru_utime - c.ru_utime) + (c1.ru_stime - c.ru_stime)
        return [list(map(int, line.split())) for line in r.stdout.splitlines()], dt, cpu

    def score(self, src, out_ids, weights, threads):
        """log-probs [lines, n] of out_ids (teacher forced from bos)."""
        tgt = os.path.join(self.work, "tgt.txt")
        with open(tgt, "w") as f:
            f.writelines(" ".join(map(str, [BOS] + ids[:-1])) + "\n" for ids in out_ids)
        out = os.path.join(self.work, "score.npy")
        subprocess.run([self.cli, "score", "--model", self.model, "--src-file", self._src_file(src),
                        "--tgt-file", tgt, "--out", out, "--weights", weights,
                        "--threads", str(threads)], check=True, capture_output=True)
        lp = np.load(out)
        os.remove(out)
        return np.array([[lp[b, j, t] for j, t in enumerate(ids)] for b, ids in enumerate(out_ids)])


class CT2:
    def __init__(self, dirs):
        self.dirs, self.loaded = dirs, {}

    def translator(self, compute_type, threads):
        key = (compute_type, threads)
        if key not in self.loaded:
            self.loaded[key] = ctranslate2.Translator(self.dirs[compute_type], device="cpu",
                                                      compute_type=compute_type, inter_threads=1,
                                                      intra_threads=threads)
        return self.loaded[key]

    def generate(self, src, n, compute_type, threads, batch, beam=1):
        tr = self.translator(compute_type, threads)
        tokens = [[str(t) for t in s] for s in src]
        c, t = time.process_time(), time.perf_counter()      # this process: CTranslate2's threads
        res = tr.translate_batch(tokens, beam_size=beam, max_decoding_length=n, max_batch_size=batch)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        return [[int(x) for x in r.hypotheses[0]] for r in res], dt, cpu

    def score(self, src, out_ids, compute_type, threads):
        tr = self.translator(compute_type, threads)
        res = tr.score_batch([[str(t) for t in s] for s in src], [[str(t) for t in o] for o in out_ids])
        return np.array([r.log_probs[:len(o)] for r, o in zip(res, out_ids)])   # drops </s>

    def close(self):
        self.loaded.clear()


# ----------------------------------------------------------------------------------------------
# 3. Agreement


def torch_margins(model, src, out_ids):
    """PyTorch float32, teacher forced on out_ids: (argmax per position, top-1 - top-2 logit)."""
    s = torch.tensor(src)
    t = torch.tensor([[BOS] + ids[:-1] for ids in out_ids])
    with torch.no_grad():
        mem = model.encode(s, [len(x) for x in src])
        logits = model.logits(model.decode(mem, [len(x) for x in src], t, [t.shape[1]] * len(src)))
    top = torch.topk(logits, 2, dim=-1)
    return top.indices[..., 0].numpy(), (top.values[..., 0] - top.values[..., 1]).numpy()


def first_divergence(a, b):
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(a_lines, b_lines):
    """(identical lines, total, tokens agreeing before the first divergence / all tokens)."""
    same, prefix, total = 0, 0, 0
    for a, b in zip(a_lines, b_lines):
        j = first_divergence(a, b)
        same += j is None
        prefix += len(a) if j is None else j
        total += len(a)
    return same, len(a_lines), prefix / max(total, 1)


def check_float32(model, src, eig_ids, ct2_ids, n):
    """True when the float32 greedy outputs agree (or diverge only at a near-tie)."""
    ok = True
    lengths = sorted({len(x) for x in eig_ids + ct2_ids})
    if lengths != [n]:
        log(f"  WARNING: output lengths {lengths}, expected all {n}")
    argmax, margin = torch_margins(model, src, ct2_ids)
    torch_ok = int((argmax == np.array(ct2_ids)).sum())
    log(f"  PyTorch float32, teacher forced on CTranslate2's output: argmax agrees at {torch_ok}/"
        f"{argmax.size} positions; top-1/top-2 logit margin min {margin.min():.3g}, "
        f"median {np.median(margin):.3g}")
    for b, (e, c) in enumerate(zip(eig_ids, ct2_ids)):
        j = first_divergence(e, c)
        if j is None:
            continue
        m = margin[b, j] if j < margin.shape[1] else float("nan")
        if m < NEAR_TIE:
            log(f"  line {b}: diverges at token {j} at a near-tie (margin {m:.2g}): not an error")
        else:
            log(f"  line {b}: MISMATCH at token {j} (eigenformer {e[j:j + 5]}..., CTranslate2 "
                f"{c[j:j + 5]}..., PyTorch margin {m:.3g})")
            ok = False
    same, total, frac = agreement(eig_ids, ct2_ids)
    log(f"  eigenformer float32 vs CTranslate2 float32: {same}/{total} lines identical "
        f"({100 * frac:.1f} % of tokens before any divergence) -> {'OK' if ok else 'FAIL'}")
    return ok


# ----------------------------------------------------------------------------------------------
# 4. Bandwidth and floors


def read_bandwidth(gib=1.0, reps=5):
    """Single-thread read bandwidth in bytes/s: best of `reps` numpy reductions over `gib` GiB.

    Timed in this thread's CPU time, which equals wall time on an idle machine and leaves out the
    time the thread waits for a core on a busy one (memory stalls count as CPU time).
    """
    a = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)       # written: pages are resident
    as_int = a.view(np.int64)
    best = float("inf")
    for _ in range(reps):
        for f in (lambda: a.sum(), lambda: np.bitwise_or.reduce(as_int)):
            t = time.thread_time()
            f()
            best = min(best, time.thread_time() - t)
    return a.nbytes / best


def read_bandwidth_threads(threads, gib=1.0, reps=5):
    """Read bandwidth in bytes/s of `threads` Python threads each reducing its own part of `gib`
    GiB at once (numpy's reductions release the GIL): the floor of a `threads`-thread step. Wall
    time, best of `reps`."""
    parts = [np.ones(int(gib * (1 << 30)) // 4 // threads, dtype=np.float32) for _ in range(threads)]
    best = float("inf")
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            t = time.perf_counter()
            list(pool.map(lambda a: a.sum(), parts))
            best = min(best, time.perf_counter() - t)
    return sum(a.nbytes for a in parts) / best


def weights_read_per_step(layers):
    """Weights of the matrices one greedy step reads (cross-attention K/V are cached per source)."""
    per_layer = 4 * D_MODEL * D_MODEL + 2 * D_MODEL * D_MODEL + 2 * D_MODEL * D_FF
    return layers * per_layer + VOCAB * D_MODEL


# ----------------------------------------------------------------------------------------------
# 5. Timing


def cpu_idle_fraction(seconds=1.0):
    def sample():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:]))
        return v[3] + v[4], sum(v)                           # idle + iowait, total
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return (i1 - i0) / max(t1 - t0, 1)


def wait_for_idle(limit_s):
    t_end = time.time() + limit_s
    while True:
        idle = cpu_idle_fraction()
        if idle >= 0.9:
            log(f"machine idle ({100 * idle:.0f} % idle CPU over 1 s)")
            return True
        if time.time() >= t_end:
            log(f"WARNING: the machine is busy ({100 * idle:.0f} % idle CPU over 1 s, load average "
                f"{os.getloadavg()[0]:.2f}) after waiting {limit_s:.0f} s; timing anyway, the "
                "numbers below are noisy")
            return False
        time.sleep(2)


def per_unit(runs):
    """Time per unit (step, batch) from rounds of (short run, long run, units between them): the
    fastest long run minus the fastest short run. Noise only adds time (another process, a page
    fault, a slow process start), so the minimum of each length is the steadiest estimate; the
    per-round differences give the spread."""
    return (min(r[1] for r in runs) - min(r[0] for r in runs)) / runs[0][2]


def enc_repeat(batch):
    """Batches per long encoder run: about 32 sources more than the short run's one batch."""
    return 1 + max(4, 32 // batch)


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--cli", default=os.path.join(ROOT, "build/release/examples/eigenformer"))
    ap.add_argument("--quick", action="store_true",
                    help="batch 1 and 8 at 1 thread, lengths 16/48, 2 rounds, shorter checks")
    ap.add_argument("--layers", type=int, default=6, help="encoder and decoder layers (default 6)")
    ap.add_argument("--threads", default=None, help="thread counts to time, e.g. 1,2")
    ap.add_argument("--batches", default="1,8", help="batch sizes to time (default 1,8)")
    ap.add_argument("--lengths", default=None, help="short,long new tokens (default 16,80)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds, fastest of each length taken (3)")
    ap.add_argument("--idle-wait", type=float, default=None, help="seconds to wait for an idle "
                    "machine before timing anyway (120; 30 with --quick)")
    ap.add_argument("--output-scale", type=float, default=4.0,
                    help="factor on the random output projection (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="write the models here and keep them")
    args = ap.parse_args()
    q = args.quick
    threads = [int(x) for x in (args.threads or ("1" if q else "1,2")).split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    n_short, n_long = (int(x) for x in (args.lengths or ("16,48" if q else "16,80")).split(","))
    rounds = args.rounds or (2 if q else 3)
    idle_wait = args.idle_wait if args.idle_wait is not None else (30 if q else 120)
    n_check = 48 if q else 128
    if not os.access(args.cli, os.X_OK):
        sys.exit(f"eigenformer CLI not found: {args.cli} (build it, or pass --cli)")
    torch.set_num_threads(1)
    t_start = time.time()

    work_ctx = None
    if args.keep:
        work = os.path.abspath(args.keep)
        os.makedirs(work, exist_ok=True)
    else:
        work_ctx = tempfile.TemporaryDirectory(prefix="peers-")
        work = work_ctx.name

    ct2_types = ["float32", "int8_float32"]
    supported = ctranslate2.get_supported_compute_types("cpu")
    if "bfloat16" in supported:
        ct2_types.append("bfloat16")
    flags = open("/proc/cpuinfo").read().split("flags", 2)[1].split("\n")[0].split()
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    log(f"eigenformer vs CTranslate2 {ctranslate2.__version__} (CPU compute types {sorted(supported)};"
        f" host {isa}, {os.cpu_count()} cores)")
    shape = f"Transformer-base, {args.layers}+{args.layers} layers"
    if args.layers != 6:
        shape += f" (FEWER LAYERS than Transformer-base's 6+6: --layers {args.layers})"
    log(f"model: {shape}, d_model {D_MODEL}, {N_HEADS} heads, d_ff {D_FF}, vocab {VOCAB}, post-norm, "
        f"ReLU, random weights (seed {args.seed}, output projection x{args.output_scale})")

    # 1-2. model and conversions
    t = time.time()
    model = build_model(args.layers, args.seed, args.output_scale)
    eig_path = os.path.join(work, "model.safetensors")
    export(model, eig_path, "F32")
    dirs = {ct: os.path.join(work, f"ct2-{ct}") for ct in ct2_types}
    for ct, d in dirs.items():
        save_ct2(model, ct, d)
    log(f"built and converted in {time.time() - t:.0f} s ({work})")

    eig = Eigenformer(os.path.abspath(args.cli), eig_path, work)
    ct2 = CT2(dirs)
    gen = torch.Generator().manual_seed(args.seed + 1)
    check_src = [torch.randint(3, VOCAB, (SRC_LEN,), generator=gen).tolist() for _ in range(CHECK_LINES)]

    # 3. agreement
    log(f"\nagreement: {CHECK_LINES} sources of {SRC_LEN} tokens, {n_check} greedy tokens each")
    out = {}
    for w in ("float32", "bfloat16", "int8"):
        out["eig", w] = eig.generate(check_src, n_check, w, 1, CHECK_LINES)[0]
    for ct in ct2_types:
        out["ct2", ct] = ct2.generate(check_src, n_check, ct, 1, CHECK_LINES)[0]
    fp32_ok = check_float32(model, check_src, out["eig", "float32"], out["ct2", "float32"], n_check)
    pairs = [(("eig", "int8"), ("ct2", "int8_float32")), (("eig", "int8"), ("eig", "float32")),
             (("ct2", "int8_float32"), ("ct2", "float32")), (("eig", "bfloat16"), ("eig", "float32"))]
    if "bfloat16" in ct2_types:
        pairs += [(("eig", "bfloat16"), ("ct2", "bfloat16")), (("ct2", "bfloat16"), ("ct2", "float32"))]
    for a, b in pairs:
        same, total, frac = agreement(out[a], out[b])
        name = lambda k: ("eigenformer " if k[0] == "eig" else "CTranslate2 ") + k[1]  # noqa: E731
        log(f"  {name(a):26s} vs {name(b):26s}: {same}/{total} lines identical, "
            f"{100 * frac:5.1f} % of tokens before the first divergence")
    ref = out["ct2", "float32"]
    lp = {"eig fp32": eig.score(check_src, ref, "float32", 1),
          "eig int8": eig.score(check_src, ref, "int8", 1),
          "ct2 fp32": ct2.score(check_src, ref, "float32", 1),
          "ct2 int8": ct2.score(check_src, ref, "int8_float32", 1)}
    d_eig = np.abs(lp["eig int8"] - lp["eig fp32"])
    d_ct2 = np.abs(lp["ct2 int8"] - lp["ct2 fp32"])
    d_fp32 = np.abs(lp["eig fp32"] - lp["ct2 fp32"])
    log(f"  log-probs of those tokens: |eigenformer fp32 - CTranslate2 fp32| max {d_fp32.max():.2g}; "
        f"int8 vs own fp32: eigenformer mean {d_eig.mean():.3f} max {d_eig.max():.3f}, "
        f"CTranslate2 mean {d_ct2.mean():.3f} max {d_ct2.max():.3f} (nats)")
    ct2_int8_ok = not (d_ct2.mean() > UNRELIABLE_NATS and d_ct2.mean() > 5 * d_eig.mean())
    if not ct2_int8_ok:
        log(f"  CTranslate2 int8 unreliable on this host ({isa}): its int8_float32 log-probs are "
            f"{d_ct2.mean():.1f} nats (mean) from its own float32; its int8 timings are kept but "
            "its int8 output is not a reference")

    # 5. timing (4., the bandwidth, is measured right before and after it)
    engines = [("eigenformer", w) for w in ("float32", "bfloat16", "int8")] + \
              [("ctranslate2", ct) for ct in ct2_types]
    configs = [(e, w, b, th) for th in threads for b in batches for e, w in engines]
    extra = [("beam4", e, w, 1, th) for th in threads for e, w in engines] + \
            [("encoder", e, w, b, th) for th in threads for b in batches for e, w in engines]
    extra_t = {c: [] for c in extra}
    log(f"\ntiming: {len(configs)} greedy configurations x {rounds} rounds, {SRC_LEN}-token sources, "
        f"{n_short} and {n_long} new tokens; {len(extra)} beam-4 and encoder configurations")
    idle = wait_for_idle(idle_wait)
    bw_before = read_bandwidth()
    src = [torch.randint(3, VOCAB, (SRC_LEN,), generator=gen).tolist() for _ in range(max(batches))]
    diffs = {c: [] for c in configs}
    enc_src = [torch.randint(3, VOCAB, (ENC_SRC_LEN,), generator=gen).tolist() for _ in range(max(batches))]
    cpu_diffs = {c: [] for c in configs}
    short_lens = set()
    for r in range(rounds):
        for c in configs:
            e, w, b, th = c
            reps_src = src[:b] * TIME_REPEAT   # TIME_REPEAT batches in one run
            run = (lambda n: eig.generate(reps_src, n, w, th, b)) if e == "eigenformer" else \
                  (lambda n: ct2.generate(reps_src, n, w, th, b))
            (ids_s, t_s, cpu_s), (ids_l, t_l, cpu_l) = run(n_short), run(n_long)
            short_lens |= {len(x) for x in ids_s} ^ {n_short}
            short_lens |= {len(x) for x in ids_l} ^ {n_long}
            diffs[c].append((t_s, t_l, (n_long - n_short) * TIME_REPEAT))
            cpu_diffs[c].append((cpu_s, cpu_l, (n_long - n_short) * TIME_REPEAT))
            time.sleep(0.2)                   # let CTranslate2's OpenMP threads go back to sleep
        for c in extra:
            kind, e, w, b, th = c
            gen_fn = eig.generate if e == "eigenformer" else ct2.generate
            if kind == "beam4":
                # per step of a beam-4 search of one source: the difference of two output lengths
                (_, t_s, _), (_, t_l, _) = (gen_fn(src[:1] * TIME_REPEAT, n, w, th, 1, beam=4)
                                            for n in (n_short, n_long))
                extra_t[c].append((t_s, t_l, (n_long - n_short) * TIME_REPEAT))
            else:
                # encoder + one step for a batch of b sources of ENC_SRC_LEN: ENC_REPEAT batches
                # minus one batch, so process start and loading cancel
                one, k = enc_src[:b], enc_repeat(b)
                (_, t_1, _), (_, t_n, _) = (gen_fn(one * r, 1, w, th, b) for r in (1, k))
                extra_t[c].append((t_1, t_n, k - 1))
            time.sleep(0.2)
        log(f"  round {r + 1}/{rounds} done ({time.time() - t_start:.0f} s)")
    ct2.close()
    bw_after = read_bandwidth()
    bw2 = read_bandwidth_threads(2) if 2 in threads else None

    # 4. bandwidth and floors (measured around the timing, under the same conditions; best taken)
    bw = max(bw_before, bw_after)
    n_w = weights_read_per_step(args.layers)
    floor = {k: n_w * b / bw * 1e3 for k, b in (("fp32", 4), ("bf16", 2), ("int8", 1))}
    log(f"\nsingle-thread read bandwidth {bw / 1e9:.1f} GB/s (numpy, best of 5 over 1 GiB in CPU time, before "
        f"{bw_before / 1e9:.1f} and after {bw_after / 1e9:.1f} the timing); {n_w / 1e6:.1f} M weights "
        "read per greedy step -> floor per step " + ", ".join(f"{k} {v:.2f} ms" for k, v in floor.items()))
    floor2 = {k: n_w * b / bw2 * 1e3 for k, b in (("fp32", 4), ("bf16", 2), ("int8", 1))} if bw2 else floor
    if bw2:
        log(f"two-thread read bandwidth {bw2 / 1e9:.1f} GB/s (two threads, each half of 1 GiB, wall time, best of 5) "
            "-> 2-thread floor per step " + ", ".join(f"{k} {v:.2f} ms" for k, v in floor2.items()))
    if short_lens:
        log(f"WARNING: some outputs did not reach the requested length ({sorted(short_lens)})")
    idle_after = cpu_idle_fraction()
    if idle_after < 0.9:
        log(f"WARNING: after timing the machine was {100 * idle_after:.0f} % idle: other load")

    # 6. table
    step = {c: per_unit(v) * 1e3 for c, v in diffs.items()}
    cpu_step = {c: per_unit(v) * 1e3 for c, v in cpu_diffs.items()}

    def ct2_peer(c):
        e, w, b, th = c
        peer = [k for k in step if k[0] == "ctranslate2" and KIND[k[1]] == KIND[w] and k[2:] == (b, th)]
        return step[peer[0]] if peer else None

    log(f"\n{'engine':12s} {'type':13s} {'batch':>5s} {'thr':>3s} {'ms/step':>8s} {'ms/token':>8s} "
        f"{'cpu ms':>7s} {'spread':>7s} {'vs CT2':>7s} {'vs floor':>8s}")
    for c in configs:
        e, w, b, th = c
        v = [(b_ - a_) / d_ for a_, b_, d_ in diffs[c]]
        peer = ct2_peer(c)
        vs_ct2 = step[c] / peer if (peer and e == "eigenformer") else None
        vs_floor = step[c] / (floor2 if th == 2 else floor)[KIND[w]]
        spread = (max(v) - min(v)) * 1e3 / step[c] if len(v) > 1 and step[c] > 0 else 0.0
        log(f"{e:12s} {w:13s} {b:5d} {th:3d} {step[c]:8.2f} {step[c] / b:8.2f} {cpu_step[c]:7.2f} "
            f"{100 * spread:6.0f}% "
            f"{fmt(vs_ct2):>7s} {vs_floor:8.2f}")
    log("(ms/step: wall time of one greedy step for the whole batch; ms/token = ms/step / batch; cpu ms:"
        " CPU time per step, all threads, which on a busy machine is steadier than wall time; spread:"
        " (max - min) / estimate of the per-round differences; vs CT2: eigenformer / CTranslate2 of the"
        " same type; vs floor: ms/step / weight-bytes floor per step)")
    log(f"\n{'what':26s} {'engine':12s} {'type':13s} {'batch':>5s} {'thr':>3s} {'ms':>8s} {'spread':>7s} "
        f"{'vs CT2':>7s}")
    ext = {c: per_unit(v) * 1e3 for c, v in extra_t.items()}
    for c in extra:
        kind, e, w, b, th = c
        v = [(b_ - a_) / d_ for a_, b_, d_ in extra_t[c]]
        peer = [ext[k] for k in ext if k[0] == kind and k[1] == "ctranslate2" and KIND[k[2]] == KIND[w]
                and k[3:] == (b, th)]
        vs = ext[c] / peer[0] if peer and e == "eigenformer" else None
        spread = (max(v) - min(v)) * 1e3 / ext[c] if len(v) > 1 and ext[c] > 0 else 0.0
        what = "beam 4, ms/step" if kind == "beam4" else f"encoder {ENC_SRC_LEN} + 1 step, ms"
        log(f"{what:26s} {e:12s} {w:13s} {b:5d} {th:3d} {ext[c]:8.2f} {100 * spread:6.0f}% {fmt(vs):>7s}")
    log("(beam 4: one source, per step from two output lengths; encoder: a batch of sources of "
        f"{ENC_SRC_LEN} tokens encoded and one token decoded, per batch from 33 (batch 1) or 5 (batch 8) batches minus 1)")
    if not idle:
        log("WARNING: timed on a busy machine (see above)")
    if not ct2_int8_ok:
        log("CTranslate2 int8 unreliable on this host: its int8 timings are of wrong results")
    if not fp32_ok:
        log("FAIL: eigenformer and CTranslate2 float32 outputs disagree (see above)")

    def ratio(w, ct=None):
        c = ("eigenformer", w, 1, 1)
        if c not in step:
            return None
        if ct is None:
            return step[c] / floor[KIND[w]]
        peer = ("ctranslate2", ct, 1, 1)
        return step[c] / step[peer] if peer in step else None

    log(f"total {time.time() - t_start:.0f} s")
    if work_ctx:
        work_ctx.cleanup()
    print(f"eigenformer/ctranslate2 fp32 = {fmt(ratio('float32', 'float32'))}, "
          f"int8 = {fmt(ratio('int8', 'int8_float32'))}, bf16 = {fmt(ratio('bfloat16', 'bfloat16'))}, "
          f"eigenformer/floor fp32 = {fmt(ratio('float32'))}, int8 = {fmt(ratio('int8'))}", flush=True)
    return 0 if fp32_ok else 1


if __name__ == "__main__":
    sys.exit(main())
