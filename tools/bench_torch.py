"""PyTorch timings on this machine, for the peer column of docs/performance.md.

Run (Debian's PyTorch 1.13; the `python3` of a pyenv has no torch), from the repository root:

    /usr/bin/python3 tools/bench_torch.py [--threads N] [--json] [--quick]

Shape: Transformer-base (d_model 512, 8 heads, d_ff 2048, 6 + 6 layers, vocab 32000, post-LN, relu,
sinusoidal positions), random weights, fp32, eval mode, under torch.no_grad(), built with
tools/reference.py's Seq2Seq. Every number is a median over repetitions (each measurement takes a few
seconds; the whole script under ~3 minutes at 1 thread):

  (a) encoder forward (embedding + 6 layers + final norm), batch 1 and 8, source 32 and 128: ms per call;
  (b) greedy decode of 64 new tokens from a 32-token source, batch 1 (no early stop at eos), ms per token:
      (i)   "tutorial" style: nn.Transformer's decoder re-run on the whole prefix every step;
      (ii)  an incremental decoder with a KV cache (self-attention K/V appended per step, cross-attention
            K/V computed once per sequence), every projection an F.linear;
      (iii) the same with torch.addmv over weights transposed once to [in, out] (so BLAS runs the
            streaming "axpy" gemv form), the strongest batch-1 form;
  (c) the KV-cache decoder (ii) at batch 8: ms per step (8 tokens).
  The encoder is not part of the decode timings; building the cross-attention cache is.

Correctness inside the script: (ii) and (iii) must produce the same tokens as (i), and their
per-step logits must match one teacher-forced pass of the full decoder over the final sequences
(max abs difference printed, must be < 1e-3); the batch-8 run is checked the same way (its tokens
against (i) run on the same batch). The script exits non-zero when a check fails.

BLAS. Debian's torch does its float GEMM/GEMV through the system libblas.so.3, which
update-alternatives points at Debian's reference BLAS (libblas3, unoptimised: GEMM about 20x slower,
the whole script then takes far longer than 3 minutes) unless OpenBLAS is installed. The peer numbers
in docs/performance.md are with OpenBLAS 0.3.21, OpenMP variant. Either install it
(`apt-get install libopenblas0-openmp`) or, without touching the system, unpack it and point the
script at it:

    apt-get download libopenblas0-openmp && dpkg -x libopenblas0-openmp_*.deb /tmp/openblas
    /usr/bin/python3 tools/bench_torch.py --blas-dir /tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-openmp

(--blas-dir re-runs the script with that folder first on LD_LIBRARY_PATH.) The BLAS that torch
actually loaded is printed and stored in the JSON; with reference BLAS the script warns.

Threads: torch.set_num_threads(N) and torch.set_num_interop_threads(1), and OPENBLAS_NUM_THREADS=N
set before torch loads, so that one OpenMP pool does all the work (OpenBLAS's OpenMP variant shares
torch's libgomp pool; two spinning runtimes on 2 cores slow everything down by several times, which is
why the pthread variant of OpenBLAS is reported as such).
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time


def _early_args():
    """--threads and --blas-dir are needed before torch (and its BLAS) is loaded."""
    ap = argparse.ArgumentParser(description="PyTorch peer timings (Transformer-base, random weights)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--quick", action="store_true", help="one repetition each (a smoke test, not a measurement)")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum time per encoder measurement")
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
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    return args


ARGS = _early_args() if __name__ == "__main__" else None

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Seq2Seq  # noqa: E402

CONFIG = {
    "architecture": "encoder-decoder", "d_model": 512, "n_heads": 8, "d_ff": 2048,
    "n_encoder_layers": 6, "n_decoder_layers": 6, "src_vocab_size": 32000, "tgt_vocab_size": 32000,
    "bos_id": 1, "eos_id": 2, "pad_id": 0, "norm_first": False, "activation": "relu",
    "max_positions": 256,
}


def timed(fn, min_reps, min_seconds, max_reps=1000):
    """Median wall time of fn() in seconds, after one warm-up call; at least min_reps calls and
    at least min_seconds in all (capped at max_reps)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


# --------------------------------------------------------------------------------------------
# (i) tutorial style

