"""What the fixture scripts of tools/hf share: the torch 1.13 workaround, and how they write files.

Imported by make_hf_fixtures.py / make_lm_fixtures.py (run as scripts, so this folder is on
sys.path). stub_fsdp() must run before transformers is imported.
"""
import json
import os
import sys
import types


def stub_fsdp():
    """transformers 4.46 imports torch.distributed.fsdp in generate() and in M2M100's encoder only to
    ask "is this module FSDP-wrapped?"; under Debian's torch 1.13 on Python 3.11 that import fails
    (a dataclass with a mutable default). A stand-in class answers "no" for every module."""
    try:
        import torch.distributed.fsdp  # noqa: F401
    except Exception:
        m = types.ModuleType("torch.distributed.fsdp")

        class FullyShardedDataParallel:  # noqa: D401 - a type nothing is an instance of
            pass

        m.FullyShardedDataParallel = FullyShardedDataParallel
        sys.modules["torch.distributed.fsdp"] = m
        import torch.distributed
        torch.distributed.fsdp = m


def stored_float64(model):
    """A float64 copy whose parameters and buffers are exactly the float32 values that are stored."""
    m = type(model)(model.config)
    m.load_state_dict(model.state_dict())
    return m.double().eval()


def gc_record(gc):
    """A GenerationConfig as reference.json records it: sorted keys, no version."""
    d = gc.to_dict()
    d.pop("transformers_version", None)
    return {k: d[k] for k in sorted(d)}


def write_ids(path, rows):
    """Token ids as text: one sequence a line, ids separated by single spaces."""
    with open(path, "w") as f:
        for r in rows:
            f.write(" ".join(str(int(t)) for t in r) + "\n")


def write_json(path, obj, indent=1):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def dir_size(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
