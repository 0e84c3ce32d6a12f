"""The PyTorch reference module of docs/model-format.md, and its exporter.

This is the one definition of "what eigenformer must compute" on the Python side: the fixture
generator (make_fixtures.py), the G2P trainer (train_g2p.py) and the comparison scripts all build
their models from here, and export them with `export()`.

    from reference import Seq2Seq, export
    model = Seq2Seq(config)          # config: dict with the keys of model-format.md
    ...train...
    export(model, "model.safetensors", dtype="F32")

Dense layers are plain `torch.nn.Transformer` layers. Mixture-of-experts layers replace the
feed-forward block (`linear1`/`linear2`) by `moe.gate`, `moe.noise` (noisy_top_k) and
`moe.experts.e.linear1/linear2`, as the spec names them.
"""
import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    "activation": "relu",
    "norm_first": False,
    "layer_norm_eps": 1e-5,
    "positional_encoding": "sinusoidal",
    "max_positions": 1024,
    "sinusoidal_variant": "paper",
    "position_offset": 0,
    "scale_embedding": True,
    "encoder_final_norm": True,
    "decoder_final_norm": True,
    "share_embeddings": False,
    "tie_output": False,
    "moe": None,
}
REQUIRED = ["architecture", "d_model", "n_heads", "d_ff", "n_encoder_layers", "n_decoder_layers",
            "src_vocab_size", "tgt_vocab_size", "bos_id", "eos_id", "pad_id"]


