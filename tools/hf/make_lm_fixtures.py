"""Writes the decoder-only language-model fixtures (tests/fixtures/lm) that the C++ loaders of Hugging
Face `save_pretrained()` directories of Llama, Mistral, Qwen2, GPT-2 and Mixtral (and of CTranslate2
conversions of them) are tested against, so that those tests need neither Python nor the network.

Run, from the repository root (scripts/hf_env creates the environment and prints the python):

    build/hf-venv/bin/python tools/hf/make_lm_fixtures.py --out tests/fixtures/lm [--check-determinism]

Seeded and deterministic: running it twice writes the same bytes (--check-determinism does it in a
second process and compares). The output folder is replaced, README.md kept.
tests/fixtures/lm/README.md documents the layout; this script writes every other file.

For each case the script builds a tiny model with transformers from a config, draws EVERY weight
from a seeded NumPy generator (scaled per kind, SCALE), rounds it to float32 (the stored dtype) and
computes the references in float64 (model.double()) on exactly the stored weights, each prompt
alone (no padding). A draw is kept only if every greedy decision has a top-1 minus top-2
log-probability margin of at least MIN_MARGIN, no output holds a token a real model would not emit
(unk, bos), at least one greedy output ends with eos before the limit and at least one runs to it,
at most one is empty, beam search differs from greedy on at least one prompt, the greedy outputs
hold at least MIN_DISTINCT distinct tokens, and float32 transformers gives the same greedy and
beam ids; otherwise the next seed is drawn.
"""
import sys
import types

from hf_common import dir_size, gc_record, stored_float64, stub_fsdp, write_ids, write_json

stub_fsdp()

import argparse  # noqa: E402
import filecmp  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
# explicit imports: `from transformers import *` reaches transformers.integrations.executorch,
# which needs torch.export (torch >= 2.1)
from transformers import (  # noqa: E402
    GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
    MistralForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

try:
    import ctranslate2  # noqa: E402
except Exception:  # noqa: BLE001 - optional
    ctranslate2 = None

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

MIN_MARGIN = 0.05          # top-1 minus top-2 log-probability at every greedy step, float64 reference
MAX_NEW_TOKENS = 16
MAX_ATTEMPTS = 400
MIN_DISTINCT = 6           # distinct tokens over the greedy outputs

FAMILY = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "gpt2": (GPT2Config, GPT2LMHeadModel),
    "mixtral": (MixtralConfig, MixtralForCausalLM),
}

LLAMA_LIKE = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
                  max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
                  attention_dropout=0.0, initializer_range=0.02, use_cache=True)
# llama / mistral / mixtral: SentencePiece layout <unk> 0, <s> 1, </s> 2 (bos first in a prompt);
# qwen2: no bos (Qwen's tokenizer adds none), eos 2; gpt2: <|endoftext|> = bos = eos = last id, no bos
# in prompts. pad for generate(): eos (what transformers falls back to; each prompt runs alone anyway)
SPM_IDS = dict(unk=0, bos=1, eos=2, pad=None)

