"""Reads tests/fixtures/lm back with nothing but the committed files and the reference libraries, and
checks that they reproduce what the files say (an independent check of make_lm_fixtures.py):

    build/hf-venv/bin/python tools/hf/check_lm_fixtures.py [--dir tests/fixtures/lm]

Per case: AutoModelForCausalLM.from_pretrained(dir) in float64; greedy / beam 4 / n-best 2 with the
generation settings of reference.json, each prompt of prompts.txt alone, equal greedy.txt, beam4.txt,
beam4_nbest.txt (scores within 1e-6); float32 from_pretrained gives the same greedy and beam ids;
teacher-forced log-probs of tgt.txt equal logprobs.npy (and router_logits.npy for mixtral; and, with
rotary tables, RMSNorm and softmaxes made float64, logprobs_exact_f64.npy / router_logits_exact_f64.npy); the per-token log-probs and margins
of reference.json. Per CTranslate2 folder: Generator.generate_batch gives ct2_greedy.txt.
"""
import sys
import types

try:
    import torch.distributed.fsdp  # noqa: F401
except Exception:  # Debian's torch 1.13 on Python 3.11: see make_lm_fixtures.py
    _m = types.ModuleType("torch.distributed.fsdp")
    _m.FullyShardedDataParallel = type("FullyShardedDataParallel", (), {})
    sys.modules["torch.distributed.fsdp"] = _m
    import torch.distributed
    torch.distributed.fsdp = _m

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, GenerationConfig  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TOL_LOGPROBS = 1e-12      # same library, same weights, same order of operations: (near) bitwise


def ids(path):
    with open(path) as f:
        return [[int(t) for t in line.split()] for line in f.read().split("\n")[:-1]]


class default_dtype:
    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def strip(row, prompt, eos):
    row = [int(t) for t in row]
    assert row[: len(prompt)] == prompt
    gen = row[len(prompt):]
    return (gen[: gen.index(eos)], True) if eos in gen else (gen, False)


def gen(model, prompt, gc):
    x = torch.tensor([prompt])
    with torch.no_grad(), default_dtype(next(model.parameters()).dtype):
        return model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc,
                              output_scores=True, return_dict_in_generate=True)


def logprobs(model, seq, router=False):
    with torch.no_grad(), default_dtype(next(model.parameters()).dtype):
        out = model(input_ids=torch.tensor([seq]), **(dict(output_router_logits=True) if router else {}))
    lp = torch.log_softmax(out.logits.double(), -1)[0].numpy()
    return (lp, np.stack([r.double().numpy() for r in out.router_logits])) if router else lp


def make_exact_float64(model):
    """Rotary tables and RMSNorm in float64 (transformers 4.46 computes them in float32 even in a
    float64 model); the float32 softmaxes are handled by float64_softmax()."""
    cfg = model.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / (float(cfg.rope_theta) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if getattr(cfg, "rope_scaling", None):
        inv = inv / float(cfg.rope_scaling["factor"])

    def rope(x, position_ids=None, seq_len=None):
        if seq_len is not None:
            f = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv[None, :]
        else:
            f = position_ids[:, :, None].double() * inv[None, None, :]
        e = torch.cat((f, f), -1)
        return e.cos().to(x.dtype), e.sin().to(x.dtype)

    n = 0
    for m in model.modules():
        name = type(m).__name__
        if name.endswith("RotaryEmbedding"):
            m.forward = rope
            n += 1
        elif name.endswith("RMSNorm"):
            m.forward = (lambda h, m=m: m.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True)
                                                                     + m.variance_epsilon)))
            n += 1
    return n


class float64_softmax:
    def __enter__(self):
        orig = self.orig = torch.nn.functional.softmax

        def softmax(x, dim=None, _stacklevel=3, dtype=None):
            return orig(x, dim=dim, _stacklevel=_stacklevel,
                        dtype=None if (x.dtype == torch.float64 and dtype == torch.float32) else dtype)

        torch.nn.functional.softmax = softmax

    def __exit__(self, *exc):
        torch.nn.functional.softmax = self.orig


