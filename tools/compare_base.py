"""Correctness at realistic size: eigenformer against PyTorch on a Transformer-base model.

The committed golden fixtures (tests/fixtures) stop at d_model 64 to stay small. This script builds
the Transformer-base shape (d_model 512, 8 heads, d_ff 2048, 6 + 6 layers, vocab 8000) with random
weights (seeded), exports it with tools/reference.py, scores a padded batch with PyTorch in float64
and float32, runs `eigenformer score` (float32) on the same lines, and prints the max abs errors.

    /usr/bin/python3 tools/compare_base.py [--cli build/release/examples/eigenformer] [--pre-ln] [--gelu]

Expected (printed with the result): C++ float32 vs PyTorch float64 within 1e-4, the same order as
PyTorch's own float32 against float64 (~1e-5..1e-4 at this depth). The test suite checks float
against double at the same width without PyTorch (tests/test_model.cpp, FloatAgreesWithDouble...).
Exits non-zero when the error exceeds 1e-3.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import Seq2Seq, export  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cli", default="build/release/examples/eigenformer")
    ap.add_argument("--pre-ln", action="store_true")
    ap.add_argument("--gelu", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    cfg = dict(architecture="encoder-decoder", d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6,
               n_decoder_layers=6, src_vocab_size=8000, tgt_vocab_size=8000, bos_id=1, eos_id=2, pad_id=0,
               norm_first=args.pre_ln, activation="gelu" if args.gelu else "relu")
    model = Seq2Seq(cfg).eval()
    gen = torch.Generator().manual_seed(args.seed)
    src_len, tgt_len = [32, 17, 5], [24, 9, 1]
    src = [torch.randint(3, 8000, (n,), generator=gen).tolist() for n in src_len]
    tgt = [[1] + torch.randint(3, 8000, (n - 1,), generator=gen).tolist() for n in tgt_len]

    def padded(seqs):
        t = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
        for i, s in enumerate(seqs):
            t[i, :len(s)] = torch.tensor(s)
        return t

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "base.safetensors")
        export(model, path, "F32")
        with torch.no_grad():
            ref64 = model.double()(padded(src), src_len, padded(tgt), tgt_len).numpy()
            ref32 = model.float()(padded(src), src_len, padded(tgt), tgt_len).numpy()
        for b, n in enumerate(tgt_len):
            ref64[b, n:] = 0
            ref32[b, n:] = 0
        for name, seqs in (("src.txt", src), ("tgt.txt", tgt)):
            with open(os.path.join(tmp, name), "w") as f:
                f.writelines(" ".join(map(str, s)) + "\n" for s in seqs)
        out = os.path.join(tmp, "out.npy")
        subprocess.run([args.cli, "score", "--model", path, "--src-file", os.path.join(tmp, "src.txt"),
                        "--tgt-file", os.path.join(tmp, "tgt.txt"), "--out", out], check=True)
        ours = np.load(out)
    err = float(np.abs(ours - ref64).max())
    torch_err = float(np.abs(ref32 - ref64).max())
    print(f"Transformer-base ({'pre' if args.pre_ln else 'post'}-LN, {'gelu' if args.gelu else 'relu'}), "
          f"log-probs [{ours.shape[0]}, {ours.shape[1]}, {ours.shape[2]}]")
    print(f"  eigenformer float32 vs PyTorch float64: max abs error {err:.3g}")
    print(f"  PyTorch     float32 vs PyTorch float64: max abs error {torch_err:.3g}")
    sys.exit(0 if err < 1e-3 else 1)


if __name__ == "__main__":
    main()
