#!/usr/bin/env python3
"""Times forward+backward of the Python reference (scripts/reference/) for `owl2 bench model`.

Usage: bench_reference.py --spec JSON  (the same model config and batch the C++ side times; written by
`owl2 bench model`). Prints one JSON line: per-iteration seconds, median, loss and peak RSS (MiB).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for reference/
from reference import ReferenceOwl2, ReferenceConfig, IMAGE_TOKEN_INDEX, IGNORE_INDEX  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    spec = json.loads(ap.parse_args().spec)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = ReferenceConfig(vision=spec["vision"], abstractor=spec["abstractor"], decoder=spec["decoder"])
    model = ReferenceOwl2(cfg).float().train()
    B, T, V = spec["batch"], spec["text_tokens"], spec["decoder"]["vocab_size"]
    v = spec["vision"]
    ids = torch.randint(3, V, (B, T))
    ids[:, 1] = IMAGE_TOKEN_INDEX  # one image per sample, after BOS
    labels = ids.clone()
    labels[:, :2] = IGNORE_INDEX
    images = torch.randn(B, v["num_channels"], v["image_size"], v["image_size"])
    mask = torch.ones(B, T, dtype=torch.int64)
    times, cpu_times, loss = [], [], None
    for it in range(spec["warmup"] + spec["iters"]):
        model.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(ids, mask, images, labels)
        out["loss"].backward()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        loss = out["loss"].item()
        if it >= spec["warmup"]:
            times.append(dt)
            cpu_times.append(cpu)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"times_s": times, "median_s": statistics.median(times),
                      "cpu_median_s": statistics.median(cpu_times), "loss": loss,
                      "peak_rss_mib": rss_mib, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
