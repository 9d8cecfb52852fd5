#!/usr/bin/env python3
"""Writes tests/golden/lora_tiny/: a LoRA adapter made by the `peft` package on the tiny reference model, and the
logits PEFT computes with it.

Run with the project venv:  .venv/bin/python scripts/make_lora_golden.py
- adapter/adapter_config.json, adapter/adapter_model.safetensors: PEFT's save_pretrained of a rank-4 adapter on the
  decoder's q/k/v/o (both modality copies of k/v) and MLP projections, with the abstractor's visual_fc and layer
  1's post-attention RMSNorm pair as modules to save; every A, B and saved parameter is random (float64, seeded),
  so a wrong key, transpose or scale shows.
- expected.safetensors: `logits` of the adapted model on the golden batch (tests/golden/model_tiny.safetensors)
  and `merged_logits` after PEFT's merge_and_unload.
"""
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference.peft_logits import ROOT, logits_of, tiny_base  # noqa: E402

# The default lora.targets of owl2 (owl2/model/lora.h) as PEFT's regular expression (glob '*' -> '.*', '?' -> '.').
TARGETS = "|".join("(?:" + p.replace(".", r"\.").replace("*", ".*").replace("?", ".") + ")" for p in [
    "model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.k_proj.multiway.?",
    "model.layers.*.self_attn.v_proj.multiway.?", "model.layers.*.self_attn.o_proj", "model.layers.*.mlp.gate_proj",
    "model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj"])
SAVED = ["model.visual_abstractor.visual_fc", "model.layers.1.post_attention_layernorm"]


def main():
    from peft import LoraConfig, get_peft_model
    out_dir = os.path.join(ROOT, "tests", "golden", "lora_tiny")
    shutil.rmtree(out_dir, ignore_errors=True)
    ref, inputs = tiny_base()
    config = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=TARGETS, modules_to_save=SAVED)
    model = get_peft_model(ref, config).double()
    gen = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3 + (1.0 if "norm" in name else 0))
    model.eval()
    model.save_pretrained(os.path.join(out_dir, "adapter"), safe_serialization=True)
    card = os.path.join(out_dir, "adapter", "README.md")  # PEFT's generated model card: not a fixture
    if os.path.exists(card):
        os.remove(card)
    logits = logits_of(model, inputs)
    merged = logits_of(model.merge_and_unload(), inputs)
    print("merge changes the logits by", (merged - logits).abs().max().item())
    save_file({"logits": logits, "merged_logits": merged}, os.path.join(out_dir, "expected.safetensors"))
    for root, _, files in os.walk(out_dir):
        for f in sorted(files):
            print(os.path.relpath(os.path.join(root, f), out_dir), os.path.getsize(os.path.join(root, f)), "bytes")


if __name__ == "__main__":
    main()
