"""Reads tests/fixtures/hf back with nothing but the committed files and the reference libraries,
and checks that they reproduce what the files say (an independent check of make_hf_fixtures.py):

    build/hf-venv/bin/python tools/hf/check_hf_fixtures.py [--dir tests/fixtures/hf]

Per Hugging Face case: from_pretrained(dir) in float64; greedy / beam 4 / n-best / early-stopping
beam with the generation settings of reference.json equal greedy.txt, beam4.txt, beam4_nbest.txt,
beam4_early_stopping.txt, greedy_raw.txt; teacher-forced log-probs equal logprobs.npy and
encoder_out.npy; the tokenizer (AutoTokenizer, slow) gives text_src_ids.txt and decodes
text_greedy.txt. Per CTranslate2 folder: translate_batch gives ct2_greedy.txt and ct2_beam4.txt.
"""
import sys

from hf_common import stub_fsdp

stub_fsdp()  # before transformers: Debian's torch 1.13 on Python 3.11 (hf_common.py)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")


def ids(path):
    with open(path) as f:
        return [[int(t) for t in line.split()] for line in f.read().splitlines()]


def strip(row, start, eos):
    assert row[0] == start
    g = row[1:]
    return g[: g.index(eos)] if eos in g else g


def pad(seqs, value):
    L = max(len(s) for s in seqs)
    x = torch.full((len(seqs), L), value, dtype=torch.long)
    m = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
        m[i, : len(s)] = 1
    return x, m


def check_hf(d, failures):
    ref = json.load(open(os.path.join(d, "reference.json")))
    model = AutoModelForSeq2SeqLM.from_pretrained(d, attn_implementation="eager").double().eval()
    sp = ref["special_ids"]
    src = ids(os.path.join(d, "src.txt"))
    x, m = pad(src, sp["pad"])

    def gen(key, inputs=(x, m)):
        cfg = {k: v for k, v in ref["generate"][key].items() if not k.startswith("_")}
        cfg.pop("max_length", None)
        gc = GenerationConfig(**cfg)
        with torch.no_grad():
            return model.generate(input_ids=inputs[0], attention_mask=inputs[1], generation_config=gc,
                                  output_scores=True, return_dict_in_generate=True)

    def expect(name, got, want):
        if got != want:
            failures.append(f"{d}: {name}: got {got}, file has {want}")

    g = gen("greedy")
    expect("greedy_raw.txt", g.sequences.tolist(), ids(os.path.join(d, "greedy_raw.txt")))
    expect("greedy.txt", [strip(r, sp["decoder_start"], sp["eos"]) for r in g.sequences.tolist()],
           ids(os.path.join(d, "greedy.txt")))
    b = gen("beam4")
    expect("beam4.txt", [strip(r, sp["decoder_start"], sp["eos"]) for r in b.sequences.tolist()],
           ids(os.path.join(d, "beam4.txt")))
    e = gen("beam4_early_stopping")
    expect("beam4_early_stopping.txt", [strip(r, sp["decoder_start"], sp["eos"]) for r in e.sequences.tolist()],
           ids(os.path.join(d, "beam4_early_stopping.txt")))
    n = gen("beam4_nbest")
    with open(os.path.join(d, "beam4_nbest.txt")) as f:
        lines = [line.split("\t") for line in f.read().splitlines()]
    expect("beam4_nbest.txt ids", [strip(r, sp["decoder_start"], sp["eos"]) for r in n.sequences.tolist()],
           [[int(t) for t in ln[2].split()] for ln in lines])
    got_scores = [float(s) for s in n.sequences_scores]
    if max(abs(a - float(ln[1])) for a, ln in zip(got_scores, lines)) > 1e-6:
        failures.append(f"{d}: beam4_nbest.txt scores differ")
    # teacher forcing
    tgt = ids(os.path.join(d, "tgt.txt"))
    t, tm = pad(tgt, sp["pad"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)          # see make_hf_fixtures.model_default_dtype
    try:
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=m, decoder_input_ids=t, decoder_attention_mask=tm).logits
            enc = model.get_encoder()(input_ids=x, attention_mask=m).last_hidden_state
    finally:
        torch.set_default_dtype(old)
    lp = torch.log_softmax(logits, -1).numpy()
    lp[tm.numpy() == 0] = 0
    enc = enc.numpy()
    enc[m.numpy() == 0] = 0
    for name, a in (("logprobs.npy", lp), ("encoder_out.npy", enc)):
        want = np.load(os.path.join(d, name))
        if want.shape != a.shape or np.abs(want - a).max() > 1e-12:
            failures.append(f"{d}: {name} differs")
    # text
    if os.path.exists(os.path.join(d, "text_src.txt")):
        tok = AutoTokenizer.from_pretrained(d, use_fast=False)
        texts = open(os.path.join(d, "text_src.txt")).read().splitlines()
        got = [tok(s)["input_ids"] for s in texts]
        expect("text_src_ids.txt", got, ids(os.path.join(d, "text_src_ids.txt")))
        tg = gen("greedy", pad(got, sp["pad"]))
        expect("text_greedy_ids.txt", [strip(r, sp["decoder_start"], sp["eos"]) for r in tg.sequences.tolist()],
               ids(os.path.join(d, "text_greedy_ids.txt")))
        expect("text_greedy.txt", tok.batch_decode(tg.sequences, skip_special_tokens=True),
               open(os.path.join(d, "text_greedy.txt")).read().split("\n")[:-1])
    return src


def check_ct2(d, src, failures):
    import ctranslate2
    ref = json.load(open(os.path.join(d, "ct2_reference.json")))
    vocab = json.load(open(os.path.join(d, "shared_vocabulary.json")))
    index = {t: i for i, t in enumerate(vocab)}
    tr = ctranslate2.Translator(d, device="cpu", intra_threads=1)
    prefix = ref["target_prefix"]
    for opts, fname in (("options_greedy", "ct2_greedy.txt"), ("options_beam4", "ct2_beam4.txt")):
        res = tr.translate_batch([[vocab[i] for i in s] for s in src],
                                 target_prefix=[prefix] * len(src) if prefix else None, **ref[opts])
        got = [[index[t] for t in r.hypotheses[0]] for r in res]
        if got != ids(os.path.join(d, fname)):
            failures.append(f"{d}: {fname} differs: {got}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="tests/fixtures/hf")
    args = ap.parse_args()
    torch.set_num_threads(1)
    manifest = json.load(open(os.path.join(args.dir, "manifest.json")))
    failures = []
    for case in manifest["cases"]:
        src = check_hf(os.path.join(args.dir, case["name"]), failures)
        for folder in case["folders"][1:]:
            p = os.path.join(args.dir, folder)
            if "_ct2_" in folder:
                check_ct2(p, src, failures)
            else:                                   # the sharded copy: same greedy ids
                model = AutoModelForSeq2SeqLM.from_pretrained(p, attn_implementation="eager").double().eval()
                ref = json.load(open(os.path.join(args.dir, case["name"], "reference.json")))
                sp = ref["special_ids"]
                x, m = pad(src, sp["pad"])
                gc = GenerationConfig.from_pretrained(p)
                with torch.no_grad():
                    out = model.generate(input_ids=x, attention_mask=m, generation_config=gc)
                if [strip(r, sp["decoder_start"], sp["eos"]) for r in out.tolist()] != ids(
                        os.path.join(args.dir, case["name"], "greedy.txt")):
                    failures.append(f"{p}: greedy differs")
        print(f"{case['name']}: checked {', '.join(case['folders'])}")
    for f in failures:
        print("FAIL", f)
    print("all fixtures reproduce" if not failures else f"{len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
