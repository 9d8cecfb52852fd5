#!/usr/bin/env python3
"""Writes the image-preprocessing fixtures and their goldens from PIL + transformers' PIL CLIP processor.

Inputs (tests/fixtures/image/): grace_hopper.jpg (a photo that matplotlib ships as sample data), logo2.png
(RGBA, also from matplotlib), and generated files: a JPEG with EXIF orientation 6, a grayscale JPEG, 16-bit
RGB and 16-bit grayscale PNGs, a grey+alpha PNG, a lossless WebP and a small image that needs upscaling.

Golden pipeline (what the reference runs, spec section 3.1): Image.open(path).convert("RGB"), then per mode
  resize: image.resize((m, m)) with m = max(w, h) (PIL's default filter, bicubic), then the CLIP processor;
  pad:    paste centred on an m x m canvas of (122, 116, 104), then the CLIP processor;
  crop:   the CLIP processor alone;
with the CLIP processor = transformers' CLIPImageProcessorPil (resize shortest edge to S, bicubic; centre crop
S x S; rescale 1/255; CLIP mean/std). goldens.bin holds float32 CHW tensors subsampled [:, ::7, ::7] to keep the
fixture small (448 -> 64 x 64); goldens.json indexes them.

Run: .venv/bin/python scripts/make_image_golden.py
"""
import json
import os
import shutil
import struct
import zlib

import matplotlib
import numpy as np
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "image")
SAMPLES = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
STRIDE = 7


def write_png(path, array, color_type):
    """Minimal PNG writer (16-bit and grey+alpha layouts that PIL cannot save)."""
    h, w = array.shape[:2]
    depth = 16 if array.dtype == np.uint16 else 8
    rows = array.astype(">u2" if depth == 16 else "u1").reshape(h, -1).tobytes()
    stride = len(rows) // h
    raw = b"".join(b"\x00" + rows[i * stride:(i + 1) * stride] for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def make_inputs():
    os.makedirs(OUT, exist_ok=True)
    shutil.copy(os.path.join(SAMPLES, "grace_hopper.jpg"), OUT)
    shutil.copy(os.path.join(SAMPLES, "logo2.png"), OUT)
    hopper = Image.open(os.path.join(SAMPLES, "grace_hopper.jpg")).convert("RGB")
    small = hopper.crop((100, 60, 420, 300)).resize((200, 150), Image.BICUBIC)  # 200 x 150, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display; PIL and the reference ignore it
    small.save(os.path.join(OUT, "exif_rotate90.jpg"), quality=90, exif=exif.tobytes())
    small.convert("L").resize((120, 160)).save(os.path.join(OUT, "gray.jpg"), quality=90)
    small.resize((96, 80)).save(os.path.join(OUT, "lossless.webp"), lossless=True)
    small.resize((40, 30)).save(os.path.join(OUT, "tiny_upscale.png"))
    y, x = np.mgrid[0:90, 0:120]
    rgb16 = np.stack([x * 540 + 100, y * 720 + 37, (x * y * 6) % 65536], -1).astype(np.uint16)
    write_png(os.path.join(OUT, "rgb16.png"), rgb16, 2)
    gray16 = ((x * 3 + y * 2) % 400).astype(np.uint16)  # values above 255 clip in PIL's I;16 -> RGB
    write_png(os.path.join(OUT, "gray16.png"), gray16[:80, :100], 0)
    la = np.stack([(x * 2) % 256, (y * 37) % 256], -1).astype(np.uint8)
    write_png(os.path.join(OUT, "gray_alpha.png"), la[:70, :90], 4)


def reference(path, mode, size):
    image = Image.open(path).convert("RGB")
    m = max(image.size)
    if mode == "resize":
        image = image.resize((m, m))
    elif mode == "pad":
        w, h = image.size
        if w != h:
            canvas = Image.new("RGB", (m, m), tuple(int(v * 255) for v in MEAN))
            canvas.paste(image, ((m - w) // 2, (m - h) // 2))
            image = canvas
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                      image_mean=MEAN, image_std=STD, resample=3)
    return np.asarray(processor(images=image, return_tensors="np")["pixel_values"][0], dtype=np.float32)


CASES = [
    ("grace_hopper.jpg", "resize"), ("grace_hopper.jpg", "pad"), ("grace_hopper.jpg", "crop"),
    ("logo2.png", "pad"), ("logo2.png", "crop"), ("exif_rotate90.jpg", "crop"), ("gray.jpg", "resize"),
    ("rgb16.png", "resize"), ("gray16.png", "pad"), ("gray_alpha.png", "crop"), ("lossless.webp", "pad"),
    ("tiny_upscale.png", "resize"),
]


def main():
    make_inputs()
    index, blob = [], bytearray()
    for name, mode in CASES:
        full = reference(os.path.join(OUT, name), mode, 448)
        assert full.shape == (3, 448, 448), full.shape
        sub = np.ascontiguousarray(full[:, ::STRIDE, ::STRIDE])
        index.append({"file": name, "mode": mode, "size": 448, "stride": STRIDE, "shape": list(sub.shape),
                      "offset": len(blob), "input_size": list(Image.open(os.path.join(OUT, name)).size)})
        blob += sub.astype("<f4").tobytes()
    with open(os.path.join(OUT, "goldens.bin"), "wb") as f:
        f.write(blob)
    with open(os.path.join(OUT, "goldens.json"), "w") as f:
        rows = ",\n  ".join(json.dumps(c) for c in index)
        f.write(f'{{"mean": {list(MEAN)}, "std": {list(STD)}, "cases": [\n  {rows}\n]}}\n')
    print(f"wrote {len(index)} goldens ({len(blob)} bytes) to {OUT}")


if __name__ == "__main__":
    main()