def greedy_full(model, memory, n_new, causal, return_logits=False):
    """Re-runs nn.Transformer's decoder on the whole prefix at every step."""
    B = memory.shape[0]
    tgt = torch.full((B, 1), model.config["bos_id"], dtype=torch.long)
    logits_all = []
    for _ in range(n_new):
        T = tgt.shape[1]
        y = model.transformer.decoder(model.embed(tgt, "tgt"), memory, tgt_mask=causal[:T, :T])
        logits = model.generator(y[:, -1])
        if return_logits:
            logits_all.append(logits)
        tgt = torch.cat([tgt, logits.argmax(-1, keepdim=True)], 1)
    return (tgt, torch.stack(logits_all, 1)) if return_logits else tgt


# --------------------------------------------------------------------------------------------
# (ii) / (iii) incremental decoder with a KV cache

class KVDecoder:
    """Post-LN decoder step with a KV cache, from the weights of a Seq2Seq (nothing is copied for
    mode 'linear'; mode 'addmv' keeps each matrix transposed to [in, out] and needs batch 1)."""

    def __init__(self, model, mode):
        assert mode in ("linear", "addmv") and not model.config["norm_first"]
        c = model.config
        self.mode, self.d, self.h = mode, c["d_model"], c["n_heads"]
        self.dh = self.d // self.h
        self.bos = c["bos_id"]
        self.scale_emb = math.sqrt(self.d) if c["scale_embedding"] else 1.0
        self.embed = model.tgt_embed.weight.detach()
        self.pe = model.pe.float()
        dec = model.transformer.decoder
        self.final_norm = None if dec.norm is None else (dec.norm.weight, dec.norm.bias, dec.norm.eps)
        d = self.d

        def mat(w):                                          # [out, in] -> as the mode wants it
            w = w.detach()
            return w.t().contiguous() if mode == "addmv" else w

        self.layers = []
        for L in dec.layers:
            sa, ca = L.self_attn, L.multihead_attn
            self.layers.append(dict(
                sa_w=mat(sa.in_proj_weight), sa_b=sa.in_proj_bias.detach(),
                sa_ow=mat(sa.out_proj.weight), sa_ob=sa.out_proj.bias.detach(),
                ca_qw=mat(ca.in_proj_weight[:d]), ca_qb=ca.in_proj_bias[:d].detach(),
                ca_kvw=ca.in_proj_weight[d:].detach(), ca_kvb=ca.in_proj_bias[d:].detach(),
                ca_ow=mat(ca.out_proj.weight), ca_ob=ca.out_proj.bias.detach(),
                w1=mat(L.linear1.weight), b1=L.linear1.bias.detach(),
                w2=mat(L.linear2.weight), b2=L.linear2.bias.detach(),
                n1=(L.norm1.weight, L.norm1.bias, L.norm1.eps),
                n2=(L.norm2.weight, L.norm2.bias, L.norm2.eps),
                n3=(L.norm3.weight, L.norm3.bias, L.norm3.eps)))
        if c["tie_output"]:
            gw, gb = model.tgt_embed.weight.detach(), getattr(model, "generator_bias", None)
        else:
            gw, gb = model.generator.weight.detach(), model.generator.bias
        self.gen_w = mat(gw)
        self.gen_b = gb.detach() if gb is not None else torch.zeros(gw.shape[0])

    def proj(self, x, w, b):
        if self.mode == "addmv":                             # x [1, in]; w [in, out]
            return torch.addmv(b, w.t(), x[0]).unsqueeze(0)
        return F.linear(x, w, b)

    @staticmethod
    def norm(x, n):
        return F.layer_norm(x, (x.shape[-1],), n[0], n[1], n[2])

    def start(self, memory, max_len):
        """Cross-attention K/V of `memory` [B, S, d] per layer, and empty self-attention caches."""
        B, S, _ = memory.shape
        self.B, self.pos = B, 0
        self.cross, self.cache = [], []
        for L in self.layers:
            kv = F.linear(memory, L["ca_kvw"], L["ca_kvb"])                     # [B, S, 2d]
            k, v = kv.split(self.d, -1)
            self.cross.append((k.view(B, S, self.h, self.dh).transpose(1, 2).contiguous(),
                               v.view(B, S, self.h, self.dh).transpose(1, 2).contiguous()))
            self.cache.append((torch.empty(B, self.h, max_len, self.dh),
                               torch.empty(B, self.h, max_len, self.dh)))

    def attend(self, q, k, v):                               # q [B, H, 1, dh]; k, v [B, H, n, dh]
        s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dh))
        return torch.matmul(torch.softmax(s, -1), v)         # [B, H, 1, dh]

    def step(self, tokens):                                  # tokens [B] -> logits [B, V]
        B, H, dh, t = self.B, self.h, self.dh, self.pos
        x = self.embed[tokens] * self.scale_emb + self.pe[t]   # [B, d]
        for L, (ck, cv), (sk, sv) in zip(self.layers, self.cross, self.cache):
            qkv = self.proj(x, L["sa_w"], L["sa_b"])         # [B, 3d]
            q, k, v = qkv.view(B, 3, H, dh).unbind(1)        # [B, H, dh] each
            sk[:, :, t] = k
            sv[:, :, t] = v
            a = self.attend(q.unsqueeze(2), sk[:, :, : t + 1], sv[:, :, : t + 1]).reshape(B, -1)
            x = self.norm(x + self.proj(a, L["sa_ow"], L["sa_ob"]), L["n1"])
            q = self.proj(x, L["ca_qw"], L["ca_qb"]).view(B, H, 1, dh)
            a = self.attend(q, ck, cv).reshape(B, -1)
            x = self.norm(x + self.proj(a, L["ca_ow"], L["ca_ob"]), L["n2"])
            f = self.proj(torch.relu(self.proj(x, L["w1"], L["b1"])), L["w2"], L["b2"])
            x = self.norm(x + f, L["n3"])
        if self.final_norm is not None:
            x = self.norm(x, self.final_norm)
        self.pos += 1
        return self.proj(x, self.gen_w, self.gen_b)

    def greedy(self, memory, n_new, return_logits=False):
        self.start(memory, n_new + 1)
        tok = torch.full((memory.shape[0],), self.bos, dtype=torch.long)
        out, logits_all = [tok], []
        for _ in range(n_new):
            logits = self.step(tok)
            if return_logits:
                logits_all.append(logits)
            tok = logits.argmax(-1)
            out.append(tok)
        tgt = torch.stack(out, 1)
        return (tgt, torch.stack(logits_all, 1)) if return_logits else tgt