CASES = [
    dict(name="llama", family="llama", vocab=64,
         desc="Llama: RMSNorm (eps 1e-5), rotary (theta 10000, rotate_half layout), GQA 4 query / 2 "
              "key-value heads, SwiGLU MLP (gate/up/down), no biases, untied lm_head; bos 1 first",
         config=dict(LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=False,
                     attention_bias=False, mlp_bias=False),
         ids=dict(SPM_IDS), prompt_lengths=[3, 7, 12, 5], tgt_lengths=[9, 14, 20, 12], ct2=["float32", "float16", "int8"]),
    dict(name="llama_scaled", family="llama", vocab=64,
         desc="Llama with rope_theta 500000, rope_scaling linear factor 2 (positions / 2), MQA (1 "
              "key-value head), tie_word_embeddings true (no lm_head.weight stored)",
         config=dict(LLAMA_LIKE, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0,
                     rope_scaling={"type": "linear", "factor": 2.0}, attention_bias=False, mlp_bias=False),
         ids=dict(SPM_IDS), prompt_lengths=[4, 10, 3], tgt_lengths=[10, 18, 8], ct2=[]),
    dict(name="mistral", family="mistral", vocab=72,
         desc="Mistral: as Llama (RMSNorm, rotary theta 10000, GQA 4 / 2, SwiGLU, no biases, untied), "
              "sliding_window null (no window)",
         config=dict(LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None),
         ids=dict(SPM_IDS), prompt_lengths=[6, 3, 11], tgt_lengths=[13, 8, 19], ct2=[]),
    dict(name="qwen2", family="qwen2", vocab=80,
         desc="Qwen2: as Llama with biases on q_proj, k_proj, v_proj (none on o_proj or the MLP), "
              "rope_theta 10000, GQA 4 / 2, tie_word_embeddings true, use_sliding_window false "
              "(sliding_window null); no bos, eos 2",
         config=dict(LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False,
                     sliding_window=None, max_window_layers=2),
         ids=dict(unk=None, bos=None, eos=2, pad=None), prompt_lengths=[5, 9, 3, 12],
         tgt_lengths=[11, 16, 8, 20], ct2=[]),
    dict(name="gpt2", family="gpt2", vocab=96,
         desc="GPT-2: pre-norm LayerNorm (eps 1e-5) with biases, learned absolute positions (wpe, from "
              "0), fused c_attn Conv1D weights stored [in, out], gelu_new (tanh approximation), MLP 4 x "
              "d, tied lm_head; <|endoftext|> = bos = eos = 95, plain prompts",
         config=dict(n_embd=32, n_head=4, n_layer=2, n_positions=64, n_inner=None,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                     reorder_and_upcast_attn=False, tie_word_embeddings=True, use_cache=True),
         ids=dict(unk=None, bos=95, eos=95, pad=None), prompt_lengths=[4, 8, 3, 11],
         tgt_lengths=[10, 15, 9, 20], ct2=["float32", "float16", "int8"]),
    dict(name="mixtral", family="mixtral", vocab=64,
         desc="Mixtral: as Mistral with a sparse MoE MLP: router (gate, no bias) over 4 SwiGLU experts "
              "(w1 gate, w3 up, w2 down), top-2 of the softmax, the two weights renormalised to sum 1; "
              "GQA 4 / 2, untied, sliding_window null; router_logits.npy",
         config=dict(LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None,
                     num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0,
                     output_router_logits=False, router_aux_loss_coef=0.0),
         ids=dict(SPM_IDS), prompt_lengths=[5, 3, 9], tgt_lengths=[12, 8, 17], ct2=[]),
]


def special_ids(case):
    s = dict(case["ids"])
    V = case["vocab"]
    s["pad_for_generate"] = s["eos"]
    specials = {v for k, v in s.items() if k in ("unk", "bos", "eos") and v is not None}
    s["ordinary"] = [i for i in range(V) if i not in specials]
    # ids a model does not emit: unk and bos (gpt2's bos is its eos); short output rows (logits ~0)
    s["never"] = sorted({v for k, v in s.items() if k in ("unk", "bos") and v is not None} - {s["eos"]})
    return s


def build_config(case, sp):
    Config = FAMILY[case["family"]][0]
    kw = dict(case["config"])
    kw.update(vocab_size=case["vocab"], eos_token_id=sp["eos"], bos_token_id=sp["bos"],
              pad_token_id=sp["pad"], attn_implementation="eager")
    return Config(**kw)


# weight scales (see make_hf_fixtures.py): transformers' own initialisation (std 0.02) gives ~equal
# logits; these give peaked but varied outputs
SCALE = dict(
    logit_gain=6.0,        # the last norm's mean |weight|: logits ~ N(0, logit_gain^2)
    gains={"q_proj": 1.5, "k_proj": 1.5, "v_proj": 1.0, "o_proj": 0.7, "gate_proj": 1.4, "up_proj": 1.4,
           "down_proj": 0.7, "w1": 1.4, "w3": 1.4, "w2": 0.7, "gate": 3.0,
           "c_attn": (1.5, 1.5, 1.0), "attn.c_proj": 0.7, "c_fc": 1.4, "mlp.c_proj": 0.7},
    norm_weight_std=0.25, ln_bias_std=0.1, bias_std=0.1, positions=0.5,
    eos_row_scale=1.6,     # the eos output row is longer: some outputs end before the limit
    rare_row_scale=0.1,    # unk, bos output rows: logits ~0, never emitted
)


def last_norm_name(fam):
    return "transformer.ln_f" if fam == "gpt2" else "model.norm"


