"""Mutation fuzzer for ferrograd's two readers of untrusted files.

- safetensors: ``_core.loads_safetensors`` (the Rust core, on top of the
  ``safetensors`` crate), and for the inputs that decode, the model paths
  behind it: ``serialization.loads`` / ``fg.load`` (architecture JSON,
  optimizer and scheduler state) and ``load_state_dict`` / ``load_weights``;
- IDX (MNIST): ``datasets._parse_idx``, ``datasets._gunzip`` and ``read_idx``.

A bad file must raise ``ValueError`` (ferrograd's ShapeError, NonFiniteError
and StateError are ValueErrors). Anything else is a *finding*: another
exception type (``fg.InternalError`` is a Rust panic), a process killed by
a signal (Rust abort, segfault), an execution over 1 s (hang), or an input
that makes the process allocate over 1 GB (max-RSS delta; the workers also
run under an address-space limit, so a runaway allocation fails fast).

It is libFuzzer-style but without coverage feedback: structure-aware
mutations of a corpus of valid seeds (files written by ``fg.save_file``,
``model.save`` with optimizer and scheduler, ``model.save_weights``, hand
built F16/BF16/U8/I32/... files, IDX files of every type code, plain and
gzipped) reach past the first checks into the deep code.

Each worker chunk runs in a child process. Before every execution the child
copies the input into a shared memory-mapped state file, so when a child
dies by a signal, or stops making progress (watchdog), the parent still has
the input; it saves it and resumes the chunk after it. Runs are
deterministic for a given ``--seed``.

Usage::

    python benches/fuzz_readers.py --execs 1000000 --target both --jobs 2 --seed 0

Exit status: 0 when there were no findings, 1 otherwise. Findings are saved
(input ``.bin`` plus a ``.txt`` with the traceback) under ``--findings``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import mmap
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FINDINGS = REPO / "target" / "fuzz-findings"

#: Largest mutant (bytes); the state file holds one input of at most this.
MAX_LEN = 1 << 20
#: An execution slower than this is reported as a hang.
SLOW_S = 1.0
#: A child that makes no progress for this long is killed (hang).
WATCHDOG_S = 20.0
#: An input that raises max RSS by more than this is reported.
RSS_LIMIT = 1 << 30
#: Address-space headroom of a worker above its size after start-up.
AS_HEADROOM = 3 << 30
#: Executions per child process.
CHUNK = 50_000

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x22, 0x5B, 0x7B)
INTERESTING_INTS = (
    0, 1, 2, 3, 4, 7, 8, 16, 255, 256, 4095, 65535, 65536,
    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
    2**64 - 1, 2**64, 2**65, 10**30, 104_857_600, 104_857_601,
    -1, -2, -(2**31), -(2**63), -(2**64),
)  # fmt: skip
DTYPES = (
    "F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64",
    "BOOL", "C64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",
    "f32", "F128", "Q8", "", "F32 ", "\u00e9",
)  # fmt: skip
DTYPE_SIZE = {
    "F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4,
    "F16": 2, "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip
ODD_VALUES: tuple[Any, ...] = (
    None, True, False, "", "x", "nan", "inf", "-inf", [], {}, [1], {"a": 1},
    0.5, -0.0, 1e308, -1e308, float("nan"), float("inf"), "\u00e9\u0000", "SGD", "Adam",
    "Dense", "float64", "float16",
)  # fmt: skip
IDX_CODES = (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)
IDX_SIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
GZIP_MAGIC = b"\x1f\x8b"


# ------------------------------------------------------------------ seeds


def _raw_safetensors(tensors: list[tuple[str, str, list[int], bytes]], meta: Any = None) -> bytes:
    """A safetensors file built by hand (any dtype name, any metadata)."""
    header: dict[str, Any] = {}
    if meta is not None:
        header["__metadata__"] = meta
    body = b""
    for name, dtype, shape, data in tensors:
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(body), len(body) + len(data)],
        }
        body += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def safetensors_seeds() -> list[bytes]:
    """Valid safetensors files: what ferrograd writes plus hand-built dtypes."""
    import numpy as np

    import ferrograd as fg
    from ferrograd import lr_scheduler, serialization

    rng = np.random.default_rng(0)
    out: list[bytes] = []
    with tempfile.TemporaryDirectory(prefix="fg-fuzz-seeds-") as tmp:
        p = Path(tmp) / "s.safetensors"
        fg.save_file(
            {
                "w": rng.normal(size=(2, 3)).astype(np.float32),
                "b": rng.normal(size=4),
                "n": np.int64(7),
                "idx": np.arange(5, dtype=np.int64),
                "e": np.zeros((0, 3), np.float32),
            },
            p,
            {"format": "pt", "note": "seed"},
        )
        out.append(p.read_bytes())
        fg.save_file({"x": np.float32([1.5])}, p)
        out.append(p.read_bytes())

        X = rng.normal(size=(8, 4)).astype(np.float32)
        y = np.arange(8) % 3
        mlp = fg.Sequential(
            [
                fg.layers.Dense(4, 3),
                fg.layers.BatchNorm1D(3),
                fg.layers.ReLU(),
                fg.layers.Dense(3, 3),
            ],
            seed=1,
        )
        opt = fg.optim.Adam(mlp.parameters(), lr=1e-3)
        sched = lr_scheduler.StepLR(opt, step_size=1)
        mlp.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, verbose=0, scheduler=sched)
        mlp.save(p, optimizer=opt, scheduler=sched)
        out.append(p.read_bytes())
        mlp.save_weights(p)
        out.append(p.read_bytes())
        out.append(serialization.dumps(mlp))

        Xc = rng.normal(size=(4, 1, 6, 6))
        cnn = fg.Sequential(
            [
                fg.layers.Conv2D(1, 2, 3),
                fg.layers.BatchNorm2D(2),
                fg.layers.ReLU(),
                fg.layers.MaxPool2D(2),
                fg.layers.Flatten(),
                fg.layers.Dropout(0.1),
                fg.layers.Dense(8, 2),
            ],
            seed=2,
            dtype="float64",
        )
        sgd = fg.optim.SGD(cnn.parameters(), lr=0.1, momentum=0.9)
        s1 = lr_scheduler.LinearLR(sgd, start_factor=0.5, total_iters=2)
        s2 = lr_scheduler.ExponentialLR(sgd, gamma=0.9)
        seq = lr_scheduler.SequentialLR(sgd, [s1, s2], milestones=[1])
        cnn.fit(Xc, np.arange(4) % 2, loss="cross_entropy", optimizer=sgd, epochs=1, verbose=0)
        seq.step()
        cnn.save(p, optimizer=sgd, scheduler=seq)
        out.append(p.read_bytes())

    half = struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)
    out.append(
        _raw_safetensors(
            [
                ("h", "F16", [2, 2], half),
                ("bf", "BF16", [3], bytes.fromhex("803f0040c0bf")),
                ("u", "U8", [5], bytes(range(5))),
                ("i", "I32", [2], struct.pack("<2i", -5, 2**31 - 1)),
            ],
            {"format": "pt"},
        )
    )
    out.append(
        _raw_safetensors(
            [
                ("a", "I8", [2], b"\x80\x7f"),
                ("b", "I16", [1], struct.pack("<h", -3)),
                ("c", "U16", [1], struct.pack("<H", 65535)),
                ("d", "U32", [1], struct.pack("<I", 2**32 - 1)),
                ("e", "U64", [1], struct.pack("<Q", 2**62)),
                ("s", "F64", [], struct.pack("<d", 2.5)),
            ]
        )
    )
    out.append(_raw_safetensors([("flag", "BOOL", [2], b"\x00\x01")]))
    out.append(_raw_safetensors([], {"only": "metadata"}))
    return out


def _idx(code: int, dims: list[int], data: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def idx_seeds() -> list[bytes]:
    """Valid IDX files of every type code and rank, plain and gzipped."""
    rnd = random.Random(1234)
    out = []
    shapes = ([3, 2, 2], [5], [2, 3], [], [0, 4], [1, 1, 1, 1])
    for i, code in enumerate(IDX_CODES):
        for shape in (shapes[i % len(shapes)], [4]):
            n = 1
            for d in shape:
                n *= d
            data = bytes(rnd.randrange(256) for _ in range(n * IDX_SIZE[code]))
            out.append(_idx(code, shape, data))
    # An MNIST-like labels file and a tiny images file.
    out.append(_idx(0x08, [10], bytes(range(10))))
    out.append(_idx(0x08, [2, 28, 28], bytes(rnd.randrange(256) for _ in range(2 * 784))))
    out += [gzip.compress(s, mtime=0) for s in out[:: max(1, len(out) // 8)]]
    return out


# -------------------------------------------------------------- mutations


class Mutator:
    """Generic byte-level and format-aware mutations; deterministic per rng."""

    def __init__(self, rng: random.Random, seeds: list[bytes], target: str) -> None:
        self.rng = rng
        self.seeds = seeds
        self.target = target
        self.byte_ops: list[Callable[[bytes], bytes]] = [
            self.flip_bit,
            self.set_byte,
            self.random_byte,
            self.insert_chunk,
            self.delete_chunk,
            self.duplicate_chunk,
            self.truncate,
            self.extend,
            self.splice,
            self.put_int,
            self.add_byte,
        ]
        if target == "safetensors":
            self.struct_ops = [
                self.st_json,
                self.st_json,
                self.st_json,
                self.st_json,
                self.st_number,
                self.st_number,
                self.st_prefix,
                self.st_body,
                self.st_duplicate_key,
                self.st_non_utf8,
            ]
        else:
            self.struct_ops = [self.idx_header] * 5 + [self.idx_gzip]

    def mutate(self) -> bytes:
        rng = self.rng
        data = rng.choice(self.seeds)
        # Mostly mutate what a gzipped IDX file holds, and compress it again.
        gz = self.target == "idx" and data[:2] == GZIP_MAGIC and rng.random() < 0.7
        if gz:
            data = gzip.decompress(data)
        n = 1 if rng.random() < 0.5 else rng.randint(2, 5)
        for _ in range(n):
            op = rng.choice(self.struct_ops) if rng.random() < 0.65 else rng.choice(self.byte_ops)
            try:
                data = op(data)
            except Exception:  # a mutation that does not apply: keep the input
                pass
            if len(data) > MAX_LEN:
                data = data[:MAX_LEN]
        if gz and data[:2] != GZIP_MAGIC:
            data = gzip.compress(data, compresslevel=rng.choice((0, 1, 9)), mtime=0)
        return data[:MAX_LEN]

    # ---- generic byte mutations

    def _pos(self, data: bytes) -> int:
        return self.rng.randrange(len(data)) if data else 0

    def flip_bit(self, d: bytes) -> bytes:
        if not d:
            return d
        i = self._pos(d)
        return d[:i] + bytes([d[i] ^ (1 << self.rng.randrange(8))]) + d[i + 1 :]

    def set_byte(self, d: bytes) -> bytes:
        if not d:
            return bytes([self.rng.choice(INTERESTING_BYTES)])
        i = self._pos(d)
        return d[:i] + bytes([self.rng.choice(INTERESTING_BYTES)]) + d[i + 1 :]

    def random_byte(self, d: bytes) -> bytes:
        if not d:
            return d
        i = self._pos(d)
        return d[:i] + bytes([self.rng.randrange(256)]) + d[i + 1 :]

    def add_byte(self, d: bytes) -> bytes:
        if not d:
            return d
        i = self._pos(d)
        return d[:i] + bytes([(d[i] + self.rng.randint(-4, 4)) & 0xFF]) + d[i + 1 :]

    def _chunk(self, d: bytes) -> bytes:
        rng = self.rng
        if d and rng.random() < 0.5:
            i = self._pos(d)
            return d[i : i + rng.randint(1, 64)]
        return bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 16)))

    def insert_chunk(self, d: bytes) -> bytes:
        i = self.rng.randint(0, len(d))
        return d[:i] + self._chunk(d) + d[i:]

    def delete_chunk(self, d: bytes) -> bytes:
        if not d:
            return d
        i = self._pos(d)
        return d[:i] + d[i + self.rng.randint(1, 64) :]

    def duplicate_chunk(self, d: bytes) -> bytes:
        if not d:
            return d
        i = self._pos(d)
        j = min(len(d), i + self.rng.randint(1, 256))
        return d[:j] + d[i:j] * self.rng.randint(1, 4) + d[j:]

    def truncate(self, d: bytes) -> bytes:
        return d[: self.rng.randint(0, len(d))]

    def extend(self, d: bytes) -> bytes:
        rng = self.rng
        n = rng.choice((1, 2, 4, 7, 8, 64, 1000, 65536))
        fill = rng.choice((b"\x00", b"\xff", b" ", b"\x7f"))
        return d + fill * n

    def splice(self, d: bytes) -> bytes:
        other = self.rng.choice(self.seeds)
        return d[: self.rng.randint(0, len(d))] + other[self.rng.randint(0, len(other)) :]

    def put_int(self, d: bytes) -> bytes:
        rng = self.rng
        v = rng.choice(INTERESTING_INTS)
        width, order = rng.choice(((4, "<"), (8, "<"), (4, ">"), (2, "<")))
        b = (v % (1 << (8 * width))).to_bytes(width, "little" if order == "<" else "big")
        i = rng.randint(0, max(0, len(d) - width))
        return d[:i] + b + d[i + width :]

    # ---- safetensors

    @staticmethod
    def _split(d: bytes) -> tuple[bytes, bytes] | None:
        if len(d) < 8:
            return None
        n = struct.unpack("<Q", d[:8])[0]
        if n > len(d) - 8:
            return None
        return d[8 : 8 + n], d[8 + n :]

    def _join(self, header: bytes, body: bytes) -> bytes:
        """The 8-byte length prefix: mostly right, sometimes deliberately wrong."""
        rng = self.rng
        n = len(header)
        r = rng.random()
        if r < 0.9:
            pass
        elif r < 0.94:
            n += rng.choice((-1, 1, -8, 8, 7))
        else:
            n = rng.choice(
                (0, 1, 2**64 - 1, 2**63, 100_000_000, 100_000_001, len(header) + len(body) + 1)
            )
        return struct.pack("<Q", n % 2**64) + header + body

    def st_prefix(self, d: bytes) -> bytes:
        parts = self._split(d)
        if parts is None:
            return self.put_int(d)
        header, body = parts
        if self.rng.random() < 0.5:  # move bytes between header and data
            k = self.rng.randint(-8, 8)
            if k > 0:
                header, body = header + body[:k], body[k:]
            elif k < 0:
                header, body = header[:k], header[k:] + body
        return self._join(header, body)

    def st_body(self, d: bytes) -> bytes:
        parts = self._split(d)
        if parts is None:
            return self.extend(d)
        header, body = parts
        rng = self.rng
        r = rng.random()
        if r < 0.4 and len(body) >= 4:  # NaN / inf / huge values in the data
            pat = rng.choice(
                (
                    struct.pack("<f", float("nan")),
                    struct.pack("<f", float("inf")),
                    struct.pack("<d", float("nan"))[4:],
                    b"\xff\xff\xff\xff",
                    b"\x00\x00\x80\x7f",
                    b"\x00\x7c\x00\xfc",
                )
            )
            i = rng.randrange(0, len(body) - 3) & ~3
            body = body[:i] + pat + body[i + 4 :]
        elif r < 0.7:
            body = body[: rng.randint(0, len(body))]
        else:
            body = body + bytes(rng.choice((1, 2, 4, 8, 16)))
        return struct.pack("<Q", len(header)) + header + body

    def st_json(self, d: bytes) -> bytes:
        parts = self._split(d)
        if parts is None:
            return self.rng.choice(self.seeds)
        header, body = parts
        try:
            obj = json.loads(header)
        except (ValueError, RecursionError):
            return self.st_number(d)
        if not isinstance(obj, dict):
            return self._join(header, body)
        rng = self.rng
        names = [k for k in obj if k != "__metadata__"]
        r = rng.random()
        if names and r < 0.55:
            name = rng.choice(names)
            entry = obj[name]
            if isinstance(entry, dict):
                self._mutate_entry(obj, name, entry)
            else:
                obj[name] = rng.choice(ODD_VALUES)
            if rng.random() < 0.5:
                body = self._make_consistent(obj, body)
        elif r < 0.8:
            self._mutate_metadata(obj)
        elif names and r < 0.9:
            name = rng.choice(names)
            entry = obj.pop(name)
            if rng.random() < 0.5:
                new = rng.choice(
                    names
                    + ["", "optimizer.state.0.0", "0.weight", "1.num_batches_tracked", "__x__"]
                )
                obj[new] = entry
            body = self._make_consistent(obj, body) if rng.random() < 0.7 else body
        else:
            body = self._make_consistent(obj, body)
        text = json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()
        if rng.random() < 0.3:
            text += rng.choice((b" ", b"\x00", b"\n", b"\t")) * rng.randint(1, 9)
        return self._join(text, body)

    def _mutate_entry(self, obj: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
        rng = self.rng
        field = rng.choice(("dtype", "shape", "shape", "data_offsets", "data_offsets", "other"))
        r = rng.random()
        if field == "dtype":
            entry["dtype"] = rng.choice(DTYPES) if r < 0.85 else rng.choice(ODD_VALUES)
        elif field == "other":
            if r < 0.5 and entry:
                entry.pop(rng.choice(list(entry)))
            else:
                entry[rng.choice(("extra", "dtype ", "Shape"))] = rng.choice(ODD_VALUES)
        else:
            v = entry.get(field)
            if not isinstance(v, list) or r < 0.1:
                entry[field] = rng.choice(ODD_VALUES + ([], [0], [0, 0], [-1, 4]))
            elif r < 0.6 and v:
                v[rng.randrange(len(v))] = rng.choice(INTERESTING_INTS)
            elif r < 0.75:
                v.insert(rng.randint(0, len(v)), rng.choice((1, 0, 2, 2**32 - 1)))
            elif r < 0.9 and v:
                v.pop(rng.randrange(len(v)))
            elif v:
                v[rng.randrange(len(v))] = rng.choice((1.0, 1.5, "1", None, True, 1e20))
            if field == "shape" and rng.random() < 0.3:  # keep the data span in step
                entry["data_offsets"] = None
                self._make_consistent(obj, b"")

    def _make_consistent(self, obj: dict[str, Any], body: bytes) -> bytes:
        """Recompute contiguous offsets from shapes and dtypes, and size the
        data to match, so the crate's checks pass and the deep code runs."""
        rng = self.rng
        pos = 0
        for name, entry in obj.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            shape, size = entry.get("shape"), DTYPE_SIZE.get(entry.get("dtype"))  # type: ignore[arg-type]
            n = 1
            if isinstance(shape, list) and all(
                isinstance(x, int) and 0 <= x < 2**40 for x in shape
            ):
                for x in shape:
                    n *= x
            else:
                n = 1
            nbytes = n * (size or 4)
            if nbytes > 1 << 16:
                nbytes = rng.choice((0, 4, 64))
            entry["data_offsets"] = [pos, pos + nbytes]
            pos += nbytes
        if len(body) >= pos:
            return body[:pos]
        return body + bytes(rng.choice((0, 0x3F, 0xFF)) for _ in range(pos - len(body)))

    def _mutate_metadata(self, obj: dict[str, Any]) -> None:
        rng = self.rng
        meta = obj.get("__metadata__")
        if not isinstance(meta, dict) or rng.random() < 0.05:
            if rng.random() < 0.5:
                obj["__metadata__"] = rng.choice(
                    ODD_VALUES + ({"a": 1}, {"a": None}, {"format": "pt"})
                )
            else:
                obj.pop("__metadata__", None)
            return
        r = rng.random()
        if "ferrograd" in meta and r < 0.75:
            meta["ferrograd"] = self._mutate_nested(meta["ferrograd"])
        elif r < 0.85 and meta:
            meta.pop(rng.choice(list(meta)))
        elif r < 0.95:
            meta[rng.choice(("format", "ferrograd", "x", ""))] = rng.choice(
                ("pt", "ferrograd", "{}", "[]", '{"version": 1}', "\u00e9", "")
            )
        else:
            meta[rng.choice(list(meta) or ["k"])] = rng.choice(ODD_VALUES)

    def _mutate_nested(self, text: Any) -> Any:
        """Mutate the ferrograd JSON (architecture, optimizer, scheduler)."""
        rng = self.rng
        if not isinstance(text, str):
            return text
        r = rng.random()
        if r < 0.04:
            return "[" * rng.choice((10, 1000, 100_000)) + "]" * rng.choice((0, 10))
        if r < 0.08:
            return text[: rng.randint(0, len(text))]
        try:
            info = json.loads(text)
        except (ValueError, RecursionError):
            return text
        slots: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    slots.append((node, k))
                    walk(v)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    slots.append((node, i))
                    walk(v)

        walk(info)
        for _ in range(rng.randint(1, 3)):
            if not slots:
                break
            container, key = rng.choice(slots)
            r = rng.random()
            if r < 0.45:
                container[key] = rng.choice(INTERESTING_INTS)
            elif r < 0.8:
                container[key] = rng.choice(ODD_VALUES)
            elif r < 0.9 and isinstance(container, dict):
                container.pop(key, None)
                slots = [s for s in slots if not (s[0] is container and s[1] == key)]
            elif isinstance(container, list) and key < len(container):
                container.insert(key, container[key])
                break  # list indices shifted
            else:
                container[key] = rng.choice((10**400, -(10**400), 1e-320, 2.0**1023))
        return json.dumps(info, allow_nan=True)

    def st_number(self, d: bytes) -> bytes:
        """Replace one number of the header text (shapes, offsets, ...)."""
        parts = self._split(d)
        if parts is None:
            return self.put_int(d)
        header, body = parts
        nums = list(re.finditer(rb"-?\d+", header))
        if not nums:
            return self._join(header, body)
        m = self.rng.choice(nums)
        rep = self.rng.choice(
            [str(v).encode() for v in INTERESTING_INTS]
            + [b"1e3", b"-0", b"1.0", b"00", b"9" * 30, b"0x10", b"+1", b""]
        )
        header = header[: m.start()] + rep + header[m.end() :]
        return self._join(header, body)

    def st_duplicate_key(self, d: bytes) -> bytes:
        """Repeat a top-level key (same or other value): JSON objects with
        duplicate names cannot be made through dicts."""
        parts = self._split(d)
        if parts is None:
            return d
        header, body = parts
        try:
            obj = json.loads(header)
        except (ValueError, RecursionError):
            return d
        if not isinstance(obj, dict) or not obj:
            return d
        rng = self.rng
        items = [json.dumps(k) + ":" + json.dumps(v) for k, v in obj.items()]
        keys = list(obj)
        i = rng.randrange(len(items))
        if rng.random() < 0.5:
            dup = items[i]
        else:
            dup = json.dumps(keys[i]) + ":" + json.dumps(obj[rng.choice(keys)])
        items.insert(rng.randint(0, len(items)), dup)
        return self._join(("{" + ",".join(items) + "}").encode(), body)

    def st_non_utf8(self, d: bytes) -> bytes:
        parts = self._split(d)
        if parts is None:
            return d
        header, body = parts
        quotes = [m.start() + 1 for m in re.finditer(rb'"', header)]
        i = self.rng.choice(quotes) if quotes else 0
        bad = self.rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80"))
        return self._join(header[:i] + bad + header[i:], body)

    # ---- IDX

    def idx_header(self, d: bytes) -> bytes:
        rng = self.rng
        gz = d[:2] == GZIP_MAGIC
        if gz:
            try:
                d = gzip.decompress(d)
            except (OSError, EOFError, ValueError):
                return self.flip_bit(d)
        if len(d) < 4:
            d = d + b"\x00" * (4 - len(d))
        code, ndim = d[2], d[3]
        dims = (
            list(struct.unpack(f">{ndim}I", d[4 : 4 + 4 * ndim])) if len(d) >= 4 + 4 * ndim else []
        )
        data = d[4 + 4 * ndim :] if len(d) >= 4 + 4 * ndim else b""
        r = rng.random()
        fix = rng.random() < 0.5
        if r < 0.15:
            code = rng.choice(IDX_CODES) if rng.random() < 0.7 else rng.randrange(256)
        elif r < 0.45:
            if dims:
                dims[rng.randrange(len(dims))] = rng.choice(
                    (0, 1, 2, 3, 2**32 - 1, 2**31, 2**16, 65537, 10**9)
                )
            else:
                dims = [rng.choice((0, 1, 2**32 - 1))]
        elif r < 0.55:
            dims = [2**32 - 1] * rng.randint(1, 6)
        elif r < 0.7:
            k = rng.choice((0, 1, 2, 3, 4, 32, 33, 63, 64, 65, 100, 255))
            dims = (dims + [1] * k)[:k] if rng.random() < 0.7 else [rng.choice((0, 1))] * k
        elif r < 0.8:  # ndim byte alone: header and data no longer line up
            return self._idx_out(bytes([d[0], d[1], code, rng.randrange(256)]) + d[4:], gz)
        elif r < 0.9:
            return self._idx_out(
                bytes([rng.choice((0, 1, 8, 0xFF)), rng.choice((0, 8, 0x80))]) + d[2:], gz
            )
        else:
            fix = True
        if fix:
            n = 1
            for x in dims:
                n *= x
            want = n * IDX_SIZE.get(code, 1)
            if want <= 1 << 16:
                data = (data + bytes(rng.randrange(256) for _ in range(max(0, want - len(data)))))[
                    :want
                ]
            elif rng.random() < 0.5:
                data = data[: rng.randint(0, len(data))]
        out = bytes([d[0], d[1], code, len(dims) & 0xFF]) + struct.pack(f">{len(dims)}I", *dims)
        return self._idx_out(out + data, gz)

    def _idx_out(self, d: bytes, gz: bool) -> bytes:
        if gz or self.rng.random() < 0.05:
            return gzip.compress(d, compresslevel=self.rng.choice((0, 1, 9)), mtime=0)
        return d

    def idx_gzip(self, d: bytes) -> bytes:
        """Damage a gzip stream: header flags, CRC, length, trailing data."""
        rng = self.rng
        if d[:2] != GZIP_MAGIC:
            d = gzip.compress(d, mtime=0)
        r = rng.random()
        if r < 0.3 and len(d) > 10:  # header: method, flags, extra fields
            i = rng.choice((2, 3, 3, 8, 9))
            return d[:i] + bytes([rng.choice((0, 0xFF, 4, 8, 16, 2, 0x1F))]) + d[i + 1 :]
        if r < 0.5 and len(d) >= 8:  # CRC32 / ISIZE trailer
            i = len(d) - rng.randint(1, 8)
            return d[:i] + bytes([d[i] ^ 0xFF]) + d[i + 1 :]
        if r < 0.65:
            return d[: rng.randint(0, len(d))]
        if r < 0.8:
            return d + rng.choice((b"\x00" * 8, b"garbage", d, GZIP_MAGIC, GZIP_MAGIC + b"\x08"))
        i = rng.randint(10, max(10, len(d) - 8))
        return d[:i] + bytes([rng.randrange(256)]) + d[i + 1 :]


