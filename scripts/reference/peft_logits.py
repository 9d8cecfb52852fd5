#!/usr/bin/env python3
"""Loads a LoRA adapter directory with the `peft` package onto the tiny reference model and writes its logits.

    .venv/bin/python scripts/reference/peft_logits.py ADAPTER_DIR OUT.safetensors

The base weights and the batch are tests/golden/model_tiny.safetensors (scripts/make_golden.py); the adapter is
applied by `PeftModel.from_pretrained`, so this checks owl2's adapter files against PEFT's own reading of them.
OUT holds `logits` [B, S, V] (float64) and `merged_logits` (the same after PEFT's merge_and_unload).
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from reference import ReferenceOwl2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))

from make_golden import TINY  # noqa: E402  (the tiny golden configuration, tests/golden_io.h)


def tiny_base():
    """The tiny reference model in float64 with the golden weights, and the golden batch."""
    golden = load_file(os.path.join(ROOT, "tests", "golden", "model_tiny.safetensors"))
    ref = ReferenceOwl2(TINY).double().eval()
    ref.load_owl2({k[2:]: v for k, v in golden.items() if k.startswith("w.")})
    inputs = (golden["in.input_ids"], golden["in.attention_mask"], golden["in.images"])
    return ref, inputs


def logits_of(model, inputs):
    with torch.no_grad():
        return model(*inputs, None)["logits"].detach().contiguous()


def main():
    from peft import PeftModel
    adapter_dir, out = sys.argv[1], sys.argv[2]
    ref, inputs = tiny_base()
    peft_model = PeftModel.from_pretrained(ref, adapter_dir).double().eval()
    logits = logits_of(peft_model, inputs)
    merged = logits_of(peft_model.merge_and_unload(), inputs)
    save_file({"logits": logits, "merged_logits": merged}, out)


if __name__ == "__main__":
    main()