def randomise(model, case, sp, rng):
    """Every parameter from N(0, 1) scaled per kind (SCALE); stored as float32 values."""
    sc = SCALE
    fam = case["family"]
    cfg = model.config
    d = cfg.n_embd if fam == "gpt2" else cfg.hidden_size
    tied = cfg.tie_word_embeddings
    last = last_norm_name(fam) + ".weight"
    with torch.no_grad():
        for name, p in model.named_parameters():          # a tied tensor appears once
            n = rng.standard_normal(tuple(p.shape))
            if name.endswith("norm.weight") or name.endswith("layernorm.weight") or ".ln_" in name:
                if name.endswith("bias"):
                    v = sc["ln_bias_std"] * n
                else:
                    v = 1.0 + sc["norm_weight_std"] * n
                    if name == last:
                        # head rows have norm sqrt(d) (tied: the embedding) or 1 (untied)
                        row = math.sqrt(d) if tied else 1.0
                        v = v * sc["logit_gain"] / row
                        # random signs: the tied output row of the token just read no longer lines up
                        # with the residual stream that still carries its embedding (else: repeats)
                        v = v * np.where(rng.standard_normal(v.shape) < 0, -1.0, 1.0)
            elif name in ("model.embed_tokens.weight", "transformer.wte.weight", "lm_head.weight"):
                # equal-norm rows: no token wins by the size of its row
                n = n / np.linalg.norm(n, axis=1, keepdims=True)
                is_head = name == "lm_head.weight" or tied
                v = n * (1.0 if name == "lm_head.weight" else math.sqrt(d))
                if is_head:
                    v[sp["never"]] *= sc["rare_row_scale"]
                    v[sp["eos"]] *= sc["eos_row_scale"]
            elif name == "transformer.wpe.weight":
                v = sc["positions"] * n
            elif name.endswith("bias"):
                v = sc["bias_std"] * n
            else:
                parts = name.split(".")
                leaf = parts[-2]
                if fam == "gpt2":
                    # Conv1D: weight [in, out], y = x W + b
                    fan_in = p.shape[0]
                    if leaf == "c_attn":
                        g = np.repeat(np.array(sc["gains"]["c_attn"]), p.shape[1] // 3)[None, :]
                    else:
                        g = sc["gains"].get(parts[-3] + "." + leaf, sc["gains"].get(leaf))
                else:
                    fan_in = p.shape[1]
                    g = sc["gains"][leaf]
                v = n * (g / math.sqrt(fan_in))
            p.copy_(torch.from_numpy(np.asarray(v, dtype=np.float32)))
    center_output(model, case, sp, rng)


def center_output(model, case, sp, rng):
    """The final states of a random model share a large common component, which gives every step the
    same favourite token. GPT-2: ln_f's bias minus the mean of ln_f's output over a random batch (as
    make_hf_fixtures.py). Untied RMSNorm models: lm_head rows projected orthogonal to the mean final
    state (the head does not change the states). Tied RMSNorm models: nothing (seed search)."""
    fam = case["family"]
    tied = model.config.tie_word_embeddings
    if fam != "gpt2" and tied:
        return
    norm = model.get_submodule(last_norm_name(fam))
    seen = []
    hook = norm.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().double().reshape(-1, out.shape[-1])))
    try:
        for s in make_prompts(sp, [6, 9, 12, 15, 8, 11, 14, 10], rng, bos=sp["bos"] if fam != "gpt2" else None):
            with torch.no_grad():
                model(input_ids=torch.tensor([s]))
    finally:
        hook.remove()
    mean = torch.cat(seen).mean(0)
    with torch.no_grad():
        if fam == "gpt2":
            norm.bias.copy_((norm.bias.double() - mean).float())
        else:
            W = model.lm_head.weight.double()
            u = mean / mean.norm()
            model.lm_head.weight.copy_((W - (W @ u)[:, None] * u[None, :]).float())



class model_default_dtype:
    """Runs a block with torch's default dtype set to the model's (torch 1.13 refuses some of
    transformers 4.46's mask constructions of a float64 model under a float32 default; harmless
    where it is not needed)."""

    def __init__(self, model):
        self.dtype = next(model.parameters()).dtype

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


# ---------------------------------------------------------------------------------------------
# generation and scoring


def gen_config(sp, num_beams, num_return_sequences=1, early_stopping=False):
    """Every generation setting explicit and neutral."""
    return GenerationConfig(
        bos_token_id=sp["bos"], eos_token_id=sp["eos"], pad_token_id=sp["pad_for_generate"],
        forced_bos_token_id=None, forced_eos_token_id=None,
        max_new_tokens=MAX_NEW_TOKENS, min_length=0, min_new_tokens=None, do_sample=False,
        num_beams=num_beams, num_beam_groups=1, num_return_sequences=num_return_sequences,
        length_penalty=1.0, early_stopping=early_stopping, no_repeat_ngram_size=0,
        repetition_penalty=1.0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        diversity_penalty=0.0, temperature=1.0, top_k=50, top_p=1.0, renormalize_logits=False,
        remove_invalid_values=False, exponential_decay_length_penalty=None, use_cache=True,
        output_scores=False, return_dict_in_generate=False)


def generate(model, prompt, gc):
    """One prompt alone (no padding): input_ids [1, L], attention_mask all ones."""
    ids = torch.tensor([prompt])
    with torch.no_grad(), model_default_dtype(model):
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc,
                              output_scores=True, return_dict_in_generate=True)


def strip(row, prompt, sp):
    """generate()'s row minus the prompt and minus the first eos and everything after it."""
    row = [int(t) for t in row]
    assert row[: len(prompt)] == prompt
    gen = row[len(prompt):]
    finished = sp["eos"] in gen
    if finished:
        gen = gen[: gen.index(sp["eos"])]
    return gen, finished


