#!/usr/bin/python3
"""Trains the bundled grapheme-to-phoneme (G2P) demo models of eigenformer, and exports them.

What it does
  * Reads the CMU Pronouncing Dictionary as Debian's festlex-cmu ships it
    (/usr/share/festival/dicts/cmu/cmudict-0.4.out, festival lisp lines such as
    `("aback" nil (((ax) 0) ((b ae k) 1)))`). Syllables are flattened into one phoneme sequence
    and the stress digits are DROPPED; phonemes are written in upper case (AX, B, AE, K), the
    festival flavour of ARPAbet (40 phonemes, with AX for the reduced vowel).
  * Words are lower-cased; only purely alphabetic words of 1-20 letters with at most 30 phonemes
    are kept. A word listed more than once (several parts of speech, or capitalised variants)
    keeps its FIRST pronunciation in file order, for training and scoring alike.
  * Seeded split by word: 2000 held-out words, the rest (~103k) for training.
  * Vocabularies, one token per line, line number (from 0) = id:
      g2p.src.vocab  <pad> <s> </s> <unk> a b ... z   (source: characters)
      g2p.tgt.vocab  <pad> <s> </s> AA AE ... ZH      (target: phonemes)
    so pad_id=0, bos_id=1, eos_id=2 on both sides; <unk>=3 on the source side only.
    The source is the word's characters only: NO BOS and NO EOS on the encoder side
    (recorded as "src_eos": "false" in the metadata).
  * Two models from tools/reference.py (pre-LN, sinusoidal positions, relu, max_positions 64):
      g2p       dense, d_model 128, 4 heads, d_ff 512, 3 encoder + 3 decoder layers
      g2p-moe   the same with d_ff 256 and mixture-of-experts feed-forward blocks in all three
                decoder layers (4 experts, top_k gate, k=2: the active feed-forward width per
                token, 2 x 256, equals the dense model's 512); trained with a small Switch-style
                load-balancing loss.
    Adam (0.9, 0.98), peak lr 3e-3 after 400 linear warmup steps then cosine decay to 0, label
    smoothing 0.1, batches of 128 words of similar length, CPU with 1 thread, everything seeded.
  * After training, the weights are rounded to the export dtype (F16) and back, and the held-out
    words are decoded exactly as `eigenformer generate` does it: encoder on the characters,
    decoder from bos_id, argmax of log_softmax(generator(.)) over the whole target vocabulary at
    each step, stop at eos_id (not emitted) or after 32 new tokens. Also beam search (beam 4,
    score = sum of log-probabilities, no length penalty).
  * Writes, under examples/models/ (or --out-dir):
      g2p.safetensors, g2p-moe.safetensors           F16, ~3 MB each, extra metadata below
      g2p.src.vocab, g2p.tgt.vocab                   shared by both models
      g2p.heldout.tsv, g2p-moe.heldout.tsv           no header; one held-out word a line:
          word <TAB> reference phonemes <TAB> PyTorch greedy phonemes <TAB> min margin
        (phonemes space-separated; the margin is the minimum over decoding steps, the final
        EOS step included, of top-1 minus top-2 log-probability: words with a tiny margin may
        legitimately decode differently in C++).
    Extra metadata (strings): src_vocab, tgt_vocab, src_eos, max_new_tokens, phoneme_set,
    heldout_words, heldout_wer_greedy, heldout_per_greedy, heldout_wer_beam4, heldout_per_beam4.

How long
  About 20-25 minutes of training per model (default --steps: 5000 batches of 128 words, about
  6.2 epochs, ~0.25 s a step) on one shared core, plus about a minute and a half of evaluation
  each; both models ~50 minutes in all. Debian's python3-torch links the reference BLAS (~2
  GFLOPS): with it, everything is ~10x slower. Give it OpenBLAS first, either system-wide
      apt-get install libopenblas0-serial
  or for this command only, leaving the system alone:
      cd /tmp && apt-get download libopenblas0-serial && dpkg -x libopenblas0-serial_*.deb /tmp/openblas
      export LD_LIBRARY_PATH=/tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-serial
  Runs are deterministic (seeded, one thread) for a given machine and BLAS library.

How to run (Debian's PyTorch 1.13 is in /usr/bin/python3), from the repository root:
    /usr/bin/python3 tools/train_g2p.py                    # both models -> examples/models/
    /usr/bin/python3 tools/train_g2p.py --variant moe --steps 400 --out-dir /tmp/g2p   # a trial
    /usr/bin/python3 tools/train_g2p.py --eval-only        # re-evaluate/export from /tmp/*.pt
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Seq2Seq, export  # noqa: E402

DICT = "/usr/share/festival/dicts/cmu/cmudict-0.4.out"
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>"]
MAX_NEW_TOKENS = 32
EXPORT_DTYPE = "F16"
TORCH_DTYPE = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}

BASE = {"architecture": "encoder-decoder", "d_model": 128, "n_heads": 4, "d_ff": 512,
        "n_encoder_layers": 3, "n_decoder_layers": 3, "activation": "relu", "norm_first": True,
        "positional_encoding": "sinusoidal", "max_positions": 64,
        "pad_id": PAD, "bos_id": BOS, "eos_id": EOS}
VARIANTS = {
    "dense": ("g2p", {}),
    "moe": ("g2p-moe", {"d_ff": 256, "moe": {"n_experts": 4, "top_k": 2, "gate": "top_k",
                                             "encoder_layers": [], "decoder_layers": [0, 1, 2]}}),
}


# ----------------------------------------------------------------------------------------- data
def read_cmudict(path=DICT):
    """[(word, [PHONEME, ...])] in file order, one (the first) pronunciation per word."""
    seen, out = set(), []
    line_re = re.compile(r'^\("([^"]*)" \S+ \((.*)\)\)\s*$')
    with open(path, encoding="latin-1") as f:
        for line in f:
            m = line_re.match(line)
            if not m:
                continue                                   # the "MNCL" header line
            word = m.group(1).lower()
            phones = [p.upper() for syl in re.findall(r"\(\(([^()]*)\) \d\)", m.group(2))
                      for p in syl.split()]
            if (word in seen or not re.fullmatch(r"[a-z']{1,20}", word)
                    or not 1 <= len(phones) <= 30):
                continue
            seen.add(word)
            out.append((word, phones))
    return out


def split(entries, n_heldout, seed):
    """Seeded split by word: (train, heldout), held-out sorted alphabetically."""
    order = sorted(entries)
    random.Random(seed).shuffle(order)
    return order[n_heldout:], sorted(order[:n_heldout])


def batches(train, src_ix, tgt_ix, batch_size, rng):
    """An endless stream of (src, src_len, tgt_in, tgt_out, tgt_len), words of similar length."""
    while True:
        data = list(train)
        rng.shuffle(data)
        chunks = []
        for i in range(0, len(data), batch_size * 50):     # sort within pools of 50 batches
            pool = sorted(data[i:i + batch_size * 50], key=lambda e: (len(e[0]), len(e[1])))
            chunks += [pool[j:j + batch_size] for j in range(0, len(pool), batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            src = [[src_ix.get(c, UNK) for c in w] for w, _ in chunk]
            tgt = [[tgt_ix[p] for p in ph] for _, ph in chunk]
            yield (pad([s for s in src]), torch.tensor([len(s) for s in src]),
                   pad([[BOS] + t for t in tgt]), pad([t + [EOS] for t in tgt]),
                   torch.tensor([len(t) + 1 for t in tgt]))


def pad(seqs):
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [PAD] * (width - len(s)) for s in seqs])


# ------------------------------------------------------------------------------------- training
def train(model, data, steps, lr, warmup, smoothing, aux_weight, log_every=100):
    """Adam with linear warmup then cosine decay; label-smoothed NLL (+ MoE balance loss)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9)
    def lr_factor(s):
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gate_logits = []                                       # filled by hooks on the MoE gates
    for _, moe in model.moe_layers():
        moe.gate.register_forward_hook(lambda m, i, o: gate_logits.append(o))
    model.train()
    t0, run_loss = time.perf_counter(), 0.0
    for step in range(1, steps + 1):
        src, src_len, tgt_in, tgt_out, tgt_len = next(data)
        gate_logits.clear()
        logp = model(src, src_len, tgt_in, tgt_len)       # [B, T, V]
        mask = tgt_out != PAD
        nll = -logp.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)
        loss = (((1 - smoothing) * nll - smoothing * logp.mean(-1)) * mask).sum() / mask.sum()
        run_loss += loss.item()
        for h in gate_logits:                              # Switch-style: E * sum_e f_e * P_e
            h = h[mask]                                    # decoder tokens only, [N, E]
            n_e, k = h.shape[-1], model.config["moe"]["top_k"]
            f = torch.zeros(n_e).scatter_add_(0, h.topk(k, -1).indices.flatten(),
                                              torch.ones(h.shape[0] * k)) / (h.shape[0] * k)
            loss = loss + aux_weight * n_e * (f * torch.softmax(h, -1).mean(0)).sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == 20:
            el = time.perf_counter() - t0
            print(f"  step {step}/{steps}  loss {run_loss / (log_every if step % log_every == 0 else 20):.4f}"
                  f"  lr {sched.get_last_lr()[0]:.2e}  {el:.0f}s  eta {el / step * (steps - step):.0f}s",
                  flush=True)
            run_loss = 0.0
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------- decoding
def round_to_export_dtype(model, dtype):
    """Rounds every parameter to the export dtype and back, as the C++ side will see them."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(TORCH_DTYPE[dtype]).to(torch.float32))


@torch.no_grad()
def greedy(model, words, src_ix, batch_size=250):
    """[(ids, min top1-top2 margin)] per word, decoded as `eigenformer generate` does."""
    out = []
    for i in range(0, len(words), batch_size):
        src = [[src_ix.get(c, UNK) for c in w] for w in words[i:i + batch_size]]
        s, s_len = pad(src), torch.tensor([len(x) for x in src])
        memory = model.encode(s, s_len)
        B = len(src)
        ys = torch.full((B, 1), BOS)
        done = torch.zeros(B, dtype=torch.bool)
        margin = torch.full((B,), float("inf"))
        for _ in range(MAX_NEW_TOKENS):
            y = model.decode(memory, s_len, ys, torch.full((B,), ys.shape[1]))
            logp = torch.log_softmax(model.logits(y[:, -1]), -1)
            top = logp.topk(2, -1).values
            margin = torch.where(done, margin, torch.minimum(margin, top[:, 0] - top[:, 1]))
            nxt = logp.argmax(-1)
            ys = torch.cat([ys, torch.where(done, torch.tensor(PAD), nxt).unsqueeze(1)], 1)
            done |= nxt == EOS
            if done.all():
                break
        for b in range(B):
            seq = ys[b, 1:].tolist()
            out.append((seq[:seq.index(EOS)] if EOS in seq else seq, margin[b].item()))
    return out


@torch.no_grad()
def beam(model, word, src_ix, k=4):
    """Beam search, score = sum of log-probabilities, no length penalty."""
    src = torch.tensor([[src_ix.get(c, UNK) for c in word]])
    s_len = torch.tensor([src.shape[1]])
    memory = model.encode(src, s_len)
    alive, finished = [(0.0, [BOS])], []
    for _ in range(MAX_NEW_TOKENS):
        ys = torch.tensor([seq for _, seq in alive])
        n = len(alive)
        y = model.decode(memory.expand(n, -1, -1), s_len.expand(n), ys, torch.full((n,), ys.shape[1]))
        logp = torch.log_softmax(model.logits(y[:, -1]), -1)
        scores = torch.tensor([sc for sc, _ in alive]).unsqueeze(1) + logp
        vals, idx = scores.flatten().topk(min(2 * k, scores.numel()))
        nxt = []
        for v, j in zip(vals.tolist(), idx.tolist()):
            b, tok = divmod(j, logp.shape[1])
            if tok == EOS:
                finished.append((v, alive[b][1][1:]))
            elif len(nxt) < k:
                nxt.append((v, alive[b][1] + [tok]))
        alive = nxt
        # Scores only decrease: once the best finished beats every live beam, it is final.
        if not alive or (finished and max(finished)[0] >= alive[0][0]):
            break
    return max(finished or [(sc, seq[1:]) for sc, seq in alive])[1]


def edit_distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def wer_per(refs, hyps):
    wrong = sum(r != h for r, h in zip(refs, hyps))
    return wrong / len(refs), sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / sum(map(len, refs))


# ----------------------------------------------------------------------------------------- main
def run_variant(variant, args, train_set, heldout, src_vocab, tgt_vocab):
    name, overrides = VARIANTS[variant]
    src_ix = {c: i for i, c in enumerate(src_vocab)}
    tgt_ix = {p: i for i, p in enumerate(tgt_vocab)}
    config = dict(BASE, src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab), **overrides)
    torch.manual_seed(args.seed)
    model = Seq2Seq(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] config {json.dumps(config)}\n[{name}] {n_params} parameters", flush=True)

    ckpt = os.path.join(args.ckpt_dir, f"{name}.pt")
    if args.eval_only:
        model.load_state_dict(torch.load(ckpt))
        train_s = float("nan")
    else:
        data = batches(train_set, src_ix, tgt_ix, args.batch_size, random.Random(args.seed))
        train_s = train(model, data, args.steps, args.lr, args.warmup, args.smoothing,
                        args.aux_weight if config.get("moe") else 0.0)
        torch.save(model.state_dict(), ckpt)
        print(f"[{name}] trained {args.steps} steps in {train_s:.0f}s", flush=True)

    model.eval()
    round_to_export_dtype(model, EXPORT_DTYPE)
    words = [w for w, _ in heldout]
    refs = [[tgt_ix[p] for p in ph] for _, ph in heldout]
    t0 = time.perf_counter()
    greedy_out = greedy(model, words, src_ix)
    wer_g, per_g = wer_per(refs, [ids for ids, _ in greedy_out])
    print(f"[{name}] greedy: WER {wer_g:.2%}  PER {per_g:.2%}  ({time.perf_counter() - t0:.0f}s)",
          flush=True)
    wer_b = per_b = float("nan")
    if args.beam:
        t0 = time.perf_counter()
        wer_b, per_b = wer_per(refs, [beam(model, w, src_ix, args.beam) for w in words])
        print(f"[{name}] beam {args.beam}: WER {wer_b:.2%}  PER {per_b:.2%}"
              f"  ({time.perf_counter() - t0:.0f}s)", flush=True)

    path = os.path.join(args.out_dir, f"{name}.safetensors")
    export(model, path, dtype=EXPORT_DTYPE, extra_metadata={
        "description": "English grapheme-to-phoneme demo model trained on CMUdict (festlex-cmu 0.4), "
                       "stress dropped; see tools/train_g2p.py",
        "src_vocab": "g2p.src.vocab", "tgt_vocab": "g2p.tgt.vocab", "src_eos": "false",
        "src_unk_id": str(UNK), "max_new_tokens": str(MAX_NEW_TOKENS),
        "phoneme_set": "festival ARPAbet, upper case, no stress",
        "heldout_words": str(len(words)),
        "heldout_wer_greedy": f"{wer_g:.4f}", "heldout_per_greedy": f"{per_g:.4f}",
        "heldout_wer_beam4": f"{wer_b:.4f}", "heldout_per_beam4": f"{per_b:.4f}"})
    with open(os.path.join(args.out_dir, f"{name}.heldout.tsv"), "w") as f:
        for (w, ph), (ids, m) in zip(heldout, greedy_out):
            f.write(f"{w}\t{' '.join(ph)}\t{' '.join(tgt_vocab[i] for i in ids)}\t{m:.6g}\n")
    return dict(name=name, params=n_params, size=os.path.getsize(path), train_s=train_s,
                wer_g=wer_g, per_g=per_g, wer_b=wer_b, per_b=per_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=["dense", "moe", "both"], default="both")
    ap.add_argument("--steps", type=int, default=5000, help="training steps (batches), per model")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--warmup", type=int, default=400)
    ap.add_argument("--smoothing", type=float, default=0.1)
    ap.add_argument("--aux-weight", type=float, default=0.01, help="MoE load-balancing loss weight")
    ap.add_argument("--beam", type=int, default=4, help="beam size for the extra report (0: skip)")
    ap.add_argument("--heldout", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "..", "examples", "models"))
    ap.add_argument("--ckpt-dir", default="/tmp", help="where the float32 checkpoints go")
    ap.add_argument("--eval-only", action="store_true", help="load the checkpoints, skip training")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if os.path.exists("/proc/self/maps") and "openblas" not in open("/proc/self/maps").read():
        print("warning: PyTorch is not using OpenBLAS; with Debian's reference BLAS training is "
              "~10x slower (see the note at the top of this file)", flush=True)
    os.makedirs(args.out_dir, exist_ok=True)

    entries = read_cmudict()
    train_set, heldout = split(entries, args.heldout, args.seed)
    src_vocab = SPECIALS + ["<unk>"] + sorted({c for w, _ in entries for c in w})
    tgt_vocab = SPECIALS + sorted({p for _, ph in entries for p in ph})
    for fname, vocab in (("g2p.src.vocab", src_vocab), ("g2p.tgt.vocab", tgt_vocab)):
        with open(os.path.join(args.out_dir, fname), "w") as f:
            f.write("\n".join(vocab) + "\n")
    print(f"{len(entries)} words: {len(train_set)} train, {len(heldout)} held out; "
          f"vocab src {len(src_vocab)}, tgt {len(tgt_vocab)}", flush=True)

    results = []
    for v in (["dense", "moe"] if args.variant == "both" else [args.variant]):
        results.append(run_variant(v, args, train_set, heldout, src_vocab, tgt_vocab))
    print("\nsummary (held-out %d words)" % len(heldout))
    for r in results:
        print(f"  {r['name']:8s} {r['params']:>8d} params  {r['size'] / 1e6:.2f} MB {EXPORT_DTYPE}"
              f"  train {r['train_s'] / 60:.1f} min  greedy WER {r['wer_g']:.2%} PER {r['per_g']:.2%}"
              f"  beam{args.beam} WER {r['wer_b']:.2%} PER {r['per_b']:.2%}")


if __name__ == "__main__":
    main()