# -------------------------------------------------------------- execution


def message_kind(msg: str) -> str:
    """A ValueError message with names, numbers and quoted parts folded, so
    messages group by the check that raised them."""
    m = msg.split("\n", 1)[0]
    m = re.sub(r"<bytes>|<fuzz>|\S*fuzz-exec\.bin", "<file>", m)
    m = re.sub(r"^<file>: ", "", m)
    m = re.sub(r"\(.*", "", m)
    m = re.sub(r"'[^']*'|\"[^\"]*\"", "Q", m)
    m = re.sub(r"\b\d+( x \d+)+", "SHAPE", m)
    m = re.sub(r"\d+(\.\d+)?", "N", m)
    return m.strip()[:80]


class Targets:
    """The calls one execution makes."""

    def __init__(self, tmp: str) -> None:
        import numpy as np

        import ferrograd as fg
        from ferrograd import _core, datasets, serialization

        self.np = np
        self.fg = fg
        self.core = _core
        self.datasets = datasets
        self.serialization = serialization
        self.path = os.path.join(tmp, "fuzz-exec.bin")
        self.models = [
            fg.Sequential(
                [
                    fg.layers.Dense(4, 3),
                    fg.layers.BatchNorm1D(3),
                    fg.layers.ReLU(),
                    fg.layers.Dense(3, 3),
                ],
                seed=1,
            ),
            fg.Sequential(
                [fg.layers.Conv2D(1, 2, 3), fg.layers.Flatten()], seed=2, dtype="float64"
            ),
        ]
        self.keys = [set(m.state_dict()) for m in self.models]

    def _write(self, data: bytes) -> str:
        with open(self.path, "wb") as f:
            f.write(data)
        return self.path

    def safetensors(self, data: bytes, u: float) -> None:
        tensors, meta = self.core.loads_safetensors(data)
        if u >= 0.3:
            return
        meta = dict(meta)
        if u < 0.005:  # the file paths, as users call them
            path = self._write(data)
            self.fg.load_file(path)
            if "ferrograd" in meta:
                self.fg.load(path, with_optimizer=u < 0.003, with_scheduler=u < 0.002)
            else:
                self._model_for(tensors).load_weights(path)
        elif "ferrograd" in meta and u < 0.2:
            self.serialization.loads(data, with_optimizer=u < 0.15, with_scheduler=u < 0.1)
        else:
            self._model_for(tensors).load_state_dict(dict(tensors), strict=u < 0.25)

    def _model_for(self, tensors: list[tuple[str, Any]]) -> Any:
        names = {k for k, _ in tensors}
        best = max(range(len(self.models)), key=lambda i: len(self.keys[i] & names))
        return self.models[best]

    def idx(self, data: bytes, u: float) -> None:
        if u < 0.01:
            self.datasets.read_idx(self._write(data))
            return
        if data[:2] == GZIP_MAGIC:
            data = self.datasets._gunzip(data, "<fuzz>")
        self.datasets._parse_idx(data, "<fuzz>")


