"""`owl2 bench data`'s Python side, the reference pipeline (spec §3.1): Image.open().convert("RGB"), the image
mode, CLIPImageProcessorPil. Prints one JSON line with its timing window; writes the last tensor (float32 CHW).

Usage: python scripts/bench/data_clip_pil.py IMAGE MODE SIZE N OUT.bin"""
import json, sys, time
from PIL import Image
import numpy as np
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
path, mode, size, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
MEAN = (0.48145466, 0.4578275, 0.40821073)
proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3)
def run():
    image = Image.open(path).convert("RGB")
    m = max(image.size)
    if mode == "resize":
        image = image.resize((m, m))
    elif mode == "pad" and image.size[0] != image.size[1]:
        canvas = Image.new("RGB", (m, m), tuple(int(v * 255) for v in MEAN))
        canvas.paste(image, ((m - image.size[0]) // 2, (m - image.size[1]) // 2))
        image = canvas
    return proc(images=image, return_tensors="np")["pixel_values"][0]
run()
start, cpu0 = time.time(), time.process_time()
for _ in range(n):
    x = run()
end, cpu = time.time(), time.process_time() - cpu0
np.asarray(x, dtype="<f4").tofile(out)
print(json.dumps({"start": start, "end": end, "cpu": cpu, "n": n}))