def teacher_forced_logits(model, memory, tgt, causal):
    """Logits [B, T-1, V] of one full-decoder pass over tgt[:, :-1] (the steps that produced tgt[:, 1:])."""
    x = tgt[:, :-1]
    T = x.shape[1]
    return model.generator(model.transformer.decoder(model.embed(x, "tgt"), memory, tgt_mask=causal[:T, :T]))


def loaded_blas():
    """(kind, libraries): which BLAS / OpenMP libraries this process has loaded."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if any(s in os.path.basename(p).lower() for s in ("blas", "mkl_", "gomp", "libomp")):
                    libs.add(os.path.realpath(p))
    except OSError:
        pass
    joined = " ".join(libs)
    if "openblas-openmp" in joined:
        kind = "openblas-openmp"
    elif "openblas-pthread" in joined:
        kind = "openblas-pthread"
    elif "openblas" in joined:
        kind = "openblas"
    elif "mkl" in joined:
        kind = "mkl"
    elif "/blas/libblas.so" in joined:
        kind = "reference"
    else:
        kind = "unknown"
    return kind, sorted(libs)


def main():
    args = ARGS
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    t0 = time.perf_counter()
    model = Seq2Seq(CONFIG).eval()
    model(torch.tensor([[3, 4]]), torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))  # loads the BLAS
    blas_kind, blas_libs = loaded_blas()
    n_params = sum(p.numel() for p in model.parameters())
    res = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(), "blas": blas_kind, "blas_libraries": blas_libs,
        "cpu": platform.processor() or platform.machine(), "model": dict(CONFIG, parameters=n_params),
        "encoder_ms": {}, "decode_b1_ms_per_token": {}, "checks": {},
    }
    log(f"torch {res['torch']}, {res['threads']} thread(s), interop {res['interop_threads']}, "
        f"BLAS {blas_kind}: {', '.join(blas_libs) or '?'}")
    if blas_kind == "reference":
        log("WARNING: torch runs on Debian's reference BLAS (GEMM ~20x slower than OpenBLAS): these are not "
            "peer numbers, and the run will take many minutes; see --blas-dir in this script's header")
    if blas_kind == "openblas-pthread" and args.threads > 1:
        log("WARNING: OpenBLAS pthread variant: its own thread pool runs beside torch's OpenMP pool")
    log(f"Transformer-base, {n_params / 1e6:.1f} M parameters, built in {time.perf_counter() - t0:.1f} s")
    reps = (1, 0.0) if args.quick else (5, args.seconds)
    gen = torch.Generator().manual_seed(1)

    def source(B, S):
        return torch.randint(3, CONFIG["src_vocab_size"], (B, S), generator=gen)

    causal = torch.triu(torch.full((80, 80), float("-inf")), diagonal=1)
    with torch.no_grad():
        # (a) encoder
        for B in (1, 8):
            for S in (32, 128):
                src = source(B, S)
                lengths = torch.full((B,), S)
                sec, n = timed(lambda: model.encode(src, lengths), *reps)
                res["encoder_ms"][f"b{B}_s{S}"] = sec * 1e3
                log(f"(a) encoder  batch {B}  source {S:3d}: {sec * 1e3:8.2f} ms per call   ({n} reps)")

        # (b) batch-1 greedy decode, 32-token source, 64 new tokens
        n_new = 64
        src = source(1, 32)
        memory = model.encode(src, torch.tensor([32]))
        kv_lin, kv_mv = KVDecoder(model, "linear"), KVDecoder(model, "addmv")
        dec_reps = (1, 0.0) if args.quick else (3, 4.0)
        variants = [("i_full_prefix", lambda: greedy_full(model, memory, n_new, causal)),
                    ("ii_kv_linear", lambda: kv_lin.greedy(memory, n_new)),
                    ("iii_kv_addmv", lambda: kv_mv.greedy(memory, n_new))]
        labels = {"i_full_prefix": "(i)   full prefix re-run (nn.Transformer decoder)",
                  "ii_kv_linear": "(ii)  KV cache, F.linear",
                  "iii_kv_addmv": "(iii) KV cache, addmv, pre-transposed weights"}
        for name, fn in variants:
            sec, n = timed(fn, *dec_reps, max_reps=20)
            res["decode_b1_ms_per_token"][name] = sec * 1e3 / n_new
            log(f"(b) {labels[name]:50s}: {sec * 1e3 / n_new:8.2f} ms per token ({n} reps)")

        # checks, batch 1: same tokens as (i), logits equal to one teacher-forced pass
        ref_tok, ref_logits = greedy_full(model, memory, n_new, causal, return_logits=True)
        tf = teacher_forced_logits(model, memory, ref_tok, causal)
        res["checks"]["i_vs_teacher_forced_max_abs_logit"] = float((ref_logits - tf).abs().max())
        for name, dec in (("ii_kv_linear", kv_lin), ("iii_kv_addmv", kv_mv)):
            tok, logits = dec.greedy(memory, n_new, return_logits=True)
            same = bool(torch.equal(tok, ref_tok))
            res["checks"][f"{name}_same_tokens_as_i"] = same
            res["checks"][f"{name}_max_abs_logit_vs_i"] = float((logits - ref_logits).abs().max()) if same else None
            res["checks"][f"{name}_max_abs_logit_vs_teacher_forced"] = float(
                (logits - teacher_forced_logits(model, memory, tok, causal)).abs().max())

        # (c) batch 8 with the KV cache
        src8 = source(8, 32)
        memory8 = model.encode(src8, torch.full((8,), 32))
        sec, n = timed(lambda: kv_lin.greedy(memory8, n_new), *dec_reps, max_reps=20)
        res["decode_b8_kv_linear_ms_per_step"] = sec * 1e3 / n_new
        log(f"(c) KV cache, F.linear, batch 8{'':22s}: {sec * 1e3 / n_new:8.2f} ms per step "
            f"({sec * 1e3 / n_new / 8:.2f} ms per token, {n} reps)")
        tok8, logits8 = kv_lin.greedy(memory8, n_new, return_logits=True)
        res["checks"]["b8_kv_linear_max_abs_logit_vs_teacher_forced"] = float(
            (logits8 - teacher_forced_logits(model, memory8, tok8, causal)).abs().max())
        # and the same batch through (i)
        res["checks"]["b8_kv_linear_same_tokens_as_i"] = bool(
            torch.equal(tok8, greedy_full(model, memory8, n_new, causal)))

    ok = (res["checks"]["ii_kv_linear_same_tokens_as_i"] and res["checks"]["iii_kv_addmv_same_tokens_as_i"]
          and res["checks"]["b8_kv_linear_same_tokens_as_i"]
          and all(v < 1e-3 for k, v in res["checks"].items() if k.endswith("teacher_forced") and v is not None))
    res["checks"]["ok"] = ok
    res["total_seconds"] = time.perf_counter() - t0
    for k, v in res["checks"].items():
        log(f"check {k}: {v:.2e}" if isinstance(v, float) else f"check {k}: {v}")
    log(f"total {res['total_seconds']:.0f} s")
    if args.json:
        print(json.dumps(res, indent=1))
    if not ok:
        sys.exit("bench_torch: the KV-cache decoders do not agree with the full decoder")


if __name__ == "__main__":
    main()
