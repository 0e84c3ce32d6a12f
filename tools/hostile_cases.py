#!/usr/bin/env python3
"""Hostile inputs to the `eigenformer` tool, as a new user or an attacker would try them.

    tools/hostile_cases.py build/release/examples/eigenformer [--markdown]

Builds each hostile file from a committed fixture (Python's standard library only, no download),
runs the tool on it with a time limit, and checks what issue 10 asks of every case: a clean exit
(no signal, no hang), the expected status, stderr one line of at most 400 characters naming the
culprit, nothing on stdout for an error, no output file written half; cases that must succeed are
checked for their time and peak memory instead. Prints one row per case and exits 1 if any case
fails its check. The library's own tests cover the same ground at the API level (tests/test_*.cpp);
this is the view from the command line, and the table in issue 10's note (issue 12 added the text cases).
"""
import json
import math
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "postln_relu_paper_f32")
MAX_MESSAGE = 400  # characters of stderr an error may take


def read_model(path):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path, header_text, data=b""):
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_text)) + header_text + data)


def write_model(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    write_raw(path, text, data)


def with_config(header, **changes):
    h = json.loads(json.dumps(header))
    config = json.loads(h["__metadata__"]["config"])
    config.update(changes)
    h["__metadata__"]["config"] = json.dumps(config)
    return h


def poke_f32(data, header, tensor, value):
    """`data` with the first element of `tensor` (F32) set to `value`."""
    begin = header[tensor]["data_offsets"][0]
    return data[:begin] + struct.pack("<f", value) + data[begin + 4 :]


class Case:
    def __init__(self, name, args, status, needle=None, setup=None, stdout=None, out_file=None, limit=30,
                 check=None):
        self.name, self.args, self.status, self.needle = name, args, status, needle
        self.setup, self.stdout, self.out_file, self.limit, self.check = setup, stdout, out_file, limit, check


def run_case(tool, case, tmp):
    """Runs one case; returns (ok, status text, seconds, peak MB, message, why)."""
    if case.setup:
        case.setup()
    out_path, err_path = os.path.join(tmp, "case.out"), os.path.join(tmp, "case.err")
    with open(case.stdout or out_path, "wb") as out, open(err_path, "wb") as err_file:
        start = time.monotonic()
        child = subprocess.Popen([tool] + case.args, stdout=out, stderr=err_file)
        killed = []
        timer = threading.Timer(case.limit, lambda: (killed.append(True), child.kill()))
        timer.start()
        _, raw, usage = os.wait4(child.pid, 0)  # this child's own peak memory, not the largest so far
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(raw)
        seconds = time.monotonic() - start
    if killed:
        return False, "hang", seconds, 0, "", f"still running after {case.limit} s"
    peak = usage.ru_maxrss / 1024
    with open(err_path, "rb") as f:
        err = f.read().decode(errors="replace")
    stdout = b""
    if not case.stdout:
        with open(out_path, "rb") as f:
            stdout = f.read()
    code = child.returncode
    status = f"signal {-code}" if code < 0 else str(code)
    why = []
    if code != case.status:
        why.append(f"status {status}, expected {case.status}")
    if case.status != 0:
        if err.count("\n") != 1 or not err.endswith("\n"):
            why.append(f"stderr has {err.count(chr(10))} lines")
        if len(err) > MAX_MESSAGE:
            why.append(f"stderr is {len(err)} characters")
        if case.needle and case.needle not in err:
            why.append(f"stderr lacks '{case.needle}'")
        if stdout:
            why.append("wrote to stdout")
    if case.out_file and case.status != 0 and os.path.exists(case.out_file):
        why.append(f"{case.out_file} exists")
    if case.check:
        problem = case.check(code, seconds)
        if problem:
            why.append(problem)
    message = err.strip().replace("|", "\\|")
    return not why, status, seconds, peak, message, "; ".join(why)


def cases(tmp, tool):
    hf = os.path.join(ROOT, "tests", "fixtures", "hf", "marian")
    text_src = os.path.join(hf, "text_src.txt")

    def text_dir(name):
        """A fresh copy of the marian fixture (model and tokenizer files) to damage."""
        d = os.path.join(tmp, "text_" + name)
        if not os.path.isdir(d):
            shutil.copytree(hf, d)
        return d

    model = os.path.join(FIXTURE, "model.safetensors")
    src = os.path.join(FIXTURE, "src.txt")
    tgt = os.path.join(FIXTURE, "tgt.txt")
    header, data = read_model(model)
    p = lambda name: os.path.join(tmp, name)

    write_raw(p("nested_header.safetensors"), b"[" * 70000)
    h = json.loads(json.dumps(header))
    h["__metadata__"]["config"] = "[" * 70000 + "]" * 70000
    write_model(p("nested_config.safetensors"), h, data)
    write_raw(p("unterminated.safetensors"), b'{"' + b"a" * (5 << 20))
    write_model(p("positions_1e8.safetensors"), with_config(header, max_positions=10**8), data)
    write_model(p("positions_max.safetensors"), with_config(header, max_positions=2**31 - 1), data)
    write_model(p("nan.safetensors"), header, poke_f32(data, header, "generator.weight", math.nan))
    write_model(p("inf.safetensors"), header, poke_f32(data, header, "transformer.encoder.layers.0.linear1.weight", math.inf))
    write_model(p("pad.safetensors"), with_config(header, pad_id=100000), data)
    h = json.loads(json.dumps(header))
    h["huge"] = {"dtype": "F32", "shape": [2**32, 2**32 - 1, 0], "data_offsets": [len(data), len(data)]}
    write_model(p("numel.safetensors"), h, data)
    h = json.loads(json.dumps(header))
    h["overflow"] = {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [len(data), len(data)]}
    write_model(p("overflow.safetensors"), h, data)
    with open(model, "rb") as f:
        whole = f.read()
    with open(p("truncated.safetensors"), "wb") as f:
        f.write(whole[: len(whole) - 100])
    os.mkfifo(p("fifo.safetensors"))
    with open(p("long_token.txt"), "w") as f:
        f.write("3 4\n5 " + "7" * (1 << 20) + "\n")
    with open(p("nan_logits.npy"), "wb") as f:
        body = struct.pack("<3f", 0.5, math.nan, 1.0)
        head = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"
        head += " " * (-(10 + len(head) + 1) % 64) + "\n"
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode() + body)
    with open(p("readonly.npy"), "wb") as f:
        f.write(b"keep me")
    os.chmod(p("readonly.npy"), stat.S_IRUSR)
    with open(p("target.npy"), "wb") as f:
        f.write(b"old")
    if not os.path.lexists(p("link.npy")):
        os.symlink("target.npy", p("link.npy"))

    def unchanged(path, content):
        def check(_, __):
            with open(path, "rb") as f:
                return None if f.read() == content else f"{path} changed"
        return check

    def fast(limit_s):
        return lambda r, s: None if s < limit_s else f"took {s:.1f} s, expected under {limit_s}"

    def written_through(_, __):
        if not os.path.islink(p("link.npy")):
            return "the link was replaced by a file"
        return None if os.path.getsize(p("target.npy")) > 100 else "target.npy was not written"

    m = ["--model", model]
    gen = ["generate"] + m + ["--src-file", src]
    return [
        Case("header: JSON nested 70,000 deep", ["info", "--model", p("nested_header.safetensors")], 1, "nested_header.safetensors"),
        Case("config: JSON nested 70,000 deep", ["info", "--model", p("nested_config.safetensors")], 1, "nested_config.safetensors"),
        Case("header: 5 MB unterminated string", ["info", "--model", p("unterminated.safetensors")], 1, "unterminated.safetensors"),
        Case("model file truncated by 100 bytes", ["info", "--model", p("truncated.safetensors")], 1, "truncated.safetensors"),
        Case("--model is a FIFO", ["info", "--model", p("fifo.safetensors")], 1, "fifo.safetensors", limit=10),
        Case("--model is a folder", ["info", "--model", tmp], 1, tmp),
        Case("--model= (empty)", ["info", "--model="], 2, "--model: empty value"),
        Case("shape [2^32, 2^32-1, 0]", ["info", "--model", p("numel.safetensors")], 1, "huge"),
        Case("shape [2^40, 2^40]: element count overflows", ["info", "--model", p("overflow.safetensors")], 1, "overflow"),
        Case("NaN weight", ["info", "--model", p("nan.safetensors")], 1, "generator.weight"),
        Case("Inf weight", gen[:1] + ["--model", p("inf.safetensors"), "--src-file", src], 1, "linear1.weight"),
        Case("pad_id 100000", ["info", "--model", p("pad.safetensors")], 1, "pad_id"),
        Case("max_positions 10^8: generate", ["generate", "--model", p("positions_1e8.safetensors"), "--src-file", src],
             0, check=fast(5)),
        Case("max_positions 2^31-1: generate", ["generate", "--model", p("positions_max.safetensors"), "--src-file", src],
             0, check=fast(5)),
        Case("--beam-size 1000000", gen + ["--beam-size", "1000000"], 1, "KV cache needs"),
        Case("--beam-size 1000000 --max-cache-bytes 1T", gen + ["--beam-size", "1000000", "--max-cache-bytes", "1000000000000"],
             1, "KV cache needs"),
        Case("--threads 10000", gen + ["--threads", "10000"], 0, check=fast(5)),
        Case("token of 1 MB", ["generate"] + m + ["--src-file", p("long_token.txt")], 1, "long_token.txt:2"),
        Case("generate > /dev/full", gen, 1, "standard output", stdout="/dev/full"),
        Case("info > /dev/full", ["info"] + m, 1, "standard output", stdout="/dev/full"),
        Case("sample > /dev/full", ["sample", "--logits", os.path.join(tmp, "ok_logits.npy"), "--n", "5"], 1,
             "standard output", stdout="/dev/full",
             setup=lambda: open(p("ok_logits.npy"), "wb").write(open(p("nan_logits.npy"), "rb").read().replace(
                 struct.pack("<f", math.nan), struct.pack("<f", 0.25)))),
        Case("sample: NaN logit", ["sample", "--logits", p("nan_logits.npy"), "--n", "3"], 1, "nan_logits.npy"),
        Case("score --out read-only file", ["score"] + m + ["--src-file", src, "--tgt-file", tgt, "--out", p("readonly.npy")],
             1, "readonly.npy", check=unchanged(p("readonly.npy"), b"keep me")),
        Case("score --out symlink", ["score"] + m + ["--src-file", src, "--tgt-file", tgt, "--out", p("link.npy")], 0,
             check=written_through),
        # Text (translate): hostile tokenizer files in a copy of the marian fixture, hostile text.
        Case("translate: SentencePiece model of random bytes", ["translate", "--model", text_dir("bad_spm"),
                                                               "--src-file", text_src], 1, "source.spm",
             setup=lambda: open(os.path.join(text_dir("bad_spm"), "source.spm"), "wb").write(os.urandom(4096))),
        Case("translate: tokenizer_config.json nested 70,000 deep", ["translate", "--model", text_dir("nested_tc"),
                                                                    "--src-file", text_src], 1, "tokenizer_config.json",
             setup=lambda: open(os.path.join(text_dir("nested_tc"), "tokenizer_config.json"), "w").write("[" * 70000)),
        Case("translate: vocab.json id 2^31", ["translate", "--model", text_dir("big_id"), "--src-file", text_src], 1,
             "vocab.json", setup=lambda: open(os.path.join(text_dir("big_id"), "vocab.json"), "w").write(
                 '{"</s>": 0, "<unk>": 2147483648}')),
        Case("translate: binary text (NUL, invalid UTF-8)", ["translate", "--model", text_dir("ok"), "--src-file",
                                                             p("binary.txt"), "--max-new-tokens", "4"], 0,
             setup=lambda: open(p("binary.txt"), "wb").write(b"\x00\xff\xfe a \xc3\x28 red\x00cat\n\x80\x80\n"),
             check=fast(10)),
        Case("score --out in a missing folder", ["score"] + m + ["--src-file", src, "--tgt-file", tgt, "--out",
                                                                p("no/such/dir.npy")], 1, "no/such/dir.npy",
             out_file=p("no/such/dir.npy")),
    ]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    tool = os.path.abspath(sys.argv[1])
    markdown = "--markdown" in sys.argv[2:]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        all_cases = cases(tmp, tool)
        if markdown:
            print("| case | status | s | peak MB | stderr | check |\n|---|---|---|---|---|---|")
        for c in all_cases:
            ok, status, seconds, peak, message, why = run_case(tool, c, tmp)
            failed += not ok
            verdict = "ok" if ok else "FAIL: " + why
            short = message if len(message) <= 160 else message[:157] + "..."
            if markdown:
                print(f"| {c.name} | {status} | {seconds:.2f} | {peak:.0f} | `{short}` | {verdict} |")
            else:
                print(f"{c.name:48} {status:>9} {seconds:6.2f}s  {verdict}\n    {short}")
        os.chmod(os.path.join(tmp, "readonly.npy"), stat.S_IRUSR | stat.S_IWUSR)
    print(f"{len(all_cases) - failed} of {len(all_cases)} cases as required")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