def full_config(config):
    """config with every default filled in; raises on a missing required key."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ValueError(f"config: missing keys {missing}")
    out = dict(DEFAULTS)
    out.update(config)
    return out


def sinusoidal_table(n_positions, d_model, variant="paper", offset=0, dtype=torch.float64):
    """[n_positions, d_model] table of model-format.md 'Semantics', computed in float64."""
    p = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1) + offset  # [n, 1]
    h = d_model // 2
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    if variant == "paper":
        i2 = torch.arange(0, d_model, 2, dtype=torch.float64)            # 2i
        angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), i2 / d_model)
        table[:, 0::2] = torch.sin(angle)
        table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    elif variant == "marian":
        i = torch.arange(h, dtype=torch.float64)
        angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * i / d_model)
        table[:, :h] = torch.sin(angle)
        table[:, h:2 * h] = torch.cos(angle)
    elif variant == "tensor2tensor":
        i = torch.arange(h, dtype=torch.float64)
        t = torch.exp(-i * math.log(10000.0) / (h - 1))
        table[:, :h] = torch.sin(p * t)
        table[:, h:2 * h] = torch.cos(p * t)
    else:
        raise ValueError(f"sinusoidal_variant: unknown '{variant}'")
    return table.to(dtype)


class Expert(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)


class MoE(nn.Module):
    """Mixture-of-experts feed-forward block (Shazeer et al. 2017), as model-format.md defines it.

    `noise`: None (inference default: noisy_top_k then equals top_k) or a tensor eps of shape
    [..., n_experts] drawn by the caller, so that a test can feed the same noise to C++.
    `last_choice` keeps the chosen expert ids [..., k] of the last call, for routing fixtures.
    """

    def __init__(self, d_model, d_ff, n_experts, top_k, gate, activation):
        super().__init__()
        if gate not in ("softmax", "top_k", "noisy_top_k"):
            raise ValueError(f"moe.gate: unknown '{gate}'")
        self.gate_kind, self.top_k, self.activation = gate, top_k, activation
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        if gate == "noisy_top_k":
            self.noise = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList([Expert(d_model, d_ff) for _ in range(n_experts)])
        self.noise_eps = None
        self.last_choice = None

    def expert_ff(self, e, x):
        ex = self.experts[e]
        act = F.relu if self.activation == "relu" else F.gelu
        return ex.linear2(act(ex.linear1(x)))

    def forward(self, x):                                    # x [..., d_model]
        h = self.gate(x)                                     # [..., E]
        if self.gate_kind == "noisy_top_k" and self.noise_eps is not None:
            h = h + self.noise_eps * F.softplus(self.noise(x))
        if self.gate_kind == "softmax":
            g = torch.softmax(h, dim=-1)                     # [..., E]
            self.last_choice = None
            return sum(g[..., e:e + 1] * self.expert_ff(e, x) for e in range(len(self.experts)))
        top_v, top_i = torch.topk(h, self.top_k, dim=-1)     # [..., k]
        self.last_choice = top_i
        g = torch.softmax(top_v, dim=-1)                     # [..., k]
        y = torch.zeros_like(x)
        for e in range(len(self.experts)):
            w = (g * (top_i == e)).sum(-1, keepdim=True)     # [..., 1], 0 where e not chosen
            chosen = (top_i == e).any(-1)
            if chosen.any():
                y = y + torch.where(chosen.unsqueeze(-1), w * self.expert_ff(e, x), torch.zeros_like(x))
        return y


def _replace_ff_with_moe(layer, moe):
    """Turn an _MoE*Layer into its MoE form: drop linear1/linear2, add `moe` (its _ff_block calls it).

    (_ff_block is a method of the subclasses, not a per-instance lambda: a lambda bound to the layer
    survived copy.deepcopy pointing at the ORIGINAL layer's experts, and made the model unpicklable.)
    """
    del layer.linear1
    del layer.linear2
    layer.moe = moe


class _MoEEncoderLayer(nn.TransformerEncoderLayer):
    """Encoder layer whose forward never takes PyTorch's fused fast path (which needs linear1)."""

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _ff_block(self, x):
        return self.moe(x)


class _MoEDecoderLayer(nn.TransformerDecoderLayer):
    """Decoder layer whose feed-forward block is `self.moe`."""

    def _ff_block(self, x):
        return self.moe(x)


class Seq2Seq(nn.Module):
    """The reference module of model-format.md (batch_first, dropout 0)."""

    def __init__(self, config, generator_bias=True):
        super().__init__()
        c = self.config = full_config(config)
        d = c["d_model"]
        if not c["share_embeddings"]:
            self.src_embed = nn.Embedding(c["src_vocab_size"], d)
        self.tgt_embed = nn.Embedding(c["tgt_vocab_size"], d)
        if c["positional_encoding"] == "learned":
            self.src_pos = nn.Embedding(c["max_positions"], d)
            self.tgt_pos = nn.Embedding(c["max_positions"], d)
        self.transformer = nn.Transformer(
            d, c["n_heads"], c["n_encoder_layers"], c["n_decoder_layers"], c["d_ff"], dropout=0.0,
            activation=c["activation"], layer_norm_eps=c["layer_norm_eps"], batch_first=True,
            norm_first=c["norm_first"])
        # The nested-tensor fast path turns padded positions into zeros and cannot run MoE layers;
        # the reference is the plain dense computation.
        self.transformer.encoder.enable_nested_tensor = False
        if not c["encoder_final_norm"]:
            self.transformer.encoder.norm = None
        if not c["decoder_final_norm"]:
            self.transformer.decoder.norm = None
        moe = c["moe"]
        if moe:
            for side, indices in (("encoder", moe.get("encoder_layers", [])),
                                  ("decoder", moe.get("decoder_layers", []))):
                stack = getattr(self.transformer, side).layers
                for i in indices:
                    cls = _MoEEncoderLayer if side == "encoder" else _MoEDecoderLayer
                    new = cls(d, c["n_heads"], c["d_ff"], dropout=0.0, activation=c["activation"],
                              layer_norm_eps=c["layer_norm_eps"], batch_first=True,
                              norm_first=c["norm_first"])
                    new.load_state_dict(stack[i].state_dict())
                    stack[i] = new
                    _replace_ff_with_moe(stack[i], MoE(d, c["d_ff"], moe["n_experts"], moe["top_k"],
                                                       moe["gate"], c["activation"]))
        if not c["tie_output"]:
            self.generator = nn.Linear(d, c["tgt_vocab_size"], bias=generator_bias)
        elif generator_bias:
            self.generator_bias = nn.Parameter(torch.zeros(c["tgt_vocab_size"]))
        if c["positional_encoding"] == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(c["max_positions"], d, c["sinusoidal_variant"],
                                                        c["position_offset"]), persistent=False)

    def moe_layers(self):
        """Every MoE block, as (scope, module)."""
        return [(n[: -len(".moe")] if n.endswith(".moe") else n, m)
                for n, m in self.named_modules() if isinstance(m, MoE)]

    def embed(self, tokens, side):                           # tokens [B, T] -> [B, T, d_model]
        c = self.config
        table = self.tgt_embed if (side == "tgt" or c["share_embeddings"]) else self.src_embed
        x = table(tokens)
        if c["scale_embedding"]:
            x = x * math.sqrt(c["d_model"])
        T = tokens.shape[1]
        if c["positional_encoding"] == "learned":
            pos = torch.arange(T) + c["position_offset"]
            x = x + getattr(self, f"{side}_pos")(pos).unsqueeze(0)
        else:
            x = x + self.pe[:T].to(x.dtype).unsqueeze(0)
        return x

    @staticmethod
    def padding_mask(lengths, T):                            # [B] -> [B, T] bool, True = padded
        return torch.arange(T).unsqueeze(0) >= torch.as_tensor(lengths).unsqueeze(1)

    def encode(self, src, src_lengths):                      # src [B, S] -> memory [B, S, d_model]
        mask = self.padding_mask(src_lengths, src.shape[1])
        return self.transformer.encoder(self.embed(src, "src"), src_key_padding_mask=mask)

    def decode(self, memory, src_lengths, tgt, tgt_lengths):  # -> decoder output [B, T, d_model]
        T = tgt.shape[1]
        causal = torch.triu(torch.full((T, T), float("-inf"), dtype=memory.dtype), diagonal=1)
        return self.transformer.decoder(
            self.embed(tgt, "tgt"), memory, tgt_mask=causal,
            tgt_key_padding_mask=self.padding_mask(tgt_lengths, T),
            memory_key_padding_mask=self.padding_mask(src_lengths, memory.shape[1]))

    def logits(self, y):                                     # [B, T, d_model] -> [B, T, V]
        if self.config["tie_output"]:
            out = y @ self.tgt_embed.weight.t()
            return out + self.generator_bias if hasattr(self, "generator_bias") else out
        return self.generator(y)

    def forward(self, src, src_lengths, tgt, tgt_lengths):   # -> log-probabilities [B, T, V]
        memory = self.encode(src, src_lengths)
        return torch.log_softmax(self.logits(self.decode(memory, src_lengths, tgt, tgt_lengths)), -1)


_DTYPES = {"F32": (torch.float32, torch.float32), "F64": (torch.float64, torch.float64),
           "F16": (torch.float16, torch.int16), "BF16": (torch.bfloat16, torch.int16)}


def state_tensors(model):
    """The tensors of the file, named as model-format.md says (generator bias under its file name)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "generator_bias":
            name = "generator.bias"
        out[name] = t.detach()
    return out


def write_safetensors(path, tensors, metadata, dtype="F32"):
    """Writes `tensors` (name -> torch tensor) with `metadata` (str -> str) in the safetensors layout."""
    torch_dtype, view_dtype = _DTYPES[dtype]
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        t = tensors[name].to(torch_dtype).contiguous()
        raw = t.view(view_dtype).numpy().tobytes() if view_dtype != torch_dtype else t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)                  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def export(model, path, dtype="F32", extra_metadata=None):
    """Writes `model` (a Seq2Seq, or anything with .config and the same state_dict names) to `path`."""
    cfg = {k: v for k, v in model.config.items()}
    meta = {"format": "eigenformer", "config": json.dumps(cfg)}
    if extra_metadata:
        meta.update(extra_metadata)
    write_safetensors(path, state_tensors(model), meta, dtype)