def greedy_margins(out, prompt, sp):
    gen, finished = strip(out.sequences[0], prompt, sp)
    m = []
    for t in range(len(gen) + (1 if finished else 0)):
        top = torch.topk(out.scores[t][0].double(), 2).values
        m.append(float(top[0] - top[1]))
    return m


def forward_logprobs(model, seq, router=False):
    """float64 log_softmax of the logits of one sequence alone (row t predicts token t + 1)."""
    with torch.no_grad(), model_default_dtype(model):
        kw = dict(output_router_logits=True) if router else {}
        out = model(input_ids=torch.tensor([seq]), **kw)
    lp = torch.log_softmax(out.logits.double(), -1)[0].numpy()
    if router:
        return lp, np.stack([r.double().numpy() for r in out.router_logits])   # [layers, T, E]
    return lp


def token_logprobs(model, prompt, gen_with_eos):
    if not gen_with_eos:
        return []
    seq = prompt + gen_with_eos
    lp = forward_logprobs(model, seq[:-1])
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(gen_with_eos)]


def run_all(model, prompts):
    r = dict(gc_greedy=gen_config(SP, 1), gc_beam4=gen_config(SP, 4, early_stopping=True),
             gc_nbest=gen_config(SP, 4, 2, early_stopping=True))
    for k in ("greedy", "beam4", "nbest"):
        r[k] = [generate(model, p, r["gc_" + k]) for p in prompts]
    return r


def ids_of(outs, prompts, sp, per=1):
    res = []
    for o, p in zip(outs, prompts):
        for row in o.sequences:
            res.append(strip(row, p, sp))
    return res


SP = None   # the current case's special ids (run_all)


def make_prompts(sp, lengths, rng, bos):
    out = []
    for L in lengths:
        pre = [bos] if bos is not None else []
        out.append(pre + [int(x) for x in rng.choice(sp["ordinary"], L - len(pre))])
    return out


def attempt(case, index, attempt_no, sp):
    seed = 1000 * (index + 1) + attempt_no
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    cfg = build_config(case, sp)
    Model = FAMILY[case["family"]][1]
    model32 = Model(cfg).eval()
    randomise(model32, case, sp, rng)
    bos = sp["bos"] if case["family"] in ("llama", "mistral", "mixtral") else None
    prompts = make_prompts(sp, case["prompt_lengths"], rng, bos)
    tgts = [p + [int(x) for x in rng.choice(sp["ordinary"], L - len(p))]
            for p, L in zip(prompts, case["tgt_lengths"])]
    model = stored_float64(model32)
    r = run_all(model, prompts)
    reasons = []
    margins = [greedy_margins(o, p, sp) for o, p in zip(r["greedy"], prompts)]
    flat = [m for ms in margins for m in ms]
    min_margin = min(flat) if flat else float("inf")
    if min_margin < MIN_MARGIN:
        reasons.append(f"greedy margin {min_margin:.3g}")
    g = ids_of(r["greedy"], prompts, sp)
    outs = g + ids_of(r["beam4"], prompts, sp) + ids_of(r["nbest"], prompts, sp)
    bad = sorted({t for x, _ in outs for t in x if t in sp["never"]})
    if bad:
        reasons.append(f"emits {bad}")
    fin = [f for _, f in g]
    if all(fin) or not any(fin):
        reasons.append(f"greedy finished {fin}")
    if sum(len(x) == 0 for x, _ in g) > 1:
        reasons.append("more than one empty greedy output")
    if g == ids_of(r["beam4"], prompts, sp):
        reasons.append("beam4 == greedy everywhere")
    distinct = len({t for x, _ in g for t in x})
    if distinct < MIN_DISTINCT:
        reasons.append(f"{distinct} distinct greedy tokens")
    if not reasons:
        r32 = run_all(model32, prompts)
        for k in ("greedy", "beam4", "nbest"):
            if ids_of(r32[k], prompts, sp) != ids_of(r[k], prompts, sp):
                reasons.append(f"float32 {k} differs")
    return dict(seed=seed, cfg=cfg, model32=model32, model=model, prompts=prompts, tgts=tgts, r=r,
                margins=margins, min_margin=min_margin, reasons=reasons)


def build_case(case, index):
    global SP
    sp = special_ids(case)
    SP = sp
    for a in range(MAX_ATTEMPTS):
        c = attempt(case, index, a, sp)
        if not c["reasons"]:
            break
        print(f"  {case['name']}: seed {c['seed']}: {', '.join(c['reasons'])}; re-drawing", flush=True)
    else:
        raise RuntimeError(f"{case['name']}: no acceptable seed in {MAX_ATTEMPTS} attempts")
    c.update(case=case, sp=sp)
    return c


# ---------------------------------------------------------------------------------------------
# writing



