#!/usr/bin/env python3
"""Draws PNG curves (loss, LR, gradient norm, throughput) from the metrics.jsonl of one or more run directories.

usage: plot_metrics.py RUN_DIR [RUN_DIR ...] [--out FILE.png]
Several runs (e.g. the two stages) are drawn one after the other on a shared step axis.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        sys.exit(f"{path}:{n}: not JSON: {e}")
    except OSError as e:
        sys.exit(f"cannot read {path}: {e}")
    if not rows:
        sys.exit(f"{path}: no metrics")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/metrics.png of the last run)")
    args = ap.parse_args()
    panels = [("loss", "loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"), ("tokens_per_s", "tokens/s")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    offset = 0
    for run in args.runs:
        rows = read_metrics(run)
        steps = [offset + r["step"] + 1 for r in rows]
        for ax, (key, title) in zip(axes.flat, panels):
            ys = [r.get(key) for r in rows]
            ax.plot([s for s, y in zip(steps, ys) if y is not None], [y for y in ys if y is not None],
                    label=os.path.basename(os.path.normpath(run)), linewidth=1)
            ax.set_title(title)
            ax.set_xlabel("step")
        offset = steps[-1]
    axes.flat[0].set_yscale("log")
    axes.flat[0].legend()
    fig.tight_layout()
    out = args.out or os.path.join(args.runs[-1], "metrics.png")
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
