"""Writes the golden fixtures that the C++ tests (test_golden, test_moe, the command-line tool test)
compare against, so that those tests never need PyTorch.

Run (Debian's PyTorch 1.13; the `python3` of a pyenv has no torch), from the repository root:

    /usr/bin/python3 tools/make_fixtures.py --out tests/fixtures

The script is seeded and deterministic: running it twice writes the same bytes. It is not run at
build time; its output is committed. It builds each model with `reference.Seq2Seq` (the one
definition of the architecture), randomises EVERY parameter (LayerNorm weights and biases included),
rounds the weights to the case's storage dtype, exports them with `reference.export`, and then runs
PyTorch in float64 on exactly the stored weights.

Layout (one folder per case, `B` batch, `S` longest source, `T` longest target, `V` tgt_vocab_size,
`D` d_model, `E` experts, `k` top_k; every array is a C-order NumPy .npy file):

    tests/fixtures/manifest.json              every case: name, description, storage dtype, full config,
                                              generator_bias, seed, shapes, lengths, file list, MoE scopes
    tests/fixtures/<case>/model.safetensors   the model, tensors in the case's storage dtype
    src.npy          int64   [B, S]     source ids, right-padded with pad_id
    src_lengths.npy  int64   [B]
    tgt.npy          int64   [B, T]     decoder input as given (starts with bos_id; no shifting), padded
    tgt_lengths.npy  int64   [B]
    logprobs.npy     float64 [B, T, V]  log_softmax(generator(decoder output)); 0 where t >= tgt_lengths[b]
    memory.npy       float64 [B, S, D]  encoder output (after the final encoder norm if any); 0 past the source
    src.txt, tgt.txt                    the same ids as text: one unpadded sequence a line, single spaces
  mixture-of-experts cases with gate top_k / noisy_top_k, per MoE layer <scope>
  (e.g. `transformer.encoder.layers.1`; T_side = S in the encoder, T in the decoder):
    choice.<scope>.npy        int64   [B, T_side, k]  chosen experts, by descending gate logit; -1 at padded
                                                      positions (routing of padding is not part of the contract)
  the noisy_top_k case, in addition:
    noise.<scope>.npy         float64 [B, T_side, E]  eps ~ N(0, 1) for every position (padded ones included)
    logprobs_noisy.npy        float64 [B, T, V]       with that noise on (logprobs.npy: noise off == top_k)
    choice_noisy.<scope>.npy  int64   [B, T_side, k]  the routing of the noisy run
  (the softmax gate routes to every expert, so it has no choice files)

Every top-k routing decision at a valid position has a margin (k-th minus (k+1)-th gate logit, in the
float64 reference) of at least MIN_MARGIN, re-drawing the case's weights otherwise, so that a float32
implementation routes the same way.

Checks printed per case (not stored): each padded batch row run alone (unpadded) gives the same
log-probs and memory (a check of the masks); PyTorch's fused no_grad fast path equals the plain
path used for the reference; PyTorch in float32 on the same weights stays within the 1e-5 that the
float C++ tests allow; a fresh model built from model.safetensors alone (read back by an independent
reader, config from its metadata) reproduces logprobs.npy exactly.
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Seq2Seq, export, full_config  # noqa: E402

MIN_MARGIN = 1e-3
STORAGE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def base(**kw):
    c = {"architecture": "encoder-decoder", "bos_id": 1, "eos_id": 2, "pad_id": 0}
    c.update(kw)
    return c


# name, description, storage dtype, config, generator_bias, src_lengths, tgt_lengths[, scale overrides]
# (the overrides keep the logits O(1) where the decoder output is not normalised or the output is tied)
CASES = [
    ("postln_relu_paper_f32",
     "baseline: post-LN, relu, paper sinusoids, scaled embeddings, separate embeddings, generator with bias",
     "F32",
     base(d_model=16, n_heads=4, d_ff=32, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=23, tgt_vocab_size=29),
     True, [5, 1, 9], [9, 4, 1]),
    ("preln_gelu_marian_dhead3_f16",
     "pre-LN, gelu, marian sinusoids, d_model 12 / 4 heads (d_head 3), max_positions 32, ids pad 3 bos 0 eos 1, F16",
     "F16",
     base(d_model=12, n_heads=4, d_ff=24, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=17, tgt_vocab_size=19, activation="gelu", norm_first=True,
          sinusoidal_variant="marian", max_positions=32, pad_id=3, bos_id=0, eos_id=1),
     True, [7, 3, 8], [2, 7, 5]),
    ("t2t_offset1_noscale_tied_bf16",
     "post-LN, gelu, tensor2tensor sinusoids, position_offset 1, no embedding scale, no encoder final norm, "
     "eps 1e-6, tie_output (separate src embedding) with bias, d_head 5, BF16",
     "BF16",
     base(d_model=20, n_heads=4, d_ff=40, n_encoder_layers=1, n_decoder_layers=2,
          src_vocab_size=37, tgt_vocab_size=41, activation="gelu", sinusoidal_variant="tensor2tensor",
          position_offset=1, scale_embedding=False, encoder_final_norm=False, layer_norm_eps=1e-6,
          tie_output=True),
     True, [6, 3], [4, 7], {"embed_std": 0.4}),
    ("learned_offset2_shared_tied_f64",
     "pre-LN, relu, learned positions (max_positions 16) with position_offset 2, share_embeddings + "
     "tie_output with bias, no decoder final norm, 2 heads, F64",
     "F64",
     base(d_model=16, n_heads=2, d_ff=24, n_encoder_layers=2, n_decoder_layers=1,
          src_vocab_size=31, tgt_vocab_size=31, norm_first=True, positional_encoding="learned",
          max_positions=16, position_offset=2, share_embeddings=True, tie_output=True,
          decoder_final_norm=False),
     True, [9, 4, 1], [1, 6, 8], {"embed_std": 0.7 / 4}),
    ("wide_shared_tied_nobias_b1_f32",
     "d_model 64 / 8 heads, post-LN, relu, paper sinusoids, share_embeddings + tie_output without bias, batch of 1",
     "F32",
     base(d_model=64, n_heads=8, d_ff=96, n_encoder_layers=1, n_decoder_layers=1,
          src_vocab_size=50, tgt_vocab_size=50, share_embeddings=True, tie_output=True),
     False, [9], [7]),
    ("preln_gelu_nobias_nofinalnorm_f32",
     "pre-LN, gelu, paper sinusoids with position_offset 1, generator without bias, no final norms, "
     "eps 1e-6, 3 heads (d_head 8)",
     "F32",
     base(d_model=24, n_heads=3, d_ff=48, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=43, tgt_vocab_size=29, activation="gelu", norm_first=True, position_offset=1,
          encoder_final_norm=False, decoder_final_norm=False, layer_norm_eps=1e-6),
     False, [3, 8, 5], [5, 2, 6], {"generator_gain": 0.6, "residual_gain": 0.5}),
    ("moe_softmax_f32",
     "MoE softmax gate, E=4, in encoder layer 0 and decoder layer 1; post-LN, relu",
     "F32",
     base(d_model=16, n_heads=4, d_ff=32, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=23, tgt_vocab_size=27,
          moe={"n_experts": 4, "top_k": 4, "gate": "softmax", "encoder_layers": [0], "decoder_layers": [1]}),
     True, [8, 1, 5], [3, 8, 1]),
    ("moe_top1_preln_gelu_bf16",
     "MoE top_k gate, k=1, E=5, in encoder layer 1 and decoder layer 0; pre-LN, gelu, t2t sinusoids, BF16",
     "BF16",
     base(d_model=16, n_heads=2, d_ff=24, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=19, tgt_vocab_size=33, activation="gelu", norm_first=True,
          sinusoidal_variant="tensor2tensor",
          moe={"n_experts": 5, "top_k": 1, "gate": "top_k", "encoder_layers": [1], "decoder_layers": [0]}),
     True, [9, 5, 2], [6, 1, 9]),
    ("moe_top2_learned_f16",
     "MoE top_k gate, k=2, E=4, in encoder layers 0 and 1 and decoder layer 1; post-LN, gelu, learned "
     "positions (max_positions 12), F16",
     "F16",
     base(d_model=16, n_heads=4, d_ff=32, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=25, tgt_vocab_size=21, activation="gelu", positional_encoding="learned",
          max_positions=12,
          moe={"n_experts": 4, "top_k": 2, "gate": "top_k", "encoder_layers": [0, 1], "decoder_layers": [1]}),
     True, [4, 7, 1], [8, 3, 5]),
    ("moe_noisy_top2_preln_f32",
     "MoE noisy_top_k gate, k=2, E=5, in encoder layer 1 and decoder layers 0 and 1; pre-LN, relu; "
     "reference without noise (== top_k) and with the stored noise",
     "F32",
     base(d_model=16, n_heads=4, d_ff=32, n_encoder_layers=2, n_decoder_layers=2,
          src_vocab_size=29, tgt_vocab_size=23, norm_first=True,
          moe={"n_experts": 5, "top_k": 2, "gate": "noisy_top_k", "encoder_layers": [1],
               "decoder_layers": [0, 1]}),
     True, [6, 9, 3], [9, 2, 5]),
]


# ---------------------------------------------------------------------------------------------
# weights

def randomise(model, seed, storage, overrides):
    """Draws every parameter in float64, rounds it to the storage dtype, keeps it as float64."""
    c = model.config
    d = c["d_model"]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            parts = name.split(".")
            leaf = parts[-1] if parts[-1] == "in_proj_weight" else (parts[-2] if len(parts) > 1 else name)
            n = torch.randn(shape, generator=g, dtype=torch.float64)
            if leaf.startswith("norm"):                          # LayerNorm (layer norms and final norms)
                v = 1.0 + 0.1 * n if name.endswith("weight") else 0.1 * n
            elif name in ("src_embed.weight", "tgt_embed.weight"):
                v = n * overrides.get("embed_std", 1.0 / math.sqrt(d) if c["scale_embedding"] else 0.6)
            elif name in ("src_pos.weight", "tgt_pos.weight"):
                v = 0.5 * n
            elif name == "generator_bias" or name.endswith("bias"):
                v = 0.1 * n
            else:                                                # [out, in] weights
                fan_in = shape[1]
                gain = {"in_proj_weight": 1.5, "linear1": 1.4, "gate": 1.5,
                        "generator": overrides.get("generator_gain", 1.5),
                        "out_proj": overrides.get("residual_gain", 1.0),
                        "linear2": overrides.get("residual_gain", 1.0)}.get(leaf, 1.0)
                v = n * (gain / math.sqrt(fan_in))
            p.copy_(v.to(STORAGE[storage]).to(torch.float64))


# ---------------------------------------------------------------------------------------------
# data

def make_batch(c, src_lengths, tgt_lengths, rng):
    """src: random ids (never pad/bos/eos) ending in eos; tgt: bos then random ids (never pad/bos)."""
    B, S, T = len(src_lengths), max(src_lengths), max(tgt_lengths)
    src = np.full((B, S), c["pad_id"], dtype=np.int64)
    tgt = np.full((B, T), c["pad_id"], dtype=np.int64)
    src_ok = [i for i in range(c["src_vocab_size"]) if i not in (c["pad_id"], c["bos_id"], c["eos_id"])]
    tgt_ok = [i for i in range(c["tgt_vocab_size"]) if i not in (c["pad_id"], c["bos_id"])]
    for b in range(B):
        ls, lt = src_lengths[b], tgt_lengths[b]
        src[b, : ls - 1] = rng.choice(src_ok, ls - 1)
        src[b, ls - 1] = c["eos_id"]
        tgt[b, 0] = c["bos_id"]
        tgt[b, 1:lt] = rng.choice(tgt_ok, lt - 1)
    return src, tgt


def valid_mask(lengths, T):                                   # [B, T] bool, True = real token
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


# ---------------------------------------------------------------------------------------------
# running the reference

def run(model, src, src_len, tgt, tgt_len, noise=None, fast=False):
    """float64 (or whatever the model is) forward. Returns (logprobs, memory, {scope: choice}, {scope: gate h}).

    fast=False runs with grad enabled, which keeps PyTorch off its fused inference fast paths: the
    reference is the plain computation. noise: {scope: eps tensor} or None (noise off).
    """
    moes = dict(model.moe_layers())
    gate_h = {}
    hooks = []
    for scope, m in moes.items():
        m.noise_eps = None if noise is None else noise[scope]

        def hook(mod, inp, out, scope=scope):
            x = inp[0]
            h = mod.gate(x)
            if mod.gate_kind == "noisy_top_k" and mod.noise_eps is not None:
                h = h + mod.noise_eps * torch.nn.functional.softplus(mod.noise(x))
            gate_h[scope] = h.detach()
        hooks.append(m.register_forward_hook(hook))
    src_t, tgt_t = torch.as_tensor(src), torch.as_tensor(tgt)
    sl, tl = torch.as_tensor(src_len), torch.as_tensor(tgt_len)
    try:
        ctx = torch.no_grad() if fast else torch.enable_grad()
        with ctx:
            memory = model.encode(src_t, sl)
            y = model.decode(memory, sl, tgt_t, tl)
            lp = torch.log_softmax(model.logits(y), -1)
    finally:
        for h in hooks:
            h.remove()
    choices = {s: (m.last_choice.detach().clone() if m.last_choice is not None else None)
               for s, m in moes.items()}
    for m in moes.values():
        m.noise_eps = None
    return lp.detach(), memory.detach(), choices, gate_h


def zero_padding(a, lengths):
    a = a.copy()
    a[~valid_mask(lengths, a.shape[1])] = 0
    return a


def min_margin(gate_h, k, lengths):
    """Smallest k-th minus (k+1)-th gate logit over valid positions."""
    s = torch.sort(gate_h, dim=-1, descending=True).values.numpy()
    marg = s[..., k - 1] - s[..., k]
    return float(marg[valid_mask(lengths, marg.shape[1])].min())


def side_lengths(scope, src_len, tgt_len):
    return src_len if ".encoder." in scope else tgt_len


# ---------------------------------------------------------------------------------------------

def build_case(spec, index):
    name, desc, storage, config, gen_bias, src_len, tgt_len = spec[:7]
    overrides = spec[7] if len(spec) > 7 else {}
    cfg = full_config(config)
    moe = cfg["moe"]
    for attempt in range(20):
        seed = 1000 * (index + 1) + attempt
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = Seq2Seq(cfg, generator_bias=gen_bias).double().eval()
        randomise(model, seed, storage, overrides)
        src, tgt = make_batch(cfg, src_len, tgt_len, rng)
        B, S, T = src.shape[0], src.shape[1], tgt.shape[1]
        scopes = [s for s, _ in model.moe_layers()]
        noise = None
        if moe and moe["gate"] == "noisy_top_k":
            noise = {s: torch.as_tensor(rng.standard_normal(
                (B, S if ".encoder." in s else T, moe["n_experts"]))) for s in scopes}
        ref = run(model, src, src_len, tgt, tgt_len)
        ref_noisy = run(model, src, src_len, tgt, tgt_len, noise=noise) if noise else None
        margins = {}
        if moe and moe["gate"] != "softmax":
            for s in scopes:
                lens = side_lengths(s, src_len, tgt_len)
                margins[s] = min_margin(ref[3][s], moe["top_k"], lens)
                if ref_noisy:
                    margins[s + " (noisy)"] = min_margin(ref_noisy[3][s], moe["top_k"], lens)
        if not margins or min(margins.values()) >= MIN_MARGIN:
            break
        print(f"  {name}: seed {seed}: routing margin {min(margins.values()):.2e} < {MIN_MARGIN}, re-drawing")
    else:
        raise RuntimeError(f"{name}: no seed with routing margins >= {MIN_MARGIN}")
    return dict(name=name, desc=desc, storage=storage, cfg=cfg, gen_bias=gen_bias, seed=seed, model=model,
                src=src, tgt=tgt, src_len=src_len, tgt_len=tgt_len, noise=noise, ref=ref,
                ref_noisy=ref_noisy, margins=margins, scopes=scopes)


def read_safetensors(path):
    """Minimal independent reader: (metadata, {name: float64 tensor}); F32/F64/F16/BF16 only."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        buf = raw[8 + n + a: 8 + n + b]
        if h["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype={"F32": "<f4", "F64": "<f8", "F16": "<f2"}[h["dtype"]])
        out[name] = torch.as_tensor(arr.astype(np.float64).reshape(h["shape"]))
    return meta, out


def reload_check(case, path):
    """Builds a fresh model from the file alone and reruns it: max abs diff to the written reference."""
    meta, tensors = read_safetensors(path)
    assert meta["format"] == "eigenformer"
    cfg = json.loads(meta["config"])
    m = Seq2Seq(cfg, generator_bias="generator.bias" in tensors).double().eval()
    sd = {("generator_bias" if k == "generator.bias" and cfg["tie_output"] else k): v for k, v in tensors.items()}
    m.load_state_dict(sd, strict=True)
    r = run(m, case["src"], case["src_len"], case["tgt"], case["tgt_len"])
    vm = valid_mask(case["tgt_len"], case["tgt"].shape[1])
    return float(np.abs(r[0].numpy() - case["ref"][0].numpy())[vm].max())


def checks(case):
    """Prints the self-checks; returns the worst numbers."""
    model, src, tgt = case["model"], case["src"], case["tgt"]
    src_len, tgt_len, noise = case["src_len"], case["tgt_len"], case["noise"]
    lp, mem = case["ref"][0].numpy(), case["ref"][1].numpy()
    out = {}
    # 1. each padded row alone, unpadded
    row_lp = row_mem = row_lp_noisy = 0.0
    for b in range(src.shape[0]):
        ls, lt = src_len[b], tgt_len[b]
        r = run(model, src[b:b + 1, :ls], [ls], tgt[b:b + 1, :lt], [lt])
        row_lp = max(row_lp, float(np.abs(r[0].numpy()[0] - lp[b, :lt]).max()))
        row_mem = max(row_mem, float(np.abs(r[1].numpy()[0] - mem[b, :ls]).max()))
        if noise:
            nb = {s: n[b:b + 1, : (ls if ".encoder." in s else lt)] for s, n in noise.items()}
            rn = run(model, src[b:b + 1, :ls], [ls], tgt[b:b + 1, :lt], [lt], noise=nb)
            row_lp_noisy = max(row_lp_noisy, float(np.abs(
                rn[0].numpy()[0] - case["ref_noisy"][0].numpy()[b, :lt]).max()))
    out["row_alone_logprobs"] = row_lp
    out["row_alone_memory"] = row_mem
    if noise:
        out["row_alone_logprobs_noisy"] = row_lp_noisy
    vm = valid_mask(tgt_len, tgt.shape[1])
    # 2. PyTorch's no_grad fast paths (fused encoder layer, native MHA) against the plain path
    f = run(model, src, src_len, tgt, tgt_len, fast=True)
    out["fastpath_vs_plain"] = float(np.abs(f[0].numpy() - lp)[vm].max())
    # 3. float32 PyTorch on the same weights against the float64 reference
    pe = getattr(model, "pe", None)
    model.float()
    try:
        r32 = run(model, src, src_len, tgt, tgt_len)
        out["float32_vs_float64"] = float(np.abs(r32[0].double().numpy() - lp)[vm].max())
        if noise:
            n32 = {s: n.float() for s, n in noise.items()}
            r32n = run(model, src, src_len, tgt, tgt_len, noise=n32)
            out["float32_vs_float64_noisy"] = float(np.abs(
                r32n[0].double().numpy() - case["ref_noisy"][0].numpy())[vm].max())
    finally:
        model.double()
        if pe is not None:
            model.pe = pe                                     # the float64 table, not its float32 rounding
    out["logprob_min"] = float(lp[vm].min())
    out["max_prob_mean"] = float(np.exp(lp[vm].max(-1)).mean())
    return out


def write_case(case, out_dir):
    d = os.path.join(out_dir, case["name"])
    os.makedirs(d)
    src_len, tgt_len = case["src_len"], case["tgt_len"]
    export(case["model"], os.path.join(d, "model.safetensors"), dtype=case["storage"])
    files = ["model.safetensors"]

    def save(fname, arr):
        np.save(os.path.join(d, fname), np.ascontiguousarray(arr))
        files.append(fname)

    save("src.npy", case["src"].astype(np.int64))
    save("src_lengths.npy", np.asarray(src_len, dtype=np.int64))
    save("tgt.npy", case["tgt"].astype(np.int64))
    save("tgt_lengths.npy", np.asarray(tgt_len, dtype=np.int64))
    save("logprobs.npy", zero_padding(case["ref"][0].numpy().astype(np.float64), tgt_len))
    save("memory.npy", zero_padding(case["ref"][1].numpy().astype(np.float64), src_len))
    for fname, arr, lens in (("src.txt", case["src"], src_len), ("tgt.txt", case["tgt"], tgt_len)):
        with open(os.path.join(d, fname), "w") as f:
            for b in range(arr.shape[0]):
                f.write(" ".join(str(int(t)) for t in arr[b, : lens[b]]) + "\n")
        files.append(fname)
    moe = case["cfg"]["moe"]
    if moe and moe["gate"] != "softmax":
        runs = [("choice", case["ref"])]
        if case["noise"]:
            for s in case["scopes"]:
                save(f"noise.{s}.npy", case["noise"][s].numpy().astype(np.float64))
            save("logprobs_noisy.npy", zero_padding(case["ref_noisy"][0].numpy().astype(np.float64), tgt_len))
            runs.append(("choice_noisy", case["ref_noisy"]))
        for prefix, r in runs:
            for s in case["scopes"]:
                ch = r[2][s].numpy().astype(np.int64)
                ch[~valid_mask(side_lengths(s, src_len, tgt_len), ch.shape[1])] = -1
                save(f"{prefix}.{s}.npy", ch)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="output folder (replaced)")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    manifest = {
        "description": "golden fixtures for eigenformer, written by tools/make_fixtures.py from tools/reference.py "
                       "(PyTorch, float64, weights as stored); see the script's header for the layout",
        "generator": "tools/make_fixtures.py",
        "torch_version": torch.__version__.split("a")[0],
        "padding": "logprobs/memory hold 0 past a sequence's length; choice files hold -1 there",
        "cases": [],
    }
    worst = {}
    for i, spec in enumerate(CASES):
        if args.only and spec[0] not in args.only:
            continue
        case = build_case(spec, i)
        files = write_case(case, args.out)
        chk = checks(case)
        chk["reload_from_file"] = reload_check(case, os.path.join(args.out, case["name"], "model.safetensors"))
        src, tgt = case["src"], case["tgt"]
        entry = {
            "name": case["name"],
            "description": case["desc"],
            "storage_dtype": case["storage"],
            "generator_bias": case["gen_bias"],
            "seed": case["seed"],
            "config": case["cfg"],
            "batch": src.shape[0], "src_len": src.shape[1], "tgt_len": tgt.shape[1],
            "src_lengths": list(case["src_len"]), "tgt_lengths": list(case["tgt_len"]),
            "files": files,
        }
        if case["scopes"]:
            entry["moe_scopes"] = case["scopes"]
        if case["margins"]:
            entry["min_routing_margin"] = float(f"{min(case['margins'].values()):.4g}")
        manifest["cases"].append(entry)
        size = sum(os.path.getsize(os.path.join(args.out, case["name"], f)) for f in files)
        print(f"{case['name']} [{case['storage']}, seed {case['seed']}, B={src.shape[0]} S={src.shape[1]} "
              f"T={tgt.shape[1]}, {size / 1024:.1f} KiB]")
        for k, v in chk.items():
            print(f"    {k:28s} {v:.3e}")
            if k not in ("logprob_min", "max_prob_mean"):
                worst[k] = max(worst.get(k, 0.0), v)
        for s, m in case["margins"].items():
            print(f"    routing margin {s:40s} {m:.3e}")
        if case["ref_noisy"]:
            for s in case["scopes"]:
                lens = side_lengths(s, case["src_len"], case["tgt_len"])
                vm = valid_mask(lens, case["ref"][2][s].shape[1])
                diff = (case["ref"][2][s] != case["ref_noisy"][2][s]).any(-1).numpy()[vm].sum()
                print(f"    noise changed the routing of {diff}/{vm.sum()} tokens in {s}")
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print("worst over cases:")
    for k, v in worst.items():
        print(f"    {k:28s} {v:.3e}")
    if worst.get("float32_vs_float64", 0) > 1e-5:
        print("WARNING: PyTorch float32 differs from the float64 reference by more than 1e-5")


if __name__ == "__main__":
    main()