def tensor_listing(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as st:
                out[f] = [[k, str(st.get_slice(k).get_dtype()), list(st.get_slice(k).get_shape())]
                          for k in sorted(st.keys())]
    return out



def hyps_record(model, prompts, outs, sp):
    recs = []
    for i, (o, p) in enumerate(zip(outs, prompts)):
        scores = getattr(o, "sequences_scores", None)
        for j, row in enumerate(o.sequences):
            gen, finished = strip(row, p, sp)
            full = gen + ([sp["eos"]] if finished else [])
            lps = token_logprobs(model, p, full)
            rec = dict(prompt=i, ids=gen, finished=finished, generated_length=len(full),
                       token_logprobs=lps, sum_logprobs=float(sum(lps)))
            if scores is not None:
                rec["transformers_score"] = float(scores[j])
                # sum of log-probs over generated_length ** length_penalty (eos counted)
                rec["recomputed_score"] = float(sum(lps) / len(full))
            recs.append(rec)
    return recs


def teacher_forced(model, tgts, router=False):
    T = max(len(t) for t in tgts)
    V = model.config.vocab_size
    lp = np.zeros((len(tgts), T, V))
    routers = []
    for b, t in enumerate(tgts):
        res = forward_logprobs(model, t, router)
        if router:
            res, rl = res
            routers.append(rl)
        lp[b, : len(t)] = res
    return lp, (np.concatenate(routers, axis=1) if router else None)


CONFIG_KEYS = ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
               "num_attention_heads", "n_head", "num_key_value_heads", "intermediate_size", "n_inner",
               "max_position_embeddings", "n_positions", "hidden_act", "activation_function", "rms_norm_eps",
               "layer_norm_epsilon", "rope_theta", "rope_scaling", "tie_word_embeddings", "attention_bias",
               "mlp_bias", "sliding_window", "use_sliding_window", "max_window_layers", "num_local_experts",
               "num_experts_per_tok", "router_jitter_noise", "scale_attn_weights",
               "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "bos_token_id", "eos_token_id",
               "pad_token_id", "head_dim")


def write_case(c, out_dir):
    case, sp, r = c["case"], c["sp"], c["r"]
    d = os.path.join(out_dir, case["name"])
    model32 = c["model32"]
    model32.generation_config = r["gc_greedy"]
    model32.save_pretrained(d, safe_serialization=True)
    model = c["model"]
    prompts, tgts = c["prompts"], c["tgts"]
    write_ids(os.path.join(d, "prompts.txt"), prompts)
    g = ids_of(r["greedy"], prompts, sp)
    write_ids(os.path.join(d, "greedy.txt"), [x for x, _ in g])
    write_ids(os.path.join(d, "beam4.txt"), [x for x, _ in ids_of(r["beam4"], prompts, sp)])
    nb = hyps_record(model, prompts, r["nbest"], sp)
    with open(os.path.join(d, "beam4_nbest.txt"), "w") as f:
        for h in nb:
            f.write(f"{h['prompt']}\t{h['transformers_score']!r}\t{' '.join(map(str, h['ids']))}\n")
    write_ids(os.path.join(d, "tgt.txt"), tgts)
    router = case["family"] == "mixtral"
    lp, rl = teacher_forced(model, tgts, router)
    np.save(os.path.join(d, "logprobs.npy"), np.ascontiguousarray(lp))
    if router:
        np.save(os.path.join(d, "router_logits.npy"), np.ascontiguousarray(rl))
    greedy_rec = hyps_record(model, prompts, r["greedy"], sp)
    for h, m in zip(greedy_rec, c["margins"]):
        h["margins"] = m
        h["min_margin"] = min(m) if m else None
    beam_rec = hyps_record(model, prompts, r["beam4"], sp)
    cfg = c["cfg"]
    lp32, _ = teacher_forced(model32, tgts)
    exact = stored_float64(model32)
    rope_diff = None
    if exact_float64(exact):
        with float64_softmax():
            lp_exact, rl_exact = teacher_forced(exact, tgts, router)
        np.save(os.path.join(d, "logprobs_exact_f64.npy"), np.ascontiguousarray(lp_exact))
        if router:
            np.save(os.path.join(d, "router_logits_exact_f64.npy"), np.ascontiguousarray(rl_exact))
        rope_diff = float(np.abs(lp_exact - lp).max())
    ref = dict(
        case=case["name"], family=case["family"], model_class=type(model32).__name__,
        description=case["desc"], seed=c["seed"], versions=versions(),
        config={k: getattr(cfg, k) for k in CONFIG_KEYS if hasattr(cfg, k)},
        special_ids={k: v for k, v in sp.items() if k != "ordinary"},
        ordinary_ids=sp["ordinary"],
        stored_tensors=tensor_listing(d),
        generate=dict(
            call="model.generate(input_ids [1, L], attention_mask ones, generation_config=GC, "
                 "output_scores=True, return_dict_in_generate=True), each prompt of prompts.txt alone, "
                 "float64 model",
            greedy=gc_record(r["gc_greedy"]), beam4=gc_record(r["gc_beam4"]),
            beam4_nbest=gc_record(r["gc_nbest"]),
            max_length_semantics=f"max_new_tokens {MAX_NEW_TOKENS}: at most {MAX_NEW_TOKENS} tokens after "
                                 "the prompt, the eos included (max_length = prompt length + "
                                 f"{MAX_NEW_TOKENS})"),
        stripping="greedy.txt / beam4.txt / beam4_nbest.txt: generate()'s row minus the prompt and minus "
                  "the first eos and everything after it; an empty line: eos came first",
        greedy=greedy_rec, beam4=beam_rec, beam4_nbest=nb,
        greedy_min_margin=c["min_margin"],
        teacher_forced=dict(prompt_lengths=[len(p) for p in prompts], tgt_lengths=[len(t) for t in tgts],
                            logprobs="float64 [B, T, V] log_softmax(logits) of each tgt.txt line alone, "
                                     "row t predicts token t + 1, 0 past each length",
                            float32_vs_float64_max_abs_diff=float(np.abs(lp32 - lp).max()),
                            exact_float64_max_abs_diff=rope_diff,
                            exact_float64_note=None if rope_diff is None else (
                                "transformers 4.46 computes parts of a float64 Llama-family model in "
                                "float32: the rotary tables (inv_freq, angles, cos/sin), RMSNorm "
                                "(hidden_states.to(float32)), the attention softmax (dtype=float32), "
                                "Mixtral's routing softmax (dtype=torch.float); logprobs.npy is that "
                                "computation. logprobs_exact_f64.npy (and router_logits_exact_f64.npy) "
                                "is the same pass with all of them in float64; exact_float64_max_abs_diff "
                                "is its largest difference from logprobs.npy")),
    )
    if router:
        ref["router_logits"] = dict(
            file="router_logits.npy", shape=list(rl.shape),
            layout="float64 [layers, tokens, experts]: the gate's logits (before softmax) of each layer "
                   "for the tokens of tgt.txt packed line after line (line 0's tokens, then line 1's, "
                   "...), no padding; from the same teacher-forced float64 pass as logprobs.npy",
            routing="softmax over all experts (transformers computes it in float32, dtype=torch.float, "
                    "even in a float64 model), top-2, the two probabilities divided by their sum")
    return d, ref