def teacher_forced(model, tgts, V, router=False):
    lp = np.zeros((len(tgts), max(map(len, tgts)), V))
    rls = []
    for b, t in enumerate(tgts):
        r = logprobs(model, t, router)
        if router:
            r, rl = r
            rls.append(rl)
        lp[b, : len(t)] = r
    return lp, (np.concatenate(rls, 1) if router else None)


def check_case(d, failures):
    name = os.path.basename(d)

    def expect(what, ok, detail=""):
        if not ok:
            failures.append(f"{name}: {what} {detail}")

    with open(os.path.join(d, "reference.json")) as f:
        ref = json.load(f)
    eos = ref["special_ids"]["eos"]
    prompts, tgts = ids(os.path.join(d, "prompts.txt")), ids(os.path.join(d, "tgt.txt"))
    m64 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").double().eval()
    m32 = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    gcs = {k: GenerationConfig(**{a: b for a, b in ref["generate"][k].items()})
           for k in ("greedy", "beam4", "beam4_nbest")}
    saved = GenerationConfig.from_pretrained(d)
    expect("generation_config.json", all(getattr(saved, k) == getattr(gcs["greedy"], k) for k in (
        "max_new_tokens", "do_sample", "num_beams", "eos_token_id", "bos_token_id", "pad_token_id")))
    greedy = [gen(m64, p, gcs["greedy"]) for p in prompts]
    g = [strip(o.sequences[0], p, eos) for o, p in zip(greedy, prompts)]
    expect("greedy.txt", [x for x, _ in g] == ids(os.path.join(d, "greedy.txt")))
    expect("reference greedy", [(h["ids"], h["finished"]) for h in ref["greedy"]] == g)
    margins = []
    for o, (x, fin) in zip(greedy, g):
        ms = []
        for t in range(len(x) + fin):
            top = torch.topk(o.scores[t][0].double(), 2).values
            ms.append(float(top[0] - top[1]))
        margins.append(ms)
    expect("margins", all(np.allclose(a, h["margins"], atol=1e-12) for a, h in zip(margins, ref["greedy"])))
    expect("min margin", min(min(ms) for ms in margins if ms) >= ref.get("min_margin_required", 0.05))
    beam = [strip(gen(m64, p, gcs["beam4"]).sequences[0], p, eos)[0] for p in prompts]
    expect("beam4.txt", beam == ids(os.path.join(d, "beam4.txt")))
    lines = []
    for i, p in enumerate(prompts):
        o = gen(m64, p, gcs["beam4_nbest"])
        for row, sc in zip(o.sequences, o.sequences_scores):
            lines.append((i, float(sc), strip(row, p, eos)[0]))
    with open(os.path.join(d, "beam4_nbest.txt")) as f:
        rec = [line.split("\t") for line in f.read().splitlines()]
    expect("beam4_nbest.txt", len(rec) == len(lines) and all(
        int(a[0]) == b[0] and abs(float(a[1]) - b[1]) <= 1e-6 and [int(t) for t in a[2].split()] == b[2]
        for a, b in zip(rec, lines)))
    # float32: same decisions
    g32 = [strip(gen(m32, p, gcs["greedy"]).sequences[0], p, eos)[0] for p in prompts]
    b32 = [strip(gen(m32, p, gcs["beam4"]).sequences[0], p, eos)[0] for p in prompts]
    expect("float32 greedy", g32 == [x for x, _ in g])
    expect("float32 beam4", b32 == beam)
    # teacher-forced
    router = ref["family"] == "mixtral"
    V = m64.config.vocab_size
    lp, rl = teacher_forced(m64, tgts, V, router)
    diff = float(np.abs(lp - np.load(os.path.join(d, "logprobs.npy"))).max())
    expect("logprobs.npy", diff <= TOL_LOGPROBS, diff)
    lp32, _ = teacher_forced(m32, tgts, V)
    d32 = float(np.abs(lp32 - lp).max())
    expect("float32 logprobs", d32 < 1e-4, d32)
    if router:
        rdiff = float(np.abs(rl - np.load(os.path.join(d, "router_logits.npy"))).max())
        expect("router_logits.npy", rdiff <= TOL_LOGPROBS, rdiff)
    exact_diff = None
    if os.path.exists(os.path.join(d, "logprobs_exact_f64.npy")):
        m = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").double().eval()
        expect("rotary / RMSNorm modules", make_exact_float64(m) > 0)
        with float64_softmax():
            lpr, rlr = teacher_forced(m, tgts, V, router)
        exact_diff = float(np.abs(lpr - np.load(os.path.join(d, "logprobs_exact_f64.npy"))).max())
        expect("logprobs_exact_f64.npy", exact_diff <= TOL_LOGPROBS, exact_diff)
        if router:
            x = float(np.abs(rlr - np.load(os.path.join(d, "router_logits_exact_f64.npy"))).max())
            expect("router_logits_exact_f64.npy", x <= TOL_LOGPROBS, x)
    # per-token log-probs in reference.json
    worst = 0.0
    for key in ("greedy", "beam4", "beam4_nbest"):
        for h in ref[key]:
            p = prompts[h["prompt"]]
            full = h["ids"] + ([eos] if h["finished"] else [])
            if full:
                x = logprobs(m64, (p + full)[:-1])
                got = [x[len(p) - 1 + i, t] for i, t in enumerate(full)]
                worst = max(worst, max(abs(a - b) for a, b in zip(got, h["token_logprobs"])))
    expect("reference token_logprobs", worst <= TOL_LOGPROBS, worst)
    print(f"{name}: greedy lengths {[len(x) for x, _ in g]}, min margin {min(min(ms) for ms in margins if ms):.4f}, "
          f"logprobs diff {diff:.1e}, float32 {d32:.1e}" + (f", exact_f64 file {exact_diff:.1e}" if exact_diff is not None else ""))
    return prompts, g


