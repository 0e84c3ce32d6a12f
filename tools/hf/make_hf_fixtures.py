"""Writes the Hugging Face / CTranslate2 fixtures (tests/fixtures/hf) that the C++ loaders of Hugging
Face `save_pretrained()` directories (marian, bart, mbart, m2m_100) and of CTranslate2 directories
converted from them are tested against, so that those tests need neither Python nor the network.

Run, from the repository root (scripts/hf_env creates the environment and prints the python):

    build/hf-venv/bin/python tools/hf/make_hf_fixtures.py --out tests/fixtures/hf

Seeded and deterministic: running it twice writes the same bytes (--check-determinism does it and
compares). The output folder is replaced. tests/fixtures/hf/README.md documents the layout; this
script writes every file of it except the README.

For each case the script builds a tiny model with transformers from a config, draws EVERY weight
from a seeded NumPy generator (LayerNorm weights and biases, every bias, final_logits_bias),
rounds it to float32 (the stored dtype), and runs the references in float64 on exactly the stored
weights. A draw is kept only if every greedy decision (ids and text sources) has a top-1 minus
top-2 log-probability margin of at least MIN_MARGIN, no output holds a token that no real
checkpoint would emit (pad, madeup words, <mask>, language tokens), at least one greedy output
ends with eos before the limit and at least one runs to the limit, at most one is empty, every
text output has 3 tokens or more, beam search differs from greedy on at least one source, the
greedy outputs hold at least MIN_DISTINCT distinct tokens, and float32 transformers gives the
same greedy and beam ids; otherwise the next seed is drawn.
"""
import sys
import types

from hf_common import dir_size, gc_record, stored_float64, stub_fsdp, write_ids, write_json

stub_fsdp()

import argparse  # noqa: E402
import filecmp  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ctranslate2  # noqa: E402
import safetensors  # noqa: E402
import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402
from ctranslate2.converters import TransformersConverter  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import (  # noqa: E402
    BartConfig, BartForConditionalGeneration, GenerationConfig, M2M100Config,
    M2M100ForConditionalGeneration, M2M100Tokenizer, MarianConfig, MarianMTModel, MarianTokenizer,
    MBartConfig, MBartForConditionalGeneration, MBartTokenizer)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
# MarianTokenizer asks for sacremoses (Moses punctuation normalisation); without it the source text
# goes to SentencePiece unchanged, which is what the fixtures record (their text has no punctuation)
warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")

MIN_MARGIN = 0.05          # top-1 minus top-2 log-probability at every greedy step, float64 reference
MAX_NEW_TOKENS = 20
MAX_ATTEMPTS = 500
MIN_DISTINCT = 8           # distinct tokens over the greedy outputs of the id sources
CT2_MAX_DECODING_LENGTH = MAX_NEW_TOKENS   # see ct2_options(): checked to give transformers' lengths

# ---------------------------------------------------------------------------------------------
# cases

LAYERS = dict(encoder_layers=2, decoder_layers=2)

CASES = [
    dict(name="marian", family="marian",
         desc="Marian: post-norm, swish, static sinusoidal positions (Marian layout, not stored), "
              "scale_embedding, shared + tied embeddings (model.shared), final_logits_bias, "
              "pad = decoder_start = last id, eos 0; MarianTokenizer (unigram spm)",
         config=dict(d_model=16, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                     activation_function="swish", scale_embedding=True,
                     share_encoder_decoder_embeddings=True),
         tokenizer="marian", src_lengths=[9, 3, 14, 6], tgt_lengths=[7, 1, 12, 4],
         ct2=["float32", "int8", "float16"]),
    dict(name="marian_unshared", family="marian",
         desc="Marian with share_encoder_decoder_embeddings=False: separate encoder and decoder "
              "embeddings, lm_head tied to the decoder embeddings; d_model 24, 2 heads (d_head 12), "
              "same tokenizer as marian",
         config=dict(d_model=24, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                     activation_function="swish", scale_embedding=True,
                     share_encoder_decoder_embeddings=False),
         tokenizer="marian", src_lengths=[5, 12, 8], tgt_lengths=[6, 9, 2],
         ct2=["float32"]),
    dict(name="bart", family="bart",
         desc="BART: post-norm, gelu, learned positions (offset 2), layernorm_embedding, no embedding "
              "scale, shared + tied embeddings, final_logits_bias, decoder_start = eos = 2, "
              "forced_bos_token_id 0 (<s>, as facebook/bart-large); ids only (byte-level BPE not "
              "built); also saved sharded (bart_sharded)",
         config=dict(d_model=16, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                     activation_function="gelu", scale_embedding=False, vocab_size=72),
         tokenizer=None, forced_bos=0, src_lengths=[10, 4, 15, 7], tgt_lengths=[8, 1, 13, 5],
         sharded=True, ct2=["float32", "int8"]),
    dict(name="bart_scaled", family="bart",
         desc="BART with scale_embedding=True, relu, d_model 32 / 4 heads, ffn 64, no forced BOS "
              "(decoder starts with eos 2 and generates freely); ids only",
         config=dict(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     activation_function="relu", scale_embedding=True, vocab_size=60),
         tokenizer=None, forced_bos=None, src_lengths=[6, 11, 3], tgt_lengths=[5, 10, 3],
         ct2=[]),
    dict(name="mbart", family="mbart",
         desc="mBART (cc25 / en-ro layout): pre-norm + final encoder/decoder layer_norm + "
              "layernorm_embedding, gelu, learned positions (offset 2), scale_embedding, shared + tied "
              "embeddings, final_logits_bias; source = pieces </s> en_XX; decoder_start = ro_RO "
              "(no forced BOS); MBartTokenizer (bpe spm, 25 language codes, <mask>)",
         config=dict(d_model=24, encoder_attention_heads=3, decoder_attention_heads=3,
                     encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                     activation_function="gelu", scale_embedding=True),
         tokenizer="mbart", src_lengths=[8, 13, 4, 10], tgt_lengths=[9, 3, 1, 11],
         ct2=["float32", "int8"]),
    dict(name="m2m100", family="m2m_100",
         desc="M2M100 (NLLB's architecture): pre-norm + final layer_norm, relu, sinusoidal positions "
              "counted from padding_idx + 1 (fairseq layout, not stored), scale_embedding, shared + "
              "tied embeddings, no final_logits_bias; source = __en__ pieces </s>; decoder_start = "
              "eos 2, forced_bos_token_id = __de__; M2M100Tokenizer (bpe spm, wmt21 language codes, "
              "2 madeup words: model vocab = len(tokenizer) + 2)",
         config=dict(d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     activation_function="relu", scale_embedding=True),
         tokenizer="m2m100", src_lengths=[7, 12, 3, 16], tgt_lengths=[10, 2, 6, 13],
         ct2=["float32", "int8", "float16"]),
]

FAMILY = {
    "marian": (MarianConfig, MarianMTModel),
    "bart": (BartConfig, BartForConditionalGeneration),
    "mbart": (MBartConfig, MBartForConditionalGeneration),
    "m2m_100": (M2M100Config, M2M100ForConditionalGeneration),
}