def exact_float64(model):
    """Makes a float64 model really float64: transformers 4.46 computes, even in a float64 model,
    the rotary tables (inv_freq, angles, cos/sin), RMSNorm (`hidden_states.to(torch.float32)`), the
    attention softmax (`dtype=torch.float32`) and Mixtral's routing softmax (`dtype=torch.float`) in
    float32. Rotary and RMSNorm forwards are replaced here; the softmaxes need `float64_softmax()`
    around the call. Returns False where nothing needed replacing (gpt2)."""
    cfg = model.config
    rot = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    if not rot and not norms:
        return False
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / (float(cfg.rope_theta) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rs = getattr(cfg, "rope_scaling", None)
    if rs:
        assert rs.get("rope_type", rs.get("type")) == "linear", rs
        inv = inv / float(rs["factor"])

    def rope_forward(x, position_ids=None, seq_len=None):
        if seq_len is not None:
            # Mixtral 4.46 (old-style cache): the table of positions 0 .. seq_len - 1, indexed later
            freqs = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv[None, :]
        else:
            freqs = position_ids[:, :, None].double() * inv[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    for m in rot:
        m.forward = rope_forward
    for m in norms:
        def norm_forward(h, m=m):
            return m.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + m.variance_epsilon))
        m.forward = norm_forward
    return True


