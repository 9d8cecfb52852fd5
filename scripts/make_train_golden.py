#!/usr/bin/env python3
"""Golden losses of the first ten optimizer steps on the tiny golden model (tests/golden/train_tiny.safetensors).

The Python reference model starts from the weights of tests/golden/model_tiny.safetensors (rebuilt with the same
seeds as scripts/make_golden.py) and trains on that file's batch with torch.optim.AdamW in float64: betas
(0.9, 0.98), eps 1e-6, weight decay 0.05 except biases and norms, gradient clipping at 1.0, LR 1e-3 with
3 warm-up steps (step s < 3 gets lr * (s + 1) / 3) then cosine to 1e-4 at step 10. The C++ test runs the same
recipe through owl2's Trainer.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import TINY, randomize, batch  # noqa: E402
from reference import ReferenceOwl2  # noqa: E402

STEPS, WARMUP, PEAK, MIN_LR = 10, 3, 1e-3, 1e-4


def lr_at(step):
    if step < WARMUP:
        return PEAK * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, STEPS - WARMUP))
    return MIN_LR + 0.5 * (PEAK - MIN_LR) * (1 + math.cos(math.pi * progress))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    ref = ReferenceOwl2(TINY).double()
    randomize(ref, gen)
    ids, mask, images, labels = batch(gen)
    no_decay = [p for n, p in ref.named_parameters() if n.endswith(".bias") or "norm" in n or "ffn_ln" in n]
    ids_nd = {id(p) for p in no_decay}
    decay = [p for _, p in ref.named_parameters() if id(p) not in ids_nd]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}],
                            lr=PEAK, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    losses = []
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = ref(ids, mask, images, labels)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    out = {"losses": torch.tensor(losses, dtype=torch.float64),
           "w.lm_head.weight": ref.owl2_tensors()["lm_head.weight"].detach().contiguous()}
    save_file(out, os.path.join(root, "tests", "golden", "train_tiny.safetensors"))
    print("losses:", " ".join(f"{x:.6f}" for x in losses))


if __name__ == "__main__":
    main()