# ---------------------------------------------------------------------------------------------
# text and tokenizers

WORDS = ("the a one two three red blue green small big old new cat dog bird fish tree house river "
         "stone hill road sees likes has finds near under over and with fast slow sun moon day night "
         "rain snow sings runs").split()


def corpus(seed=7, n=400):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 10))
        out.append(" ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), k)))
    return out


TEXT_SOURCES = ["the red cat sees a bird", "two dogs run", "an old house near the river with snow"]


def train_spm(lines, model_type, vocab_size):
    """Serialized SentencePiece model: <unk> 0, <s> 1, </s> 2 (spm's defaults), identity
    normalisation (no NFKC table: small file, nothing for a C++ reader to normalise)."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type=model_type,
        vocab_size=vocab_size, character_coverage=1.0, normalization_rule_name="identity",
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=True)
    return buf.getvalue()


def spm_pieces(model_bytes):
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i))]



def make_tokenizer(kind, work):
    """Builds the family's slow tokenizer from a spm model trained here; returns (tokenizer, the
    model's vocabulary size, a description for reference.json)."""
    lines = corpus()
    d = os.path.join(work, "tok_" + kind)
    os.makedirs(d, exist_ok=True)
    if kind == "marian":
        model = train_spm(lines, "unigram", 60)
        # Marian/OPUS layout: </s> 0, <unk> 1, the pieces, <pad> last (pad = decoder start; CTranslate2
        # drops that last entry and starts the decoder from a zero embedding instead)
        vocab = {"</s>": 0, "<unk>": 1}
        for p in spm_pieces(model):
            vocab[p] = len(vocab)
        vocab["<pad>"] = len(vocab)
        for f in ("source.spm", "target.spm"):
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(model)
        write_json(os.path.join(d, "vocab.json"), vocab)
        tok = MarianTokenizer(os.path.join(d, "source.spm"), os.path.join(d, "target.spm"),
                              os.path.join(d, "vocab.json"), source_lang="en", target_lang="de")
        info = dict(tokenizer_class="MarianTokenizer", spm="unigram, 60 pieces, identity normalisation",
                    source_format="pieces </s>", eos=0, unk=1, pad=len(vocab) - 1)
        model_vocab = len(tok)
    elif kind == "m2m100":
        model = train_spm(lines, "bpe", 60)
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        for p in spm_pieces(model):
            vocab[p] = len(vocab)
        with open(os.path.join(d, "sentencepiece.bpe.model"), "wb") as fh:
            fh.write(model)
        write_json(os.path.join(d, "vocab.json"), vocab)
        # transformers 4.46 does not register the language tokens of a tokenizer built from files
        # (a chained `not in` in M2M100Tokenizer.__init__); checkpoints list them in
        # tokenizer_config.json, as the saved one will
        langs = ["__%s__" % c for c in ("en", "ha", "is", "ja", "cs", "ru", "zh", "de")]
        tok = M2M100Tokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "sentencepiece.bpe.model"),
                              src_lang="en", tgt_lang="de", language_codes="wmt21", num_madeup_words=2,
                              additional_special_tokens=langs)
        assert [tok.convert_tokens_to_ids(t) for t in langs] == list(range(len(vocab), len(vocab) + 8))
        assert len(tok) == len(vocab) + 8
        info = dict(tokenizer_class="M2M100Tokenizer", spm="bpe, 60 pieces, identity normalisation",
                    source_format="__en__ pieces </s>", language_codes="wmt21",
                    lang_token_ids={t: tok.convert_tokens_to_ids(t) for t in tok.additional_special_tokens},
                    num_madeup_words=2)
        model_vocab = len(tok) + 2
    elif kind == "mbart":
        model = train_spm(lines, "bpe", 64)
        with open(os.path.join(d, "sentencepiece.bpe.model"), "wb") as fh:
            fh.write(model)
        tok = MBartTokenizer(os.path.join(d, "sentencepiece.bpe.model"), src_lang="en_XX", tgt_lang="ro_RO")
        info = dict(tokenizer_class="MBartTokenizer", spm="bpe, 64 pieces, identity normalisation",
                    source_format="pieces </s> en_XX",
                    fairseq_layout="<s> 0, <pad> 1, </s> 2, <unk> 3, spm piece i (i >= 3) -> id i + 1, "
                                   "25 language codes from len(spm) + 1, <mask> last",
                    lang_code_to_id=dict(tok.lang_code_to_id), mask=tok.mask_token_id)
        model_vocab = len(tok)
    else:
        raise ValueError(kind)
    info["len_tokenizer"] = len(tok)
    return tok, model_vocab, info


