#!/usr/bin/env python3
"""Writes tests/fixtures/real/cc12m_golden.json: what Python's tarfile, PIL and transformers' CLIP processor make
of the real CC12M shard in shared/data/real/ (32 img2dataset pairs), for tests/test_real_data.cpp.

Per sample, in archive order: the key, the caption (the .txt member's bytes as UTF-8), its number of
SentencePiece pieces with the tests' tokenizer (tests/fixtures/tokenizer/tiny_llama.model), PIL's image size, and
for each mode (resize, pad, crop at 448 px, the pipeline of make_image_golden.py: PIL + CLIPImageProcessorPil)
a summary of the float32 [3, 448, 448] tensor small enough to commit but exact for every element:
  - the uint8 image the processor normalised, recovered as round((x * std + mean) * 255), is summarised by
    its channel sums and a position-weighted checksum: sum over i of u8[i] * ((i * 0x9E3779B97F4A7C15) | 1)
    mod 2^64, i the index in CHW order;
  - `lut` (shared by all cases): the processor's float32 output for each uint8 value of each channel. The
    script asserts that every element of every tensor equals lut[c][u8], so a tensor within 1e-6 of lut[c][u8]
    with the same uint8 image is within 1e-6 of the processor's output, element by element;
  - 16 elements [c, y, x, value] at seeded positions, compared directly.

Run: .venv/bin/python scripts/make_real_data_golden.py   (needs ../shared beside the checkout)
"""
import io
import json
import os
import tarfile

import numpy as np
import sentencepiece
from PIL import Image

from make_image_golden import MEAN, STD, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = os.path.join(os.path.dirname(ROOT), "shared", "data", "real", "cc12m-train-0000.tar")
OUT = os.path.join(ROOT, "tests", "fixtures", "real", "cc12m_golden.json")
SIZE = 448
MODES = ("resize", "pad", "crop")
SAMPLES_PER_CASE = 16


def png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    return buf


def processor_lut():
    """The processor's output for every uint8 value: a 16 x 16 ramp, processed at its own size (no resampling)."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = reference(png_bytes(Image.fromarray(np.stack([ramp] * 3, -1))), "crop", 16)
    assert np.array_equal(to_uint8(out), np.stack([ramp] * 3)), "the ramp did not pass through unresampled"
    return out.reshape(3, 256)


def to_uint8(x):
    mean = np.array(MEAN, dtype=np.float64).reshape(3, 1, 1)
    std = np.array(STD, dtype=np.float64).reshape(3, 1, 1)
    u = (x.astype(np.float64) * std + mean) * 255
    r = np.rint(u)
    assert np.abs(u - r).max() < 1e-3 and r.min() >= 0 and r.max() <= 255, "not an affine image of uint8 values"
    return r.astype(np.uint8)


def checksum(u8):
    flat = u8.reshape(-1).astype(np.uint64)
    idx = np.arange(flat.size, dtype=np.uint64)
    weights = (idx * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    return int((flat * weights).sum(dtype=np.uint64))


def main():
    lut = processor_lut()
    sp = sentencepiece.SentencePieceProcessor(
        model_file=os.path.join(ROOT, "tests", "fixtures", "tokenizer", "tiny_llama.model"))
    samples = []
    with tarfile.open(SHARD) as tar:
        members = {}
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    for key, files in members.items():  # archive order of first appearance
        image = Image.open(io.BytesIO(files["jpg"]))
        w, h = image.size
        assert 413 <= min(w, h) and max(w, h) <= 840, (key, image.size)
        caption = files["txt"].decode("utf-8")
        entry = {"key": key, "caption": caption, "tokens": len(sp.encode(caption)), "width": w, "height": h,
                 "modes": {}}
        rng = np.random.default_rng(int(key))
        for mode in MODES:
            x = reference(io.BytesIO(files["jpg"]), mode, SIZE)
            assert x.shape == (3, SIZE, SIZE) and x.dtype == np.float32, (x.shape, x.dtype)
            u8 = to_uint8(x)
            on_lut = lut[np.arange(3).reshape(3, 1, 1), u8]
            assert np.array_equal(on_lut, x), f"{key} {mode}: output is not lut[c][u8] everywhere"
            pos = np.stack([rng.integers(0, 3, SAMPLES_PER_CASE), rng.integers(0, SIZE, SAMPLES_PER_CASE),
                            rng.integers(0, SIZE, SAMPLES_PER_CASE)], -1)
            entry["modes"][mode] = {
                "checksum": f"{checksum(u8):016x}",
                "channel_sums": [int(s) for s in u8.reshape(3, -1).sum(1, dtype=np.int64)],
                "values": [[int(c), int(y), int(xx), float(x[c, y, xx])] for c, y, xx in pos],
            }
        samples.append(entry)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(json.dumps({"source": "shared/data/real/cc12m-train-0000.tar", "size": SIZE, "mean": list(MEAN),
                            "std": list(STD), "lut": [[float(v) for v in row] for row in lut]}, ensure_ascii=False)[:-1])
        f.write(', "samples": [\n')
        f.write(",\n".join(json.dumps(s, ensure_ascii=False) for s in samples))
        f.write("\n]}\n")
    print(f"wrote {len(samples)} samples x {len(MODES)} modes to {OUT}")


if __name__ == "__main__":
    main()