class StateFile:
    """Shared memory map: [exec index u64][length u64][input bytes]."""

    SIZE = 16 + MAX_LEN
    #: The index before the first execution.
    IDLE = 2**64 - 1

    def __init__(self, path: str, create: bool) -> None:
        if create:
            with open(path, "wb") as f:
                f.write(struct.pack("<QQ", self.IDLE, 0))
                f.truncate(self.SIZE)
        self.f = open(path, "r+b")  # noqa: SIM115 - lives as long as the map
        self.map = mmap.mmap(self.f.fileno(), self.SIZE)

    def put(self, index: int, data: bytes) -> None:
        m = self.map
        m[16 : 16 + len(data)] = data
        m[0:16] = struct.pack("<QQ", index, len(data))

    def get(self) -> tuple[int, bytes]:
        index, n = struct.unpack("<QQ", self.map[0:16])
        return index, bytes(self.map[16 : 16 + min(n, MAX_LEN)])

    def close(self) -> None:
        self.map.close()
        self.f.close()


def save_finding(findings: Path, target: str, kind: str, data: bytes, detail: str) -> str:
    findings.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", kind)[:60]
    stem = findings / f"{target}-{safe}-{digest}"
    stem.with_suffix(".bin").write_bytes(data)
    stem.with_suffix(".txt").write_text(
        f"{target}: {kind}\ninput (hex): {data.hex()}\n\n{detail}\n"
    )
    return str(stem.with_suffix(".bin"))