def fake_tokenizer(vocab_size):
    """CTranslate2's converter reads the vocabulary from a tokenizer; the ids-only BART cases get this
    stand-in: <s> <pad> </s> <unk> at 0-3, then w4 ... w{V-1}."""
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + ["w%d" % i for i in range(4, vocab_size)]
    ns = types.SimpleNamespace(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    ns.get_vocab = lambda: {t: i for i, t in enumerate(tokens)}
    ns.convert_ids_to_tokens = lambda i: tokens[i]
    return ns


class IdsOnlyConverter(TransformersConverter):
    def __init__(self, path, vocab_size, **kw):
        super().__init__(path, **kw)
        self._vocab_size = vocab_size

    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
        return fake_tokenizer(self._vocab_size)


# ---------------------------------------------------------------------------------------------
# models


def special_ids(case, cfg, tok):
    fam = case["family"]
    V = cfg["vocab_size"]
    if fam == "marian":
        s = dict(eos=0, unk=1, pad=V - 1, bos=None, decoder_start=V - 1, forced_bos=None)
        ordinary = list(range(2, V - 1))
        src_prefix, src_suffix = [], [0]
    elif fam == "bart":
        s = dict(bos=0, pad=1, eos=2, unk=3, decoder_start=2, forced_bos=case.get("forced_bos"))
        ordinary = list(range(4, V))
        src_prefix, src_suffix = [0], [2]
    elif fam == "mbart":
        ro, en = tok.lang_code_to_id["ro_RO"], tok.lang_code_to_id["en_XX"]
        s = dict(bos=0, pad=1, eos=2, unk=3, decoder_start=ro, forced_bos=None)
        ordinary = list(range(4, len(tok.sp_model) + 1))
        src_prefix, src_suffix = [], [2, en]
    elif fam == "m2m_100":
        de, en = tok.get_lang_id("de"), tok.get_lang_id("en")
        s = dict(bos=0, pad=1, eos=2, unk=3, decoder_start=2, forced_bos=de)
        ordinary = list(range(4, tok.encoder_size))
        src_prefix, src_suffix = [en], [2]
    s["ordinary"] = ordinary
    s["src_prefix"], s["src_suffix"] = src_prefix, src_suffix
    # ids a translation does not emit freely: pad, M2M100's madeup words, mBART's <mask>, the
    # language tokens (a forced one excepted); their embedding rows are drawn short (logits ~0)
    s["never"] = [s["pad"]]
    if fam == "m2m_100":
        s["never"] += list(range(len(tok), V)) + [tok.convert_tokens_to_ids(t) for t in tok.additional_special_tokens]
    if fam == "mbart":
        s["never"] += [tok.mask_token_id] + sorted(tok.lang_code_to_id.values())
    s["rare"] = s["never"] + [s["unk"]]
    return s


def build_config(case, vocab_size, sp):
    Config = FAMILY[case["family"]][0]
    kw = dict(LAYERS)
    kw.update(case["config"])
    kw.update(vocab_size=vocab_size, pad_token_id=sp["pad"], eos_token_id=sp["eos"],
              decoder_start_token_id=sp["decoder_start"], forced_eos_token_id=None,
              forced_bos_token_id=None, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
              encoder_layerdrop=0.0, decoder_layerdrop=0.0, attn_implementation="eager")
    if sp["bos"] is not None:
        kw["bos_token_id"] = sp["bos"]
    if case["family"] == "mbart":
        kw["tokenizer_class"] = "MBartTokenizer"
    # legacy keys of the fairseq-converted checkpoints (facebook/bart-large, facebook/mbart-large-cc25
    # carry them); transformers ignores them, CTranslate2's BART/mBART converter reads them
    if case["family"] == "bart":
        kw.update(normalize_before=False, add_final_layer_norm=False, normalize_embedding=True)
    if case["family"] == "mbart":
        kw.update(normalize_before=True, add_final_layer_norm=True, normalize_embedding=True)
    return Config(**kw)


# weight scales: with transformers' own initialisation (std 0.02) every logit is ~0 and greedy
# decisions are coin flips; with plain unit-variance weights a tied-embedding decoder mostly repeats
# its input token. These scales give peaked but varied outputs that depend on the source.
SCALE = dict(
    input_std=1.0,        # token embeddings (times the embedding scale, if any) ~ N(0, input_std^2)
    equal_norm_rows=True,  # every embedding row the same norm: no token wins by the size of its row
    signed_output_norm=True,
    center_output=True,
    logit_gain=6.0,       # mean weight of the decoder's last LayerNorm: logits ~ N(0, logit_gain^2)
    # sharper attention (q, k) and moderate residual branches keep the decoder states of different
    # steps apart (random attention averages everything into one vector: every step emits one
    # token); sharper still would amplify float32 rounding (and int8 quantisation) beyond 1e-5
    gains={"q_proj": 1.5, "k_proj": 1.5, "v_proj": 1.0, "out_proj": 0.7, "fc1": 1.4, "fc2": 0.7},
    cross_out_proj=2.0,   # decoder encoder_attn.out_proj: the source weighs in every step
    positions=0.5, ln_weight_std=0.25, ln_bias_std=0.1, bias_std=0.1,
    final_logits_bias_std=0.5,
    eos_bonus=5.5,        # added to final_logits_bias[eos]: some outputs end before the limit
    eos_row_scale=2.0,    # families without final_logits_bias (m2m_100): the eos row's norm instead
)


def randomise(model, case, sp, rng, scale=None):
    """Every parameter from N(0, 1) scaled per kind (SCALE); stored as float32 values."""
    sc = dict(SCALE, **(scale or {}))
    fam = case["family"]
    d = model.config.d_model
    scaled = model.config.scale_embedding
    embed_std = sc["input_std"] / (math.sqrt(d) if scaled else 1.0)
    # the LayerNorm whose output the (tied) output projection reads
    last_ln = ("model.decoder.layer_norm." if fam in ("mbart", "m2m_100") else
               "model.decoder.layers.%d.final_layer_norm." % (model.config.decoder_layers - 1))
    with torch.no_grad():
        for name, p in model.named_parameters():          # a tied tensor appears once
            if fam == "marian" and "embed_positions" in name:
                continue                                  # static sinusoids, not a parameter to draw
            n = rng.standard_normal(tuple(p.shape))
            parts = name.split(".")
            leaf = parts[-2] if len(parts) > 1 else name
            if "layer_norm" in name or "layernorm" in name:
                v = 1.0 + sc["ln_weight_std"] * n if name.endswith("weight") else sc["ln_bias_std"] * n
                if name == last_ln + "weight":
                    v = v * sc["logit_gain"] / math.sqrt(d * embed_std ** 2)
                    if sc["signed_output_norm"]:
                        # random signs: the tied output row of the token just read no longer lines up
                        # with the residual stream that still carries its embedding (else: repeats)
                        v = v * np.where(rng.standard_normal(v.shape) < 0, -1.0, 1.0)
            elif "embed_positions" in name:
                v = sc["positions"] * n
            elif "embed_tokens" in name or "shared" in name or name == "lm_head.weight":
                if sc.get("equal_norm_rows"):
                    # every row the same norm: no token wins by the size of its (tied) output row
                    n = n / np.linalg.norm(n, axis=1, keepdims=True) * math.sqrt(d)
                v = embed_std * n
                # tokens a trained model does not emit (pad, unk, madeup words): short rows, logits ~0
                v[sp["rare"]] *= 0.1
                if fam == "marian":
                    v[sp["pad"]] = 0.0   # the decoder starts from pad: a zero embedding (as Marian, CTranslate2)
                if not hasattr(model, "final_logits_bias"):
                    v[sp["eos"]] *= sc["eos_row_scale"]   # some outputs end before the limit
            elif name.endswith("bias"):
                v = sc["bias_std"] * n
            else:
                g = sc["gains"].get(leaf, 1.0)
                if "encoder_attn.out_proj" in name:
                    g = sc["cross_out_proj"]
                v = n * (g / math.sqrt(p.shape[1]))
            p.copy_(torch.from_numpy(v.astype(np.float32)))
        if hasattr(model, "final_logits_bias"):
            V = model.final_logits_bias.shape[-1]
            b = sc["final_logits_bias_std"] * rng.standard_normal(V)
            b[sp["eos"]] += sc["eos_bonus"]   # some outputs end before the limit
            if fam == "marian":
                b[sp["pad"]] = -20.0          # pad never competes (its embedding row is 0: logit = bias)
            model.final_logits_bias.copy_(torch.from_numpy(b.astype(np.float32)).reshape(1, V))
    if sc["center_output"]:
        center_output(model, sp, last_ln[:-1], rng)


def center_output(model, sp, ln_name, rng):
    """Subtracts from the bias of the LayerNorm the output projection reads the mean of that
    LayerNorm's output over a batch of random sources and targets: the decoder states of a random
    model share a large common component, which gives every step the same favourite token."""
    ln = model.get_submodule(ln_name)
    seen = []
    hook = ln.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    srcs = make_sources(sp, [6, 9, 12, 15, 8, 11], rng)
    tgts = make_targets(sp, [10, 13, 7, 16, 12, 9], rng)
    try:
        src, smask = pad_batch(srcs, sp["pad"])
        tgt, tmask = pad_batch(tgts, sp["pad"])
        with torch.no_grad():
            model(input_ids=src, attention_mask=smask, decoder_input_ids=tgt, decoder_attention_mask=tmask)
    finally:
        hook.remove()
    out = seen[-1].double()                                   # [B, T, D]
    mean = (out * tmask[..., None]).sum((0, 1)) / tmask.sum()
    with torch.no_grad():
        ln.bias.copy_((ln.bias.double() - mean).float())



# ---------------------------------------------------------------------------------------------
# generation and scoring


def gen_config(sp, num_beams, num_return_sequences=1, bad_words=None, early_stopping=False):
    """Every generation setting explicit and neutral (no forced eos, no n-gram blocking, no minimum
    length); bad_words_ids only where a family's checkpoints ship it (Marian: [[pad]])."""
    return GenerationConfig(
        decoder_start_token_id=sp["decoder_start"], bos_token_id=sp["bos"], eos_token_id=sp["eos"],
        pad_token_id=sp["pad"], forced_bos_token_id=sp["forced_bos"], forced_eos_token_id=None,
        max_new_tokens=MAX_NEW_TOKENS, min_length=0, min_new_tokens=None, do_sample=False,
        num_beams=num_beams, num_beam_groups=1, num_return_sequences=num_return_sequences,
        length_penalty=1.0, early_stopping=early_stopping, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, repetition_penalty=1.0, bad_words_ids=bad_words,
        suppress_tokens=None, begin_suppress_tokens=None, diversity_penalty=0.0, temperature=1.0,
        top_k=50, top_p=1.0, renormalize_logits=False, remove_invalid_values=False,
        exponential_decay_length_penalty=None, use_cache=True, output_scores=False,
        return_dict_in_generate=False)


GEN_KWARGS_FIXED = dict(output_scores=True, return_dict_in_generate=True)


def pad_batch(seqs, pad):
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def generate(model, srcs, gc, sp):
    ids, mask = pad_batch(srcs, sp["pad"])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc, **GEN_KWARGS_FIXED)
    return out


