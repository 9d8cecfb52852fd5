"""`owl2 bench video`'s Python side: N frames at segment centres of a clip, decoded with PyAV (else decord, else
OpenCV's Python binding), then CLIPImageProcessorPil after the image mode, as the image pipeline's reference does.
Prints one JSON line: the decoder used, the timing window, CPU seconds, clips and frames; writes the last clip's
first frame tensor (float32 CHW).

Usage: python scripts/bench/video_decode_ref.py CLIP FRAMES SIZE MODE REPEATS OUT.bin"""
import json
import sys
import time

import numpy as np
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

path, n, size, mode, repeats, out = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
                                     sys.argv[6])
MEAN = (0.48145466, 0.4578275, 0.40821073)
proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3)


def indices(total):
    return [min(total - 1, (2 * i + 1) * total // (2 * n)) for i in range(n)]


def frames_pyav():
    import av
    with av.open(path) as c:  # first pass: count (container counts are unreliable), as owl2 does
        total = sum(1 for _ in c.demux(video=0) if _.size > 0)
    want = indices(total)
    got = []
    with av.open(path) as c:
        for k, f in enumerate(c.decode(video=0)):
            while len(got) < n and want[len(got)] == k:
                got.append(f.to_ndarray(format="rgb24"))
            if len(got) == n:
                break
    return got


def frames_decord():
    import decord
    vr = decord.VideoReader(path, num_threads=1)
    return list(vr.get_batch(indices(len(vr))).asnumpy())


def frames_cv2():
    import cv2
    cap = cv2.VideoCapture(path)
    total = 0
    while cap.grab():
        total += 1
    want = indices(total)
    cap = cv2.VideoCapture(path)
    got = []
    for k in range(total):
        cap.grab()
        while len(got) < n and want[len(got)] == k:
            got.append(cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB))
    return got


decoders = [("pyav", frames_pyav), ("decord", frames_decord), ("opencv-python", frames_cv2)]
for name, fn in decoders:
    try:
        fn()
        break
    except ImportError:
        continue
else:
    print(json.dumps({"error": "none of av, decord or opencv-python is installed"}))
    sys.exit(1)


def preprocess(rgb):
    image = Image.fromarray(rgb)
    m = max(image.size)
    if mode == "resize":
        image = image.resize((m, m))
    elif mode == "pad" and image.size[0] != image.size[1]:
        canvas = Image.new("RGB", (m, m), tuple(int(v * 255) for v in MEAN))
        canvas.paste(image, ((m - image.size[0]) // 2, (m - image.size[1]) // 2))
        image = canvas
    return proc(images=image, return_tensors="np")["pixel_values"][0]


def run(with_preprocess):
    frames = fn()
    return [preprocess(f) for f in frames] if with_preprocess else frames


result = {"decoder": name, "clips": repeats, "frames": n}
for key, pre in (("decode", False), ("pipeline", True)):
    run(pre)
    start, cpu0 = time.time(), time.process_time()
    for _ in range(repeats):
        x = run(pre)
    result[key] = {"start": start, "end": time.time(), "cpu": time.process_time() - cpu0}
np.asarray(x[0], dtype="<f4").tofile(out)
print(json.dumps(result))