class float64_softmax:
    """torch.nn.functional.softmax with a float32/float `dtype` argument ignored for float64 input."""

    def __enter__(self):
        self.orig = torch.nn.functional.softmax
        orig = self.orig

        def softmax(x, dim=None, _stacklevel=3, dtype=None):
            if x.dtype == torch.float64 and dtype in (torch.float32,):
                dtype = None
            return orig(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

        torch.nn.functional.softmax = softmax

    def __exit__(self, *exc):
        torch.nn.functional.softmax = self.orig


def versions():
    return dict(transformers=transformers.__version__, torch=torch.__version__.split("+")[0],
                ctranslate2=getattr(ctranslate2, "__version__", None),
                safetensors=safetensors.__version__, numpy=np.__version__,
                python=".".join(map(str, sys.version_info[:3])))


def reload_checks(c, d, ref):
    """A fresh from_pretrained of the written directory gives the same ids and log-probs."""
    case, sp = c["case"], c["sp"]
    Model = FAMILY[case["family"]][1]
    out = {}
    m = Model.from_pretrained(d, attn_implementation="eager").double().eval()
    gc = GenerationConfig.from_pretrained(d)
    prompts = c["prompts"]
    out["reload_greedy_equal"] = ids_of([generate(m, p, gc) for p in prompts], prompts, sp) == \
        ids_of(c["r"]["greedy"], prompts, sp)
    lp, _ = teacher_forced(m, c["tgts"])
    out["reload_logprobs_maxdiff"] = float(np.abs(lp - np.load(os.path.join(d, "logprobs.npy"))).max())
    out["float32_logprobs_maxdiff"] = ref["teacher_forced"]["float32_vs_float64_max_abs_diff"]
    out["nbest_top_equals_beam4"] = [h["ids"] for h in ref["beam4_nbest"][::2]] == [h["ids"] for h in ref["beam4"]]
    out["beam4_score_recomputed_maxdiff"] = max(
        abs(h["transformers_score"] - h["recomputed_score"]) for h in ref["beam4_nbest"])
    # KV-cached generation equals the uncached teacher-forced argmax
    ok = True
    for h, p in zip(ref["greedy"], prompts):
        full = h["ids"] + ([sp["eos"]] if h["finished"] else [])
        if full:
            lpx = forward_logprobs(m, (p + full)[:-1])
            ok &= [int(np.argmax(lpx[len(p) - 1 + i])) for i in range(len(full))] == full
    out["greedy_equals_uncached_argmax"] = ok
    return out


# ---------------------------------------------------------------------------------------------
# CTranslate2 (optional)


def ct2_case(c, d, out_dir, ref):
    summary = {}
    if ctranslate2 is None:
        return {"skipped": "ctranslate2 not importable"}
    from ctranslate2.converters import TransformersConverter
    case, sp = c["case"], c["sp"]
    V = case["vocab"]
    tokens = ["<w%d>" % i for i in range(V)]

    class IdsOnlyConverter(TransformersConverter):
        """No tokenizer in these cases: a stand-in vocabulary <w0> ... <w{V-1}> (token = id), with the
        case's special tokens named as the loaders expect."""

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            ns = types.SimpleNamespace(
                bos_token=tokens[sp["bos"]] if sp["bos"] is not None else None,
                eos_token=tokens[sp["eos"]], unk_token=tokens[sp["unk"]] if sp["unk"] is not None else tokens[0],
                pad_token=None, bos_token_id=sp["bos"], eos_token_id=sp["eos"])
            ns.get_vocab = lambda: {t: i for i, t in enumerate(tokens)}
            ns.convert_ids_to_tokens = lambda i: tokens[i]
            ns.__len__ = lambda: V
            return ns

    for quant in case["ct2"]:
        name = f"{case['name']}_ct2_{quant}"
        target = os.path.join(out_dir, name)
        try:
            IdsOnlyConverter(d).convert(target, quantization=quant, force=True)
        except Exception as e:  # noqa: BLE001 - recorded and reported
            summary[name] = f"converter failed: {type(e).__name__}: {e}"
            shutil.rmtree(target, ignore_errors=True)
            continue
        with open(os.path.join(target, "vocabulary.json")) as f:
            vocab = json.load(f)
        index = {t: i for i, t in enumerate(vocab)}
        gen = ctranslate2.Generator(target, device="cpu", intra_threads=1, inter_threads=1)
        rows, scores = [], []
        for p in c["prompts"]:
            res = gen.generate_batch([[vocab[i] for i in p]], max_length=MAX_NEW_TOKENS, sampling_topk=1,
                                     beam_size=1, include_prompt_in_result=False, return_scores=True,
                                     min_length=0, end_token=vocab[sp["eos"]])[0]
            rows.append([index[t] for t in res.sequences[0]])
            scores.append(float(res.scores[0]) if res.scores else None)
        write_ids(os.path.join(target, "ct2_greedy.txt"), rows)
        rows_f32_compute = None
        if quant != "float32":
            # the same quantised weights, dequantised and computed in float32
            g32 = ctranslate2.Generator(target, device="cpu", compute_type="float32", intra_threads=1,
                                        inter_threads=1)
            rows_f32_compute = [
                [index[t] for t in g32.generate_batch([[vocab[i] for i in p]], max_length=MAX_NEW_TOKENS,
                                                      sampling_topk=1, beam_size=1,
                                                      include_prompt_in_result=False, min_length=0,
                                                      end_token=vocab[sp["eos"]])[0].sequences[0]]
                for p in c["prompts"]]
            del g32
        # teacher-forced log-probs of transformers' greedy outputs (their eos included)
        tf = [p + h["ids"] + ([sp["eos"]] if h["finished"] else []) for p, h in zip(c["prompts"], ref["greedy"])]
        scored = gen.score_batch([[vocab[i] for i in t] for t in tf])
        diffs = []
        for p, h, s in zip(c["prompts"], ref["greedy"], scored):
            lps = list(s.log_probs)[len(p) - 1:]
            hf = h["token_logprobs"]
            diffs.append(max((abs(a - b) for a, b in zip(lps, hf)), default=0.0))
        hf_rows = [h["ids"] for h in ref["greedy"]]
        rec = dict(case=case["name"], quantization=quant, compute_type=gen.compute_type, versions=versions(),
                   vocabulary="vocabulary.json: <wK> is id K (stand-in tokens; the converter needs a "
                              "tokenizer, the case has none)",
                   options=dict(max_length=MAX_NEW_TOKENS, sampling_topk=1, beam_size=1,
                                include_prompt_in_result=False, min_length=0, end_token=vocab[sp["eos"]]),
                   greedy=rows, greedy_scores=scores,
                   greedy_equals_transformers=rows == hf_rows,
                   score_batch_vs_transformers_float64_max_abs_diff=max(diffs),
                   greedy_compute_type_float32=rows_f32_compute,
                   greedy_compute_type_float32_equals_transformers=(
                       None if rows_f32_compute is None else rows_f32_compute == hf_rows))
        write_json(os.path.join(target, "ct2_reference.json"), rec)
        summary[name] = dict(greedy_equal=rec["greedy_equals_transformers"],
                             greedy_equal_float32_compute=rec["greedy_compute_type_float32_equals_transformers"],
                             score_maxdiff=round(max(diffs), 7), compute_type=gen.compute_type)
        del gen
    return summary


# ---------------------------------------------------------------------------------------------



def tree_digest(path, skip=("README.md",)):
    h = hashlib.sha256()
    for r, ds, fs in sorted(os.walk(path)):
        ds.sort()
        for f in sorted(fs):
            p = os.path.join(r, f)
            rel = os.path.relpath(p, path)
            if rel in skip or rel.split(os.sep)[0] == "llama_text":  # make_llama_text_fixture.py's
                continue
            h.update(rel.encode() + b"\0")
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def generate_all(out_dir, only):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if os.path.isdir(out_dir):
        for entry in os.listdir(out_dir):       # keep README.md and llama_text/ (make_llama_text_fixture.py's)
            if entry in ("README.md", "llama_text"):
                continue
            p = os.path.join(out_dir, entry)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    manifest = dict(generator="tools/hf/make_lm_fixtures.py", versions=versions(),
                    min_margin_required=MIN_MARGIN, max_new_tokens=MAX_NEW_TOKENS, cases=[])
    for i, case in enumerate(CASES):
        if only and case["name"] not in only:
            continue
        c = build_case(case, i)
        d, ref = write_case(c, out_dir)
        checks = reload_checks(c, d, ref)
        ct2 = ct2_case(c, d, out_dir, ref) if case["ct2"] else {}
        ref["checks"] = checks
        ref["ct2"] = ct2
        write_json(os.path.join(d, "reference.json"), ref)
        print(f"{case['name']} [seed {c['seed']}, V={case['vocab']}, {dir_size(d) / 1024:.1f} KiB] greedy min "
              f"margin {c['min_margin']:.4f}; lengths {[len(h['ids']) for h in ref['greedy']]} finished "
              f"{[h['finished'] for h in ref['greedy']]}", flush=True)
        for k, v in list(checks.items()) + list(ct2.items()):
            print(f"    {k:34s} {v}", flush=True)
        manifest["cases"].append(dict(
            name=case["name"], family=case["family"], description=case["desc"], seed=c["seed"],
            greedy_min_margin=c["min_margin"],
            float32_vs_float64_logprobs=ref["teacher_forced"]["float32_vs_float64_max_abs_diff"],
            greedy_lengths=[len(h["ids"]) for h in ref["greedy"]],
            greedy_finished=[h["finished"] for h in ref["greedy"]],
            folders=[case["name"]] + [k for k, v in ct2.items() if isinstance(v, dict)]))
    write_json(os.path.join(out_dir, "manifest.json"), manifest)
    print(f"total {dir_size(out_dir) / 1024:.1f} KiB in {out_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/lm", help="output folder (replaced, README.md kept)")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--check-determinism", action="store_true",
                    help="also generate into a temporary folder in a fresh process and compare bytes")
    args = ap.parse_args()
    generate_all(args.out, args.only)
    if args.check_determinism:
        with tempfile.TemporaryDirectory() as t:
            cmd = [sys.executable, os.path.abspath(__file__), "--out", t]
            if args.only:
                cmd += ["--only"] + args.only
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            if tree_digest(args.out) != tree_digest(t):
                filecmp.dircmp(args.out, t).report_full_closure()
                raise SystemExit("NOT deterministic: the two runs differ")
            print("deterministic: a second run wrote the same bytes")


if __name__ == "__main__":
    main()