def check_ct2(d, prompts, eos, hf_greedy, failures):
    import ctranslate2
    name = os.path.basename(d)
    with open(os.path.join(d, "vocabulary.json")) as f:
        vocab = json.load(f)
    with open(os.path.join(d, "ct2_reference.json")) as f:
        ref = json.load(f)
    index = {t: i for i, t in enumerate(vocab)}
    o = ref["options"]

    def run(compute_type):
        g = ctranslate2.Generator(d, device="cpu", compute_type=compute_type, intra_threads=1)
        return [[index[t] for t in g.generate_batch([[vocab[i] for i in p]], max_length=o["max_length"],
                                                      sampling_topk=1, beam_size=1, include_prompt_in_result=False,
                                                      min_length=0, end_token=vocab[eos])[0].sequences[0]]
                for p in prompts]

    rows = run("default")
    if rows != ids(os.path.join(d, "ct2_greedy.txt")):
        failures.append(f"{name}: ct2_greedy.txt")
    if ref.get("greedy_compute_type_float32") is not None:
        r32 = run("float32")
        if r32 != ref["greedy_compute_type_float32"]:
            failures.append(f"{name}: greedy_compute_type_float32")
    print(f"{name}: ct2_greedy.txt reproduced; equal to transformers: {rows == hf_greedy}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="tests/fixtures/lm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    failures = []
    with open(os.path.join(args.dir, "manifest.json")) as f:
        manifest = json.load(f)
    for case in manifest["cases"]:
        d = os.path.join(args.dir, case["name"])
        prompts, g = check_case(d, failures)
        with open(os.path.join(d, "reference.json")) as f:
            eos = json.load(f)["special_ids"]["eos"]
        for folder in case["folders"][1:]:
            try:
                import ctranslate2  # noqa: F401
            except Exception:  # noqa: BLE001
                print(f"{folder}: skipped (no ctranslate2)")
                continue
            check_ct2(os.path.join(args.dir, folder), prompts, eos, [x for x, _ in g], failures)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("all fixtures reproduced")


if __name__ == "__main__":
    main()
