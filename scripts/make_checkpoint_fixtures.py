#!/usr/bin/env python3
"""Writes tests/fixtures/checkpoint/: tiny torch.save state dicts (plain dict, OrderedDict, sharded with an
index), the same values as safetensors written by the `safetensors` package (the test's reference), and a
corpus of malformed safetensors and .bin files that the readers must reject with clean errors.

Run: .venv/bin/python scripts/make_checkpoint_fixtures.py   (idempotent; all files together are ~30 kB)
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "checkpoint")


def plain_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.arange(12, dtype=torch.float32)
    return {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "f16": torch.randn(2, 2, generator=g).half(),
        "bf16": torch.randn(4, generator=g).bfloat16(),
        "i64": torch.tensor([-(2**40), 7], dtype=torch.int64),
        "i32": torch.tensor([-5, 2**30], dtype=torch.int32),
        "i16": torch.tensor([-300, 301], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "view": base[3:9].reshape(2, 3),          # a view into a shared, larger storage
        "view_t": base.reshape(3, 4).t(),         # non-contiguous strides
    }


def write_bin(path, obj):
    torch.save(obj, path)


def replace_record(src, dst, suffix, data):
    """Copies a torch.save zip, replacing the record ending in `suffix` (or adding nothing else)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            payload = data if info.filename.endswith(suffix) else zin.read(info.filename)
            if payload is None:
                continue
            zout.writestr(info.filename, payload)


def safetensors_bytes(header, data, pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def raw_safetensors(text, data):
    return struct.pack("<Q", len(text)) + text + data


class Foreign:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def main():
    os.makedirs(ROOT, exist_ok=True)
    bindir = os.path.join(ROOT, "bin")
    bad = os.path.join(ROOT, "malformed")
    os.makedirs(os.path.join(bindir, "sharded"), exist_ok=True)
    os.makedirs(bad, exist_ok=True)

    # --- good .bin files and their reference values -------------------------------------------
    sd = plain_dict()
    write_bin(os.path.join(bindir, "plain.bin"), sd)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, os.path.join(bindir, "plain_expected.safetensors"))

    torch.manual_seed(1)
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    module_sd = module.state_dict()  # an OrderedDict with _metadata, as the released checkpoint has
    assert isinstance(module_sd, collections.OrderedDict)
    write_bin(os.path.join(bindir, "ordered.bin"), module_sd)
    save_file({k: v.clone() for k, v in module_sd.items()}, os.path.join(bindir, "ordered_expected.safetensors"))

    shards = [{k: v for k, v in sd.items() if k < "i"}, {k: v for k, v in sd.items() if k >= "i"}]
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        write_bin(os.path.join(bindir, "sharded", name), collections.OrderedDict(shard))
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    with open(os.path.join(bindir, "sharded", "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)

    # --- malformed .bin ------------------------------------------------------------------------
    good = os.path.join(bindir, "plain.bin")
    small = {"w": torch.ones(2)}
    tmp = os.path.join(bad, "_small.bin")
    torch.save(small, tmp)
    replace_record(tmp, os.path.join(bad, "foreign_global.bin"), "data.pkl", pickle.dumps({"w": Foreign()}, protocol=2))
    replace_record(tmp, os.path.join(bad, "not_a_dict.bin"), "data.pkl",
                   pickle.dumps([1, 2], protocol=2))
    replace_record(tmp, os.path.join(bad, "missing_storage.bin"), "data/0", None)
    replace_record(tmp, os.path.join(bad, "short_storage.bin"), "data/0", b"\0" * 4)
    pkl = zipfile.ZipFile(tmp).read("_small/data.pkl")
    replace_record(tmp, os.path.join(bad, "truncated_pickle.bin"), "data.pkl", pkl[: len(pkl) // 2])
    # A stride that reaches past the storage: the size tuple (2,) becomes (9,).
    assert pkl.count(b"K\x02\x85") == 1
    replace_record(tmp, os.path.join(bad, "out_of_bounds.bin"), "data.pkl", pkl.replace(b"K\x02\x85", b"K\x09\x85"))
    os.remove(tmp)
    with open(good, "rb") as f:
        blob = f.read()
    with open(os.path.join(bad, "truncated.bin"), "wb") as f:
        f.write(blob[: len(blob) // 2])
    with open(os.path.join(bad, "not_zip.bin"), "wb") as f:
        f.write(pickle.dumps({"w": 1}, protocol=2))

    # --- malformed safetensors -------------------------------------------------------------------
    f32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    data8 = struct.pack("<2f", 1.0, 2.0)
    cases = {
        "truncated_length": b"\x10\x00\x00",
        "huge_header": struct.pack("<Q", 200_000_000) + b"{}",
        "header_past_eof": struct.pack("<Q", 1000) + b'{"a":1}',
        "not_json": raw_safetensors(b"{not json}      ", b""),
        "not_object": raw_safetensors(b"[1, 2, 3]", b""),
        "unknown_dtype": safetensors_bytes({"w": dict(f32x2, dtype="F7")}, data8),
        "wrong_dtype_size": safetensors_bytes({"w": dict(f32x2, dtype="F64")}, data8),
        "shape_mismatch": safetensors_bytes({"w": dict(f32x2, shape=[3])}, data8),
        "overlap": safetensors_bytes({"a": f32x2, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, data8),
        "hole": safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, data8),
        "gap": safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, data8),
        "offsets_past_end": safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data8),
        "end_before_begin": safetensors_bytes({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, data8),
        "duplicate_names": raw_safetensors(
            b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            b'"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', data8),
        "metadata_not_string": safetensors_bytes({"__metadata__": {"step": 3}, "w": f32x2}, data8),
        "negative_dim": safetensors_bytes({"w": dict(f32x2, shape=[-2])}, data8),
        "missing_offsets": safetensors_bytes({"w": {"dtype": "F32", "shape": [2]}}, data8),
        "too_deep": raw_safetensors(b'{"w":[[[[[[1]]]]]]}', b""),
        "overflow_shape": safetensors_bytes(
            {"w": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}}, data8),
        "truncated_data": safetensors_bytes({"w": f32x2}, data8)[:-3],
    }
    for name, payload in cases.items():
        with open(os.path.join(bad, name + ".safetensors"), "wb") as f:
            f.write(payload)
    # A valid file for contrast (written by the reference package).
    save_file({"w": torch.tensor([1.0, 2.0])}, os.path.join(bad, "valid.safetensors"), metadata={"k": "v"})


if __name__ == "__main__":
    main()