def strip(row, sp):
    """generate()'s row without the decoder start (first token) and without the first eos and
    everything after it (eos, then pad filling). The forced BOS token (language token) stays."""
    row = [int(t) for t in row]
    assert row[0] == sp["decoder_start"], row
    gen = row[1:]
    finished = sp["eos"] in gen
    if finished:
        gen = gen[: gen.index(sp["eos"])]
    return gen, finished


def greedy_margins(out, sp):
    """Per sentence: top-1 minus top-2 of the processed scores at each step it was still running
    (generate's scores are the logits after the processors; a difference of logits is a difference
    of log-probabilities). Forced steps (one finite score) are not decisions and are skipped."""
    seqs = out.sequences
    B = seqs.shape[0]
    res = []
    for b in range(B):
        gen, finished = strip(seqs[b], sp)
        steps = len(gen) + (1 if finished else 0)
        m = []
        for t in range(steps):
            s = out.scores[t][b].double()
            fin = s[torch.isfinite(s)]
            if fin.numel() < 2:
                continue
            top = torch.topk(fin, 2).values
            m.append(float(top[0] - top[1]))
        res.append(m)
    return res


class model_default_dtype:
    """Runs a block with torch's default dtype set to the model's: transformers 4.46 builds the causal
    mask with torch.full(..., torch.finfo(model dtype).min), which torch 1.13 refuses to put into a
    default-dtype (float32) tensor when the model is float64."""

    def __init__(self, model):
        self.dtype = next(model.parameters()).dtype

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def token_logprobs(model, src, gen_with_eos, sp):
    """Raw model log-probabilities (no processors) of each generated token, teacher-forced, float64."""
    dec = [sp["decoder_start"]] + gen_with_eos
    with torch.no_grad(), model_default_dtype(model):
        logits = model(input_ids=torch.tensor([src]), decoder_input_ids=torch.tensor([dec[:-1]])).logits
    lp = torch.log_softmax(logits.double(), -1)[0]
    return [float(lp[i, t]) for i, t in enumerate(gen_with_eos)]


def teacher_forced(model, srcs, tgts, sp):
    src, smask = pad_batch(srcs, sp["pad"])
    tgt, tmask = pad_batch(tgts, sp["pad"])
    with torch.no_grad(), model_default_dtype(model):
        enc = model.get_encoder()(input_ids=src, attention_mask=smask).last_hidden_state
        logits = model(input_ids=src, attention_mask=smask, decoder_input_ids=tgt,
                       decoder_attention_mask=tmask).logits
    lp = torch.log_softmax(logits.double(), -1).numpy()
    enc = enc.double().numpy()
    lp[tmask.numpy() == 0] = 0.0
    enc[smask.numpy() == 0] = 0.0
    return lp, enc


def run_all(model, case, sp, srcs, text_srcs):
    """Greedy, beam 4, beam 4 n-best 2 on the id sources; greedy on the text sources."""
    bad = [[sp["pad"]]] if case["family"] == "marian" else None
    r = {}
    r["gc_greedy"] = gen_config(sp, 1, bad_words=bad)
    r["gc_beam4"] = gen_config(sp, 4, bad_words=bad)
    r["gc_nbest"] = gen_config(sp, 4, 2, bad_words=bad)
    r["gc_beam4_es"] = gen_config(sp, 4, bad_words=bad, early_stopping=True)
    r["greedy"] = generate(model, srcs, r["gc_greedy"], sp)
    r["beam4"] = generate(model, srcs, r["gc_beam4"], sp)
    r["nbest"] = generate(model, srcs, r["gc_nbest"], sp)
    r["beam4_es"] = generate(model, srcs, r["gc_beam4_es"], sp)
    if text_srcs:
        r["text_greedy"] = generate(model, text_srcs, r["gc_greedy"], sp)
    return r


def ids_of(out, sp):
    return [strip(row, sp) for row in out.sequences]


# ---------------------------------------------------------------------------------------------
# one case


def make_sources(sp, lengths, rng):
    pre, suf = sp["src_prefix"], sp["src_suffix"]
    out = []
    for L in lengths:
        k = max(L - len(pre) - len(suf), 1)
        out.append(pre + [int(x) for x in rng.choice(sp["ordinary"], k)] + suf)
    return out


def make_targets(sp, lengths, rng):
    out = []
    for L in lengths:
        t = [sp["decoder_start"]]
        if sp["forced_bos"] is not None and L > 1:
            t.append(sp["forced_bos"])
        t += [int(x) for x in rng.choice(sp["ordinary"], L - len(t))]
        out.append(t)
    return out


