#!/usr/bin/env python3
"""Times `owl2 score --metric captions` against pycocoevalcap (PTBTokenizer via java + BLEU, ROUGE-L, CIDEr-D)
on a synthetic COCO-Karpathy-sized set (5,000 images x 5 references) and checks that the numbers agree.
Run from the repository root after building: .venv/bin/python scripts/bench/bench_score.py [--images N]"""
import argparse
import json
import os
import random
import subprocess
import tempfile
import time

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

WORDS = ("a man woman dog cat riding sitting on top of the wave surfboard table with red blue two people "
         "standing next to street bus kitchen plate food field grass tree car's isn't (small) large, white.").split()


def sentence(rng):
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
    return s[0].upper() + s[1:] + "."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--owl2", default="build/bin/owl2")
    args = ap.parse_args()
    rng = random.Random(0)
    refs = {"images": [{"id": i} for i in range(args.images)], "annotations": []}
    for i in range(args.images):
        for _ in range(5):
            refs["annotations"].append({"image_id": i, "id": len(refs["annotations"]), "caption": sentence(rng)})
    preds = [{"image_id": i, "caption": sentence(rng)} for i in range(args.images)]
    tmp = tempfile.mkdtemp()
    rp, pp = os.path.join(tmp, "refs.json"), os.path.join(tmp, "preds.json")
    json.dump(refs, open(rp, "w"))
    json.dump(preds, open(pp, "w"))

    t0 = time.perf_counter()
    out = subprocess.run([args.owl2, "score", "--metric", "captions", "--refs", rp, "--preds", pp],
                         check=True, capture_output=True, text=True).stdout
    t_cpp = time.perf_counter() - t0
    cpp = json.loads(out)

    t0 = time.perf_counter()
    gts = {i: [] for i in range(args.images)}
    for a in refs["annotations"]:
        gts[a["image_id"]].append({"caption": a["caption"]})
    res = {p["image_id"]: [{"caption": p["caption"]}] for p in preds}
    gts, res = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    r, _ = Rouge().compute_score(gts, res)
    c, _ = Cider().compute_score(gts, res)
    t_py = time.perf_counter() - t0
    py = {"Bleu_1": b[0], "Bleu_4": b[3], "ROUGE_L": r, "CIDEr": c}
    diff = max(abs(cpp[k] - py[k]) for k in py)
    print(json.dumps({"images": args.images, "owl2_score_s": round(t_cpp, 3), "pycocoevalcap_s": round(t_py, 3),
                      "speedup": round(t_py / t_cpp, 2), "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
