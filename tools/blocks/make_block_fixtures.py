#!/usr/bin/env python3
"""Writes tests/fixtures/blocks/: inputs and transformers' own outputs for the Llama building blocks
(rms_norm, rotary_embedding, silu_mul / gated_feed_forward), read by tests/test_blocks.cpp.

    build/hf-venv/bin/python tools/blocks/make_block_fixtures.py --out tests/fixtures/blocks

(scripts/hf_env creates build/hf-venv: Debian's torch 1.13 and transformers 4.46.3.) Seeded, so a
rerun rewrites the same files. Every input is rounded to float32 first, so the C++ tests read the
same values as float and as double. Every array is stored as float64 ('<f8'); positions as int64.
It prints the measured deviations that tests/fixtures/blocks/README.md quotes.
"""
import argparse
import pathlib

import numpy as np
import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb)

# name: (head_dim, q heads, kv heads, rope_theta, linear scaling factor or None, max_position_embeddings)
ROTARY_CASES = {
    "rope_d8_theta1e4": (8, 3, 1, 10000.0, None, 4096),
    "rope_d64_theta5e5": (64, 2, 1, 500000.0, None, 8192),
    "rope_d64_theta1e4_linear2": (64, 2, 1, 10000.0, 2.0, 8192),
}
# packed: a sequence at 0..3, a second at 0..2, then single rows far out
POSITIONS = [0, 1, 2, 3, 0, 1, 2, 17, 1000, 4000, 4095]


def f32(t):
    """Rounds to float32 and back: inputs both precisions read exactly."""
    return t.float().double()


def save(out, name, array):
    a = array.detach().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    a = a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float64)
    np.save(out / f"{name}.npy", a)


def max_dev(a, b):
    return float((a.double() - b.double()).abs().max())


def rms_norm(out, name, rows, d, scales, eps):
    x = f32(torch.randn(rows, d, dtype=torch.float64) * torch.tensor(scales, dtype=torch.float64)[:, None])
    w = f32(1 + 0.5 * torch.randn(d, dtype=torch.float64))
    m = LlamaRMSNorm(d, eps=eps)
    with torch.no_grad():
        m.weight.copy_(w.float())
        hf32 = m(x.float())                 # the module in float32
        m64 = LlamaRMSNorm(d, eps=eps).double()
        m64.weight.copy_(w)
        hf64 = m64(x)                       # the module on float64 input: it casts to float32 inside
        # The module's own three lines without its cast to float32: the float64 reference.
        ref64 = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    save(out, f"{name}_x", x)
    save(out, f"{name}_weight", w)
    save(out, f"{name}_eps", [eps])
    save(out, f"{name}_ref64", ref64)
    save(out, f"{name}_hf32", hf32)
    print(f"{name}: |hf32 - ref64| {max_dev(hf32, ref64):.3g}, |hf64 (casts to f32) - ref64| {max_dev(hf64, ref64):.3g}")


def to_heads(x, heads, d):   # [T, heads * d] -> [1, heads, T, d], apply_rotary_pos_emb's layout
    return x.view(x.shape[0], heads, d).transpose(0, 1)[None]


def from_heads(x):           # [1, heads, T, d] -> [T, heads * d]
    return x[0].transpose(0, 1).reshape(x.shape[2], -1)