def attempt(case, index, attempt_no, tok, model_vocab, sp, text_src_ids):
    seed = 1000 * (index + 1) + attempt_no
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    cfg = build_config(case, model_vocab, sp)
    Model = FAMILY[case["family"]][1]
    model32 = Model(cfg).eval()
    randomise(model32, case, sp, rng)
    srcs = make_sources(sp, case["src_lengths"], rng)
    tgts = make_targets(sp, case["tgt_lengths"], rng)
    model = stored_float64(model32)
    r = run_all(model, case, sp, srcs, text_src_ids)
    reasons = []
    margins = greedy_margins(r["greedy"], sp)
    if text_src_ids:
        margins += greedy_margins(r["text_greedy"], sp)
    flat = [m for ms in margins for m in ms]
    min_margin = min(flat) if flat else float("inf")
    if min_margin < MIN_MARGIN:
        reasons.append(f"greedy margin {min_margin:.3g}")
    outs = ids_of(r["greedy"], sp) + ids_of(r["beam4"], sp) + ids_of(r["nbest"], sp) + ids_of(r["beam4_es"], sp)
    if text_src_ids:
        outs += ids_of(r["text_greedy"], sp)
    skip = 1 if sp["forced_bos"] is not None else 0
    bad = sorted({t for g, _ in outs for t in g[skip:] if t in sp["never"]})
    if bad:
        reasons.append(f"emits {bad}")
    fin = [f for _, f in ids_of(r["greedy"], sp)]
    if all(fin) or not any(fin):
        reasons.append(f"greedy finished {fin}")
    greedy_ids, beam_ids = ids_of(r["greedy"], sp), ids_of(r["beam4"], sp)
    if greedy_ids == beam_ids:
        reasons.append("beam4 == greedy everywhere")
    distinct = len({t for g, _ in greedy_ids for t in g})
    if distinct < MIN_DISTINCT:
        reasons.append(f"{distinct} distinct greedy tokens")
    if sum(len(g) <= skip for g, _ in greedy_ids) > 1:
        reasons.append("more than one empty greedy output")
    if text_src_ids and min(len(g) - skip for g, _ in ids_of(r["text_greedy"], sp)) < 3:
        reasons.append("a text output shorter than 3 tokens")
    if not reasons:
        # float32 transformers on the stored weights: same decisions
        r32 = run_all(model32, case, sp, srcs, text_src_ids)
        for k in ("greedy", "beam4", "nbest", "beam4_es") + (("text_greedy",) if text_src_ids else ()):
            if ids_of(r32[k], sp) != ids_of(r[k], sp):
                reasons.append(f"float32 {k} differs")
    return dict(seed=seed, cfg=cfg, model32=model32, model=model, srcs=srcs, tgts=tgts, r=r,
                margins=margins, min_margin=min_margin, reasons=reasons)


def build_case(case, index, work):
    if case["tokenizer"]:
        tok, model_vocab, tok_info = make_tokenizer(case["tokenizer"], work)
    else:
        tok, model_vocab, tok_info = None, case["config"]["vocab_size"], None
    sp = special_ids(case, dict(vocab_size=model_vocab), tok)
    text_src_ids = None
    if tok is not None:
        text_src_ids = [tok(t)["input_ids"] for t in TEXT_SOURCES]
    for a in range(MAX_ATTEMPTS):
        c = attempt(case, index, a, tok, model_vocab, sp, text_src_ids)
        if not c["reasons"]:
            break
        print(f"  {case['name']}: seed {c['seed']}: {', '.join(c['reasons'])}; re-drawing")
    else:
        raise RuntimeError(f"{case['name']}: no acceptable seed in {MAX_ATTEMPTS} attempts")
    c.update(case=case, tok=tok, tok_info=tok_info, sp=sp, text_src_ids=text_src_ids)
    return c


# ---------------------------------------------------------------------------------------------
# writing



def write_lines(path, lines):
    with open(path, "w") as f:
        for line in lines:
            assert "\n" not in line
            f.write(line + "\n")


def tensor_listing(d):
    """{file: [[name, dtype, shape], ...]} of the safetensors files in d."""
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as st:
                out[f] = [[k, str(st.get_slice(k).get_dtype()), list(st.get_slice(k).get_shape())]
                          for k in sorted(st.keys())]
    return out



