"""NLLB tokenizer fixture: transformers' NllbTokenizer on a small SentencePiece model, with what it
computes on a few sentences, so that eigenformer's tokenizer (include/eigenformer/text/tokenizer.hpp)
is checked against it without Python. No model: NLLB-200 checkpoints are `m2m_100` models, proven by
the m2m100 case; what NLLB changes is the tokenizer (fairseq ids over the SentencePiece model, 202
language codes such as `eng_Latn`, the source language first).

    scripts/hf_env
    build/hf-venv/bin/python tools/hf/make_nllb_tokenizer_fixture.py --out tests/fixtures/hf/nllb_tokenizer

Writes, besides tokenizer.save_pretrained()'s files (sentencepiece.bpe.model, tokenizer_config.json,
special_tokens_map.json): text_src.txt, and per language pair <src>-<tgt>_ids.txt (tokenizer(text)
input_ids, one line per sentence), legacy_ids.txt (legacy_behaviour=True: the code after </s>),
decode_ids.txt (id lines with special tokens and codes mixed in) and decode.txt (batch_decode with
skip_special_tokens=True). Deterministic: the SentencePiece model is the m2m100 case's.
"""
import argparse
import os
import shutil
import tempfile

from transformers import NllbTokenizer  # transformers 4.46.3 (scripts/hf_env)

TEXTS = ["the red cat sees a bird", "two dogs run", "an old house near the river with snow", ""]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    spm = os.path.join(here, "..", "..", "tests", "fixtures", "hf", "m2m100", "sentencepiece.bpe.model")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm, os.path.join(tmp, "sentencepiece.bpe.model"))
        tok = NllbTokenizer(vocab_file=os.path.join(tmp, "sentencepiece.bpe.model"), src_lang="eng_Latn",
                            tgt_lang="deu_Latn")
        tok.save_pretrained(args.out)
        for name in ("tokenizer.json",):  # fast-tokenizer files eigenformer does not read
            p = os.path.join(args.out, name)
            if os.path.exists(p):
                os.remove(p)
    tok = NllbTokenizer.from_pretrained(args.out)
    with open(os.path.join(args.out, "text_src.txt"), "w") as f:
        f.write("\n".join(TEXTS) + "\n")
    for src in ("eng_Latn", "fra_Latn"):
        tok.src_lang = src
        ids = [tok(t)["input_ids"] for t in TEXTS]
        with open(os.path.join(args.out, f"{src}_ids.txt"), "w") as f:
            f.write("".join(" ".join(map(str, x)) + "\n" for x in ids))
    legacy = NllbTokenizer.from_pretrained(args.out, legacy_behaviour=True, src_lang="eng_Latn")
    with open(os.path.join(args.out, "legacy_ids.txt"), "w") as f:
        f.write("".join(" ".join(map(str, legacy(t)["input_ids"])) + "\n" for t in TEXTS))
    deu = tok.convert_tokens_to_ids("deu_Latn")
    tok.src_lang = "eng_Latn"
    lines = []
    for t in TEXTS[:3]:
        body = tok(t)["input_ids"][1:-1]  # the pieces alone
        lines.append([deu] + body + [tok.eos_token_id, tok.pad_token_id])
    lines.append([deu, tok.unk_token_id, 2])
    with open(os.path.join(args.out, "decode_ids.txt"), "w") as f:
        f.write("".join(" ".join(map(str, x)) + "\n" for x in lines))
    with open(os.path.join(args.out, "decode.txt"), "w") as f:
        f.write("".join(s + "\n" for s in tok.batch_decode(lines, skip_special_tokens=True)))
    print("deu_Latn", deu, "len", len(tok), "sp", tok.sp_model.get_piece_size())


if __name__ == "__main__":
    main()