def chunk_seed(seed: int, target: str, chunk: int) -> int:
    h = hashlib.sha256(f"{seed}:{target}:{chunk}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def worker(args: argparse.Namespace) -> int:
    """Runs one chunk in this process; writes a JSON summary to --result."""
    import warnings

    warnings.simplefilter("ignore")  # numpy casting warnings are not findings
    os.environ.setdefault("FERROGRAD_NUM_THREADS", "1")
    target = args.target
    seeds = safetensors_seeds() if target == "safetensors" else idx_seeds()
    findings = Path(args.findings)
    state = StateFile(args.state, create=False)
    rng = random.Random(args.chunk_seed)
    mut = Mutator(rng, seeds, target)
    with tempfile.TemporaryDirectory(prefix="fg-fuzz-") as tmp:
        targets = Targets(tmp)
        run = targets.safetensors if target == "safetensors" else targets.idx
        for s in seeds:  # warm-up (the BOOL seed is rejected: no bool tensors)
            try:
                run(s, 1.0)
            except ValueError:
                pass
        with open("/proc/self/status") as f:
            vm = int(re.search(r"VmSize:\s+(\d+)", f.read()).group(1)) * 1024  # type: ignore[union-attr]
        limit = vm + AS_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        counts: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        found: list[dict[str, Any]] = []
        per_kind: Counter[str] = Counter()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t_start = time.perf_counter()
        slowest = 0.0
        for i in range(args.execs):
            data = mut.mutate()
            u = rng.random()
            if i < args.skip:
                continue
            state.put(i, data)
            t0 = time.perf_counter()
            kind = None
            detail = ""
            try:
                run(data, u)
                counts["ok"] += 1
            except ValueError as e:
                counts["ValueError"] += 1
                kinds[message_kind(str(e))] += 1
            except Exception as e:  # every other exception is a finding
                kind = f"{type(e).__name__}: {message_kind(str(e))}"
                detail = traceback.format_exc()
            dt = time.perf_counter() - t0
            slowest = max(slowest, dt)
            if kind is None and dt > SLOW_S:
                kind = f"slow: over {SLOW_S:g} s"
                detail = f"took {dt:.2f} s"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            if kind is None and rss - rss0 > RSS_LIMIT:
                kind = f"memory: max RSS up over {RSS_LIMIT >> 20} MB"
                detail = f"max RSS +{(rss - rss0) >> 20} MB"
                rss0 = rss
            if kind is not None:
                counts["finding"] += 1
                per_kind[kind] += 1
                if per_kind[kind] <= 5:
                    path = save_finding(findings, target, kind, data, detail)
                    found.append({"kind": kind, "file": path, "hex": data[:256].hex(), "u": u})
        elapsed = time.perf_counter() - t_start
    state.put(args.execs, b"")
    summary = {
        "counts": dict(counts),
        "kinds": dict(kinds),
        "findings": found,
        "finding_kinds": dict(per_kind),
        "elapsed": elapsed,
        "slowest": slowest,
    }
    Path(args.result).write_text(json.dumps(summary))
    state.close()
    return 0


# ------------------------------------------------------------------ parent


class WorkerError(RuntimeError):
    """A worker failed outside an execution (a broken tree, not an input)."""

    def __init__(self, message: str, stats: dict[str, Any]) -> None:
        super().__init__(message)
        self.stats = stats


class Job:
    def __init__(self, target: str, chunk: int, seed: int, execs: int, skip: int) -> None:
        self.target, self.chunk, self.seed, self.execs, self.skip = target, chunk, seed, execs, skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: StateFile | None = None
        self.result = ""
        self.stderr = ""
        self.last = (-1, 0.0)


def run_campaign(
    execs: int,
    seed: int,
    targets: list[str],
    jobs: int,
    findings: Path,
    chunk: int = CHUNK,
    quiet: bool = False,
) -> dict[str, Any]:
    """Fuzzes each target for ``execs`` executions; returns per-target stats."""
    work = tempfile.mkdtemp(prefix="fg-fuzz-run-")
    pending: list[Job] = []
    for target in targets:
        size = max(1, min(chunk, -(-execs // jobs)))
        for c, start in enumerate(range(0, execs, size)):
            pending.append(Job(target, c, chunk_seed(seed, target, c), min(size, execs - start), 0))
    stats: dict[str, dict[str, Any]] = {
        t: {
            "counts": Counter(),
            "kinds": Counter(),
            "findings": [],
            "finding_kinds": Counter(),
            "cpu": 0.0,
            "slowest": 0.0,
        }
        for t in targets
    }
    running: list[Job] = []
    t0 = time.perf_counter()
    serial = 0

    def start(job: Job) -> None:
        nonlocal serial
        serial += 1
        state_path = os.path.join(work, f"state-{serial}")
        job.state = StateFile(state_path, create=True)
        job.result = os.path.join(work, f"result-{serial}.json")
        cmd = [
            sys.executable, os.path.abspath(__file__), "--worker",
            "--target", job.target, "--chunk-seed", str(job.seed),
            "--execs", str(job.execs), "--skip", str(job.skip),
            "--state", state_path, "--result", job.result, "--findings", str(findings),
        ]  # fmt: skip
        job.stderr = os.path.join(work, f"stderr-{serial}")
        with open(job.stderr, "wb") as err:  # a file: a pipe could fill and block the child
            job.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        job.last = (-1, time.monotonic())

    def crashed(job: Job, why: str, stderr: str) -> None:
        assert job.state is not None
        index, data = job.state.get()
        st = stats[job.target]
        if index < job.skip or index >= job.execs:  # died outside an execution
            raise WorkerError(f"fuzz worker failed ({why}) outside an execution:\n{stderr}", stats)
        kind = f"{why}"
        path = save_finding(findings, job.target, kind, data, stderr[-4000:])
        st["counts"]["finding"] += 1
        st["finding_kinds"][kind] += 1
        st["findings"].append({"kind": kind, "file": path, "hex": data[:256].hex()})
        if not quiet:
            print(f"[{job.target}] FINDING {kind}: {path}", flush=True)
        if index + 1 < job.execs:  # resume the chunk after the input
            pending.insert(0, Job(job.target, job.chunk, job.seed, job.execs, index + 1))

    try:
        _loop(pending, running, jobs, start, crashed, stats, quiet, work)
    finally:
        for job in running:
            if job.proc is not None and job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    for st in stats.values():
        st["wall"] = wall
    return stats


def _loop(
    pending: list[Job],
    running: list[Job],
    jobs: int,
    start: Callable[[Job], None],
    crashed: Callable[[Job, str, str], None],
    stats: dict[str, dict[str, Any]],
    quiet: bool,
    work: str,
) -> None:
    done = 0
    while pending or running:
        while pending and len(running) < jobs:
            job = pending.pop(0)
            start(job)
            running.append(job)
        time.sleep(0.05)
        for job in list(running):
            assert job.proc is not None and job.state is not None
            rc = job.proc.poll()
            if rc is None:
                index = job.state.get()[0]
                if index != job.last[0]:
                    job.last = (index, time.monotonic())
                elif time.monotonic() - job.last[1] > WATCHDOG_S and index != StateFile.IDLE:
                    job.proc.kill()
                    job.proc.wait()
                    running.remove(job)
                    crashed(job, f"hang: no progress for {WATCHDOG_S:.0f} s", "")
                    job.state.close()
                continue
            running.remove(job)
            with open(job.stderr, "rb") as err:
                stderr = err.read()[-20000:].decode(errors="replace")
            if rc == 0 and os.path.exists(job.result):
                with open(job.result) as f:
                    summary = json.load(f)
                st = stats[job.target]
                st["counts"].update(summary["counts"])
                st["kinds"].update(summary["kinds"])
                st["finding_kinds"].update(summary["finding_kinds"])
                st["findings"] += summary["findings"]
                st["cpu"] += summary["elapsed"]
                st["slowest"] = max(st["slowest"], summary["slowest"])
                done += 1
                if not quiet:
                    for f_ in summary["findings"]:
                        print(f"[{job.target}] FINDING {f_['kind']}: {f_['file']}", flush=True)
                    n = sum(summary["counts"].values())
                    print(
                        f"[{job.target}] chunk {job.chunk} done: {n} execs in "
                        f"{summary['elapsed']:.1f} s ({done} chunks done, {len(pending)} queued)",
                        flush=True,
                    )
            elif rc < 0:
                crashed(job, f"signal {-rc}", stderr)
            else:
                crashed(job, f"exit status {rc}", stderr)
            job.state.close()


def report(stats: dict[str, Any], wall: float) -> int:
    total = 0
    n_find = 0
    for target, st in stats.items():
        c = st["counts"]
        n = sum(c.values())
        total += n
        n_find += c.get("finding", 0)
        print(f"\n== {target}: {n} execs")
        print(f"   ok: {c.get('ok', 0)}   ValueError: {c.get('ValueError', 0)}   "
              f"findings: {c.get('finding', 0)}")  # fmt: skip
        print(f"   distinct ValueError kinds: {len(st['kinds'])}; top 10:")
        for kind, k in st["kinds"].most_common(10):
            print(f"     {k:9d}  {kind}")
        print(f"   slowest exec: {st['slowest'] * 1e3:.1f} ms")
        for kind, k in st["finding_kinds"].most_common():
            print(f"   FINDING x{k}: {kind}")
    print(f"\n{total} execs in {wall:.1f} s wall: {total / max(wall, 1e-9):,.0f} execs/s")
    print(f"findings: {n_find}")
    return 1 if n_find else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--execs", type=int, default=1_000_000, help="executions per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=("safetensors", "idx", "both"), default="both")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--chunk", type=int, default=CHUNK, help="executions per child process")
    p.add_argument("--findings", default=str(DEFAULT_FINDINGS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chunk-seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--skip", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    targets = ["safetensors", "idx"] if args.target == "both" else [args.target]
    t0 = time.perf_counter()
    try:
        stats = run_campaign(
            args.execs, args.seed, targets, args.jobs, Path(args.findings), args.chunk
        )
    except WorkerError as e:
        print(e, file=sys.stderr)
        print("\nINCOMPLETE RUN; the chunks that finished:")
        report(e.stats, time.perf_counter() - t0)
        return 2
    return report(stats, time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