def hyps_record(model, srcs, out, sp, per_source):
    recs = []
    rows = out.sequences
    scores = getattr(out, "sequences_scores", None)
    for i in range(rows.shape[0]):
        gen, finished = strip(rows[i], sp)
        full = gen + ([sp["eos"]] if finished else [])
        lps = token_logprobs(model, srcs[i // per_source], full, sp)
        rec = dict(source=i // per_source, ids=gen, finished=finished,
                   generated_length=len(full), token_logprobs=lps, sum_logprobs=float(sum(lps)))
        if scores is not None:
            rec["transformers_score"] = float(scores[i])
            # the score transformers' beam search ranks by: sum of the PROCESSED log-probs (a forced
            # token counts 0) over generated_length ** length_penalty
            forced = 1 if sp["forced_bos"] is not None else 0
            rec["recomputed_score"] = float(sum(lps[forced:]) / len(full))
        recs.append(rec)
    return recs


def write_case(c, out_dir):
    case, sp, r = c["case"], c["sp"], c["r"]
    d = os.path.join(out_dir, case["name"])
    model32 = c["model32"]
    model32.generation_config = c["r"]["gc_greedy"]
    model32.save_pretrained(d, safe_serialization=True)
    if c["tok"] is not None:
        c["tok"].save_pretrained(d)
    model = c["model"]
    srcs, tgts = c["srcs"], c["tgts"]
    write_ids(os.path.join(d, "src.txt"), srcs)
    g = ids_of(r["greedy"], sp)
    write_ids(os.path.join(d, "greedy.txt"), [x for x, _ in g])
    write_ids(os.path.join(d, "greedy_raw.txt"), r["greedy"].sequences.tolist())
    write_ids(os.path.join(d, "beam4.txt"), [x for x, _ in ids_of(r["beam4"], sp)])
    write_ids(os.path.join(d, "beam4_early_stopping.txt"), [x for x, _ in ids_of(r["beam4_es"], sp)])
    nb = hyps_record(model, srcs, r["nbest"], sp, 2)
    with open(os.path.join(d, "beam4_nbest.txt"), "w") as f:
        for h in nb:
            f.write(f"{h['source']}\t{h['transformers_score']!r}\t{' '.join(map(str, h['ids']))}\n")
    write_ids(os.path.join(d, "tgt.txt"), tgts)
    lp, enc = teacher_forced(model, srcs, tgts, sp)
    np.save(os.path.join(d, "logprobs.npy"), np.ascontiguousarray(lp.astype(np.float64)))
    np.save(os.path.join(d, "encoder_out.npy"), np.ascontiguousarray(enc.astype(np.float64)))
    greedy_rec = hyps_record(model, srcs, r["greedy"], sp, 1)
    for h, m in zip(greedy_rec, c["margins"][: len(srcs)]):
        h["min_margin"] = min(m) if m else None
    beam_rec = hyps_record(model, srcs, r["beam4"], sp, 1)
    beam_es_rec = hyps_record(model, srcs, r["beam4_es"], sp, 1)
    text = None
    if c["tok"] is not None:
        tok = c["tok"]
        write_lines(os.path.join(d, "text_src.txt"), TEXT_SOURCES)
        write_ids(os.path.join(d, "text_src_ids.txt"), c["text_src_ids"])
        tg = r["text_greedy"].sequences
        decoded = tok.batch_decode(tg, skip_special_tokens=True)
        write_lines(os.path.join(d, "text_greedy.txt"), decoded)
        write_ids(os.path.join(d, "text_greedy_ids.txt"), [x for x, _ in ids_of(r["text_greedy"], sp)])
        text = dict(tokenizer=c["tok_info"], sources=TEXT_SOURCES, source_ids=c["text_src_ids"],
                    greedy_ids=[x for x, _ in ids_of(r["text_greedy"], sp)],
                    greedy_finished=[f for _, f in ids_of(r["text_greedy"], sp)],
                    greedy_text=decoded,
                    greedy_min_margin=min(m for ms in c["margins"][len(srcs):] for m in ms))
    cfg = c["cfg"]
    ref = dict(
        case=case["name"], family=case["family"], model_class=type(model32).__name__,
        description=case["desc"], seed=c["seed"],
        versions=versions(),
        config={k: getattr(cfg, k) for k in (
            "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
            "activation_function", "scale_embedding", "pad_token_id", "eos_token_id", "bos_token_id",
            "decoder_start_token_id", "tie_word_embeddings") if hasattr(cfg, k)},
        special_ids={k: v for k, v in sp.items() if k not in ("ordinary",)},
        ordinary_ids=[sp["ordinary"][0], sp["ordinary"][-1]],
        stored_tensors=tensor_listing(d),
        generate=dict(
            call="model.generate(input_ids, attention_mask, generation_config=GC, output_scores=True, "
                 "return_dict_in_generate=True) on the batch of src.txt right-padded with pad, in float64",
            greedy=gc_record(r["gc_greedy"]), beam4=gc_record(r["gc_beam4"]),
            beam4_nbest=gc_record(r["gc_nbest"]), beam4_early_stopping=gc_record(r["gc_beam4_es"]),
            max_length_semantics=f"max_new_tokens {MAX_NEW_TOKENS}: at most {MAX_NEW_TOKENS} generated "
                                 "tokens after the decoder start, the forced BOS and the eos included; "
                                 "generate() then uses max_length = 1 + max_new_tokens = "
                                 f"{1 + MAX_NEW_TOKENS} (the max_length of the recorded configs is "
                                 "GenerationConfig's default, overridden)",
            extra_kwargs="output_scores=True, return_dict_in_generate=True (they change no result)"),
        stripping="greedy.txt / beam4.txt / beam4_nbest.txt / text_greedy_ids.txt: generate()'s row "
                  "minus its first token (the decoder start) and minus the first eos and everything "
                  "after it (pad filling); the forced BOS token, where there is one, is kept. "
                  "greedy_raw.txt: the rows as generate() returned them (decoder start, eos, pad filling "
                  "to the batch's longest row).",
        greedy=greedy_rec, beam4=beam_rec, beam4_nbest=nb, beam4_early_stopping=beam_es_rec,
        greedy_min_margin=min(m for ms in c["margins"][: len(srcs)] for m in ms),
        teacher_forced=dict(src_lengths=[len(s) for s in srcs], tgt_lengths=[len(t) for t in tgts],
                            logprobs="float64 [B, T, V] log_softmax(logits) of tgt.txt, 0 past each length",
                            encoder_out="float64 [B, S, D] encoder last_hidden_state, 0 past each length"),
        text=text,
    )
    return d, ref


def versions():
    return dict(transformers=transformers.__version__, torch=torch.__version__.split("+")[0],
                ctranslate2=ctranslate2.__version__, sentencepiece=spm.__version__,
                safetensors=safetensors.__version__, numpy=np.__version__,
                python=".".join(map(str, sys.version_info[:3])))


# ---------------------------------------------------------------------------------------------
# read-back checks


def reload_checks(c, d, ref):
    """A fresh from_pretrained of the written directory (float64 and float32) gives the same ids and
    log-probs; the saved tokenizer gives the same ids."""
    case, sp = c["case"], c["sp"]
    Model = FAMILY[case["family"]][1]
    out = {}
    m = Model.from_pretrained(d, attn_implementation="eager").double().eval()
    gc = GenerationConfig.from_pretrained(d)
    assert gc.decoder_start_token_id == sp["decoder_start"]
    assert gc.forced_bos_token_id == sp["forced_bos"]
    assert gc.forced_eos_token_id is None
    srcs = c["srcs"]
    g = generate(m, srcs, gc, sp)
    out["reload_greedy_equal"] = ids_of(g, sp) == ids_of(c["r"]["greedy"], sp)
    lp, enc = teacher_forced(m, srcs, c["tgts"], sp)
    out["reload_logprobs_maxdiff"] = float(np.abs(lp - np.load(os.path.join(d, "logprobs.npy"))).max())
    m32 = Model.from_pretrained(d, attn_implementation="eager").eval()
    lp32, _ = teacher_forced(m32, srcs, c["tgts"], sp)
    out["float32_logprobs_maxdiff"] = float(np.abs(lp32 - lp).max())
    out["float32_greedy_equal"] = ids_of(generate(m32, srcs, gc, sp), sp) == ids_of(c["r"]["greedy"], sp)
    # each source alone (no padding) gives the batch's greedy and beam ids
    alone_g, alone_b = [], []
    for s in srcs:
        alone_g += ids_of(generate(m, [s], gc, sp), sp)
        alone_b += ids_of(generate(m, [s], c["r"]["gc_beam4"], sp), sp)
    out["unbatched_greedy_equal"] = alone_g == ids_of(c["r"]["greedy"], sp)
    out["unbatched_beam4_equal"] = alone_b == ids_of(c["r"]["beam4"], sp)
    out["nbest_top_equals_beam4"] = ([h["ids"] for h in ref["beam4_nbest"][::2]]
                                     == [h["ids"] for h in ref["beam4"]])
    out["beam4_score_recomputed_maxdiff"] = max(
        abs(h["transformers_score"] - h["recomputed_score"]) for h in ref["beam4_nbest"])
    if c["tok"] is not None:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(d, use_fast=False)
        out["reload_tokenizer_ids_equal"] = [tok(t)["input_ids"] for t in TEXT_SOURCES] == c["text_src_ids"]
        try:
            fast = AutoTokenizer.from_pretrained(d, use_fast=True)
            if fast.is_fast:
                out["fast_tokenizer_ids_equal"] = [fast(t)["input_ids"] for t in TEXT_SOURCES] == c["text_src_ids"]
        except Exception as e:  # noqa: BLE001 - informational only
            out["fast_tokenizer"] = f"unavailable: {type(e).__name__}"
    return out


# ---------------------------------------------------------------------------------------------
# CTranslate2


def ct2_target_prefix(sp, vocab, start_is_null):
    """The target_prefix CTranslate2 needs to decode as transformers does: the forced BOS token
    (bart: <s>, m2m_100: __de__); for mBART cc25, whose converted config.json has
    decoder_start_token null, the decoder start itself (ro_RO), which CTranslate2 then feeds as
    the start token and does not return."""
    if start_is_null:
        return [vocab[sp["decoder_start"]]]
    if sp["forced_bos"] is not None:
        return [vocab[sp["forced_bos"]]]
    return None


CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")   # CTranslate2's DataType ids


def read_ct2_model_bin(path):
    """An independent reader of model.bin (binary version 6): every variable's name, dtype and
    shape (the value too for scalars and 1-element tensors), then the aliases."""
    with open(path, "rb") as f:
        raw = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        out = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return out

    def string():
        nonlocal pos
        (n,) = take("H")
        s = raw[pos: pos + n - 1].decode("utf-8")
        pos += n
        return s

    (version,) = take("I")
    spec = string()
    (revision,) = take("I")
    (count,) = take("I")
    variables = []
    np_types = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2"}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = list(take("I" * rank)) if rank else []
        (dtype_id,) = take("B")
        (nbytes,) = take("I")
        data = raw[pos: pos + nbytes]
        pos += nbytes
        dtype = CT2_DTYPES[dtype_id]
        var = [name, dtype, shape]
        if int(np.prod(shape)) <= 1 and dtype in np_types:
            var.append(np.frombuffer(data, dtype=np_types[dtype]).tolist())
        variables.append(var)
    (n_alias,) = take("I")
    aliases = [[string(), string()] for _ in range(n_alias)]
    assert pos == len(raw), (pos, len(raw))
    return dict(binary_version=version, spec=spec, revision=revision, variables=variables, aliases=aliases)


def ct2_options(beam, nhyp=1):
    return dict(beam_size=beam, num_hypotheses=nhyp, length_penalty=1.0, patience=1.0,
                coverage_penalty=0.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
                max_decoding_length=CT2_MAX_DECODING_LENGTH, min_decoding_length=0,
                return_scores=True, sampling_topk=1, max_input_length=1024)


def ct2_translate(tr, srcs, prefix, vocab, **opts):
    src_tok = [[vocab[i] for i in s] for s in srcs]
    res = tr.translate_batch(src_tok, target_prefix=[prefix] * len(srcs) if prefix else None, **opts)
    index = {t: i for i, t in enumerate(vocab)}
    return [[dict(ids=[index[t] for t in h], score=float(sc)) for h, sc in zip(r.hypotheses, r.scores)]
            for r in res]


def convert_ct2(c, d, out_dir, quant):
    case = c["case"]
    name = f"{case['name']}_ct2_{quant}"
    target = os.path.join(out_dir, name)
    if c["tok"] is None:
        conv = IdsOnlyConverter(d, c["cfg"].vocab_size)
    else:
        conv = TransformersConverter(d)
    conv.convert(target, quantization=quant, force=True)
    return name, target


def ct2_case(c, d, out_dir, ref):
    """Converts, translates with ctranslate2 and compares with transformers; returns a summary."""
    case, sp = c["case"], c["sp"]
    srcs = c["srcs"]
    hf = {k: [h["ids"] for h in ref[k]] for k in ("greedy", "beam4", "beam4_early_stopping")}
    hf_lps = [h["token_logprobs"] for h in ref["greedy"]]
    summary = {}
    f32 = None
    for quant in case["ct2"]:
        name, target = convert_ct2(c, d, out_dir, quant)
        with open(os.path.join(target, "shared_vocabulary.json")) as f:
            vocab = json.load(f)
        with open(os.path.join(target, "config.json")) as f:
            start_is_null = json.load(f).get("decoder_start_token") is None
        prefix = ct2_target_prefix(sp, vocab, start_is_null)
        tr = ctranslate2.Translator(target, device="cpu", intra_threads=1, inter_threads=1)
        greedy = ct2_translate(tr, srcs, prefix, vocab, **ct2_options(1))
        beam = ct2_translate(tr, srcs, prefix, vocab, **ct2_options(4))
        nbest = ct2_translate(tr, srcs, prefix, vocab, **ct2_options(4, 2))
        g_ids = [h[0]["ids"] for h in greedy]
        b_ids = [h[0]["ids"] for h in beam]
        write_ids(os.path.join(target, "ct2_greedy.txt"), g_ids)
        write_ids(os.path.join(target, "ct2_beam4.txt"), b_ids)
        with open(os.path.join(target, "ct2_beam4_nbest.txt"), "w") as f:
            for i, hs in enumerate(nbest):
                for h in hs:
                    f.write(f"{i}\t{h['score']!r}\t{' '.join(map(str, h['ids']))}\n")
        # score_batch on transformers' greedy outputs: the log-probability of each token, then of an
        # eos that CTranslate2 always appends
        src_tok = [[vocab[i] for i in s] for s in srcs]
        tgt_tok = [([vocab[sp["decoder_start"]]] if start_is_null else []) + [vocab[i] for i in g]
                   for g in hf["greedy"]]
        scored = tr.score_batch(src_tok, tgt_tok)
        score_lps = [[float(x) for x in s.log_probs] for s in scored]
        score_tokens = [list(s.tokens) for s in scored]
        # transformers' raw log-probs of the same tokens; CTranslate2's extra eos of an unfinished
        # line (transformers never scored it) is left out of every comparison
        on_path = [a[: len(b)] for a, b in zip(score_lps, hf_lps)]
        diffs = [max(abs(x - y) for x, y in zip(a, b)) for a, b in zip(on_path, hf_lps)]
        rec = dict(
            case=case["name"], quantization=quant, versions=versions(),
            compute_type=tr.compute_type,
            model_bin=read_ct2_model_bin(os.path.join(target, "model.bin")),
            source=("../%s/src.txt: the same ids, given to translate_batch as the tokens "
                    "shared_vocabulary.json[id]" % case["name"]),
            target_prefix=prefix,
            options_greedy=ct2_options(1), options_beam4=ct2_options(4), options_beam4_nbest=ct2_options(4, 2),
            stripping=("ct2_*.txt: translate_batch's tokens as ids: no decoder start, no eos; the "
                       "target prefix is returned (the forced BOS), except a prefix token that serves "
                       "as the decoder start (decoder_start_token null: mBART), which is not"),
            greedy=[h[0] for h in greedy], beam4=[h[0] for h in beam], beam4_nbest=nbest,
            score_batch=dict(targets="transformers' greedy ids (../%s/greedy.txt)" % case["name"]
                             + ("; the decoder start ro_RO prepended" if start_is_null else ""),
                             tokens=score_tokens, log_probs=score_lps,
                             max_abs_diff_vs_transformers_float64=max(diffs)),
            greedy_equals_transformers=g_ids == hf["greedy"],
            beam4_equals_transformers_early_stopping_true=b_ids == hf["beam4_early_stopping"],
            beam4_equals_transformers_early_stopping_false=b_ids == hf["beam4"],
        )
        if quant == "float32":
            f32 = dict(greedy=g_ids, beam=b_ids, lps=on_path)
        else:
            rec["greedy_equals_ct2_float32"] = g_ids == f32["greedy"] if f32 else None
            rec["beam4_equals_ct2_float32"] = b_ids == f32["beam"] if f32 else None
            if f32:
                rec["quantisation_error"] = dict(
                    what="max over the tokens of transformers' greedy outputs (their eos included) of "
                         "|log p| of score_batch here minus that of the float32 conversion",
                    value=max(max(abs(x - y) for x, y in zip(a, b)) for a, b in zip(on_path, f32["lps"])))
            # where the tokens differ from transformers: the float64 margin at that step
            diff_steps = []
            for i, (a, b) in enumerate(zip(g_ids, hf["greedy"])):
                if a != b:
                    k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
                    ms = c["margins"][i]
                    off = 1 if sp["forced_bos"] is not None else 0   # margins skip the forced step
                    diff_steps.append(dict(source=i, first_differing_position=k,
                                           transformers_margin_there=ms[k - off] if 0 <= k - off < len(ms) else None))
            rec["greedy_differences_from_transformers"] = diff_steps
            if "quantisation_error" in rec:
                err = rec["quantisation_error"]["value"]
                # the rule of the issue: tokens equal wherever the top two differ by more than the error
                rec["differences_only_where_margin_below_error"] = all(
                    x["transformers_margin_there"] is not None and x["transformers_margin_there"] < err
                    for x in diff_steps)
        write_json(os.path.join(target, "ct2_reference.json"), rec)
        size = sum(os.path.getsize(os.path.join(target, f)) for f in os.listdir(target))
        summary[name] = dict(size_kib=round(size / 1024, 1), compute_type=tr.compute_type,
                             greedy_equal=rec["greedy_equals_transformers"],
                             beam4_equal_es_true=rec["beam4_equals_transformers_early_stopping_true"],
                             beam4_equal_es_false=rec["beam4_equals_transformers_early_stopping_false"],
                             score_maxdiff=round(rec["score_batch"]["max_abs_diff_vs_transformers_float64"], 7))
        if quant != "float32":
            summary[name]["quantisation_error"] = round(rec.get("quantisation_error", {}).get("value", float("nan")), 4)
            summary[name]["greedy_differences"] = rec["greedy_differences_from_transformers"]
            summary[name]["differences_only_where_margin_below_error"] = rec.get(
                "differences_only_where_margin_below_error")
        del tr
    return summary


# ---------------------------------------------------------------------------------------------



def tree_digest(path):
    h = hashlib.sha256()
    for r, ds, fs in sorted(os.walk(path)):
        ds.sort()
        for f in sorted(fs):
            p = os.path.join(r, f)
            h.update(os.path.relpath(p, path).encode() + b"\0")
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def generate_all(out_dir, only):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if os.path.isdir(out_dir):
        for entry in os.listdir(out_dir):       # keep README.md and nllb_tokenizer/ (make_nllb_tokenizer_fixture.py's)
            if entry in ("README.md", "nllb_tokenizer"):
                continue
            p = os.path.join(out_dir, entry)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    manifest = dict(generator="tools/hf/make_hf_fixtures.py", versions=versions(),
                    min_margin_required=MIN_MARGIN, max_new_tokens=MAX_NEW_TOKENS, cases=[])
    with tempfile.TemporaryDirectory() as work:
        for i, case in enumerate(CASES):
            if only and case["name"] not in only:
                continue
            c = build_case(case, i, work)
            d, ref = write_case(c, out_dir)
            checks = reload_checks(c, d, ref)
            if case.get("sharded"):
                total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
                sd = os.path.join(out_dir, case["name"] + "_sharded")
                c["model32"].save_pretrained(sd, safe_serialization=True, max_shard_size=int(total * 0.45))
                ms = FAMILY[case["family"]][1].from_pretrained(sd, attn_implementation="eager").double().eval()
                checks["sharded_greedy_equal"] = (ids_of(generate(ms, c["srcs"], c["r"]["gc_greedy"], c["sp"]), c["sp"])
                                                  == ids_of(c["r"]["greedy"], c["sp"]))
                lp, _ = teacher_forced(ms, c["srcs"], c["tgts"], c["sp"])
                checks["sharded_logprobs_maxdiff"] = float(np.abs(lp - np.load(os.path.join(d, "logprobs.npy"))).max())
                with open(os.path.join(sd, "model.safetensors.index.json")) as f:
                    checks["shards"] = sorted(set(json.load(f)["weight_map"].values()))
                ref["sharded_copy"] = dict(folder=case["name"] + "_sharded", max_shard_size=int(total * 0.45),
                                           stored_tensors=tensor_listing(sd))
            ct2 = ct2_case(c, d, out_dir, ref) if case["ct2"] else {}
            ref["checks"] = checks
            ref["ct2"] = ct2
            write_json(os.path.join(d, "reference.json"), ref)
            mm = ref["greedy_min_margin"]
            tm = ref["text"]["greedy_min_margin"] if ref["text"] else None
            print(f"{case['name']} [seed {c['seed']}, V={c['cfg'].vocab_size}, d={c['cfg'].d_model}, "
                  f"{dir_size(d) / 1024:.1f} KiB] greedy min margin {mm:.4f}"
                  + (f", text {tm:.4f}" if tm is not None else "")
                  + f"; finished {[h['finished'] for h in ref['greedy']]}")
            for k, v in checks.items():
                print(f"    {k:34s} {v}")
            for k, v in ct2.items():
                print(f"    {k:34s} {v}")
            manifest["cases"].append(dict(
                name=case["name"], family=case["family"], description=case["desc"], seed=c["seed"],
                greedy_min_margin=mm, text_greedy_min_margin=tm,
                folders=[case["name"]] + ([case["name"] + "_sharded"] if case.get("sharded") else [])
                + list(ct2.keys())))
    write_json(os.path.join(out_dir, "manifest.json"), manifest)
    print(f"total {dir_size(out_dir) / 1024:.1f} KiB in {out_dir}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/hf", help="output folder (replaced, README.md kept)")
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
            a = {k for k in os.listdir(args.out) if k != "README.md"}
            b = set(os.listdir(t))
            same = a == b and tree_digest_excluding(args.out) == tree_digest(t)
            if not same:
                cmp = filecmp.dircmp(args.out, t)
                cmp.report_full_closure()
                raise SystemExit("NOT deterministic: the two runs differ")
            print("deterministic: a second run wrote the same bytes")


def tree_digest_excluding(path):
    with tempfile.TemporaryDirectory() as t:
        for e in os.listdir(path):
            if e == "README.md":
                continue
            s = os.path.join(path, e)
            (shutil.copytree if os.path.isdir(s) else shutil.copy)(s, os.path.join(t, e))
        return tree_digest(t)


if __name__ == "__main__":
    main()