def rotary(out, name, d, heads, kv_heads, theta, factor, max_pos):
    config = LlamaConfig(hidden_size=heads * d, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=d,
                         rope_theta=theta, max_position_embeddings=max_pos,
                         rope_scaling=None if factor is None else {"rope_type": "linear", "factor": factor})
    rope = LlamaRotaryEmbedding(config=config)
    pos = torch.tensor([POSITIONS], dtype=torch.int64)   # [1, T]
    T = len(POSITIONS)
    q = f32(torch.randn(T, heads * d, dtype=torch.float64))
    k = f32(torch.randn(T, kv_heads * d, dtype=torch.float64))
    with torch.no_grad():
        # float32 run: transformers as a float32 model runs it
        cos32, sin32 = rope(q.float(), pos)                              # [1, T, d]
        q32, k32 = apply_rotary_pos_emb(to_heads(q.float(), heads, d), to_heads(k.float(), kv_heads, d), cos32, sin32)
        # float64 run: the module after .double() still computes its angles and cos/sin in float32
        rope64 = LlamaRotaryEmbedding(config=config).double()
        cos64, sin64 = rope64(q, pos)
        q64, _ = apply_rotary_pos_emb(to_heads(q, heads, d), to_heads(k, kv_heads, d), cos64, sin64)
        # float64 reference: the module's float32 angles (its own inv_freq and product), cos/sin in float64
        angles = (rope.inv_freq.float()[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)   # [1, T, d/2]
        emb = torch.cat((angles, angles), dim=-1).double()
        qr, kr = apply_rotary_pos_emb(to_heads(q, heads, d), to_heads(k, kv_heads, d), emb.cos(), emb.sin())
        # measured only: exact angles (inv_freq and product in float64), what a "double table" would give
        inv64 = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)) / (factor or 1.0)
        ex = (pos[0].double()[:, None] * inv64[None, :])[None]
        ex = torch.cat((ex, ex), dim=-1)
        qe, _ = apply_rotary_pos_emb(to_heads(q, heads, d), to_heads(k, kv_heads, d), ex.cos(), ex.sin())
    h = d // 2
    assert torch.equal(cos32[0, :, :h], cos32[0, :, h:]) and torch.equal(sin32[0, :, :h], sin32[0, :, h:])
    save(out, f"{name}_params", [d, theta, factor or 1.0, max_pos])
    save(out, f"{name}_positions", pos[0])
    save(out, f"{name}_q", q)
    save(out, f"{name}_k", k)
    save(out, f"{name}_cos_hf32", cos32[0, :, :h])
    save(out, f"{name}_sin_hf32", sin32[0, :, :h])
    save(out, f"{name}_q_hf32", from_heads(q32))
    save(out, f"{name}_k_hf32", from_heads(k32))
    save(out, f"{name}_q_hf64", from_heads(q64))
    save(out, f"{name}_q_ref64", from_heads(qr))
    save(out, f"{name}_k_ref64", from_heads(kr))
    print(f"{name}: q |hf32 - ref64| {max_dev(q32, qr):.3g}, |hf64 - ref64| {max_dev(q64, qr):.3g}, "
          f"|exact angles - hf32| {max_dev(qe, q32):.3g}, |exact angles - hf64| {max_dev(qe, q64):.3g}")


def mlp(out, name, rows, d_model, d_ff):
    config = LlamaConfig(hidden_size=d_model, intermediate_size=d_ff, hidden_act="silu", mlp_bias=False)
    m64 = LlamaMLP(config).double()
    with torch.no_grad():
        for lin in (m64.gate_proj, m64.up_proj, m64.down_proj):
            lin.weight.copy_(f32(lin.weight * 2))   # wider than the default init: silu's both tails
        x = f32(2 * torch.randn(rows, d_model, dtype=torch.float64))
        out64 = m64(x)
        m32 = LlamaMLP(config)
        m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
        out32 = m32(x.float())
    save(out, f"{name}_x", x)
    save(out, f"{name}_gate_proj", m64.gate_proj.weight)
    save(out, f"{name}_up_proj", m64.up_proj.weight)
    save(out, f"{name}_down_proj", m64.down_proj.weight)
    save(out, f"{name}_out64", out64)
    save(out, f"{name}_out32", out32)
    print(f"{name}: |out32 - out64| {max_dev(out32, out64):.3g}, max |out64| {float(out64.abs().max()):.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tests/fixtures/blocks"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(13)
    # rows of very different scales: at 1e-3, mean(x^2) ~ 1e-6 = eps, so eps's place shows
    rms_norm(args.out, "rms_d64", 6, 64, [1e-3, 0.1, 1, 1, 10, 300], 1e-6)
    rms_norm(args.out, "rms_d13", 3, 13, [0.01, 1, 5], 1e-5)
    for name, case in ROTARY_CASES.items():
        rotary(args.out, name, *case)
    mlp(args.out, "mlp", 7, 16, 40)


if __name__ == "__main__":
    main()
