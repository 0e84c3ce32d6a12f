"""Llama text fixture (tests/fixtures/lm/llama_text): a tiny random Llama model with a SentencePiece
`tokenizer.model` as Llama ships it (BPE, byte fallback, digits split, no normalisation), saved by
transformers' LlamaTokenizer, and what transformers computes with them, so that eigenformer's text
path for the Llama family (include/eigenformer/text/tokenizer.hpp, `eigenformer translate`) is
checked without Python.

    scripts/hf_env
    build/hf-venv/bin/python tools/hf/make_llama_text_fixture.py --out tests/fixtures/lm/llama_text

Writes, besides save_pretrained()'s files (config.json, generation_config.json, model.safetensors,
tokenizer.model, tokenizer_config.json with legacy false, special_tokens_map.json):
- text.txt: the texts (ASCII, leading and repeated spaces, digits, accents and characters outside the
  SentencePiece model: byte fallback, a literal "</s>" and "<s>", an empty line);
- ids.txt / legacy_ids.txt: tokenizer(text).input_ids with legacy false (as saved) / true;
- decode_ids.txt, decode.txt: id lines (specials mixed in, an id past the pieces) and
  batch_decode(skip_special_tokens=True) of them;
- prompts.txt, greedy_ids.txt, greedy.txt: a few text prompts, the new ids transformers' greedy
  generate() gives (float64 model on the stored float32 weights, MAX_NEW new tokens, eos ends a line)
  and their text as tokenizer.decode(new ids, skip_special_tokens=True) prints it.
A seed is kept only if every greedy decision has a top-1 minus top-2 log-probability margin of at
least MIN_MARGIN, so float32 engines must agree, and no continuation holds a line break. Deterministic (seeded; SentencePiece trained with one
thread).
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_common import stored_float64, stub_fsdp, write_ids  # noqa: E402

stub_fsdp()

import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402  (0.2.0, scripts/hf_env)
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()

VOCAB = 320          # 3 specials + 256 byte pieces + 61 merges and characters
MAX_NEW = 12
MIN_MARGIN = 0.02
WORDS = ("the a red blue green cat dog bird house river snow tree sees runs near with old two "
         "three small big fish boat hill road town sky sun rain 2024 17 room").split()
TEXTS = [
    "the red cat sees a bird",
    "two dogs run near the old house",
    " a leading space",
    "double  spaces   here",
    "digits 12345 and 2024",
    "café au lait, naïve",
    "emoji 🙂 and 漢字",
    "stop </s> inside",
    "<s>starts with bos",
    "",
]
PROMPTS = ["the red cat", "a small boat near the", "two birds", "snow on the hill and"]


def corpus(rng, n=3000):
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 10))) for _ in range(n)]


def train_sentencepiece(path, rng):
    with tempfile.TemporaryDirectory() as tmp:
        txt = os.path.join(tmp, "corpus.txt")
        with open(txt, "w") as f:
            f.write("\n".join(corpus(rng)) + "\n")
        spm.SentencePieceTrainer.train(
            input=txt, model_prefix=os.path.join(tmp, "tok"), model_type="bpe", vocab_size=VOCAB,
            byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1,
            minloglevel=2)
        shutil.copy(os.path.join(tmp, "tok.model"), path)


def build_model(seed):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None, torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = rng.standard_normal(tuple(p.shape))
            if name.endswith("norm.weight"):
                v = 1.0 + 0.1 * n
            elif name == "model.embed_tokens.weight":
                v = n
            elif name == "lm_head.weight":
                v = 1.5 * n
                v[:2] *= 0.05  # unk and bos: rarely the best, as in a trained model
            else:
                v = n / np.sqrt(p.shape[1])
            p.copy_(torch.from_numpy(np.asarray(v, dtype=np.float32)))
    return model


def greedy(model64, prompt_ids):
    gc = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, max_new_tokens=MAX_NEW, do_sample=False,
                          num_beams=1)
    ids = torch.tensor([prompt_ids])
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            out = model64.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc,
                                   output_scores=True, return_dict_in_generate=True)
    finally:
        torch.set_default_dtype(old)
    gen = [int(t) for t in out.sequences[0][len(prompt_ids):]]
    margins = []
    for s in out.scores:
        lp = torch.log_softmax(s[0].double(), -1)
        top = torch.topk(lp, 2).values
        margins.append(float(top[0] - top[1]))
    if 2 in gen:
        gen = gen[: gen.index(2)]
    return gen, min(margins)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(20261202)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        sp_path = os.path.join(tmp, "tokenizer.model")
        train_sentencepiece(sp_path, rng)
        tok = LlamaTokenizer(vocab_file=sp_path, legacy=False)
        tok.save_pretrained(args.out)
    for name in ("tokenizer.json",):  # fast-tokenizer files eigenformer does not read
        p = os.path.join(args.out, name)
        if os.path.exists(p):
            os.remove(p)
    tok = LlamaTokenizer.from_pretrained(args.out)
    legacy = LlamaTokenizer.from_pretrained(args.out, legacy=True)
    assert not tok.legacy and legacy.legacy

    with open(os.path.join(args.out, "text.txt"), "w") as f:
        f.write("".join(t + "\n" for t in TEXTS))
    ids = [tok(t)["input_ids"] for t in TEXTS]
    write_ids(os.path.join(args.out, "ids.txt"), ids)
    write_ids(os.path.join(args.out, "legacy_ids.txt"), [legacy(t)["input_ids"] for t in TEXTS])
    dec = [row + [2] for row in ids[:7]] + [[1, 2, 0], [1, VOCAB - 1, 5, 2]]
    write_ids(os.path.join(args.out, "decode_ids.txt"), dec)
    with open(os.path.join(args.out, "decode.txt"), "w") as f:
        f.write("".join(s + "\n" for s in tok.batch_decode(dec, skip_special_tokens=True)))

    for seed in range(1, 200):
        model = build_model(seed)
        m64 = stored_float64(model)
        results = [greedy(m64, tok(p)["input_ids"]) for p in PROMPTS]
        worst = min(m for _, m in results)
        lengths = [len(g) for g, _ in results]
        texts = [tok.decode(g, skip_special_tokens=True) for g, _ in results]
        one_line = not any(c in t for t in texts for c in "\r\n")  # the tool prints one line per prompt
        if worst >= MIN_MARGIN and max(lengths) == MAX_NEW and min(lengths) > 0 and one_line:
            break
    else:
        raise SystemExit("no seed gave clear greedy margins")
    model.save_pretrained(args.out, safe_serialization=True)
    with open(os.path.join(args.out, "prompts.txt"), "w") as f:
        f.write("".join(p + "\n" for p in PROMPTS))
    write_ids(os.path.join(args.out, "greedy_ids.txt"), [g for g, _ in results])
    with open(os.path.join(args.out, "greedy.txt"), "w") as f:
        f.write("".join(tok.decode(g, skip_special_tokens=True) + "\n" for g, _ in results))
    print("seed", seed, "worst margin", round(worst, 4), "lengths", lengths)
    for t, i in zip(TEXTS, ids):
        print(repr(t), tok.convert_ids_to_tokens(i))


if __name__ == "__main__":
    main()
