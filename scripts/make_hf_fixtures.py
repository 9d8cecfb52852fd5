#!/usr/bin/env python3
"""Writes the Hugging Face interchange fixtures under tests/fixtures/hf/ (tiny sizes, fixed seeds).

Run with the project venv:  .venv/bin/python scripts/make_hf_fixtures.py
- ref/: a reference-layout checkpoint as the official converter writes it (spec §2.1, §2.2): config.json,
  two torch.save shards of a plain dict of float16 tensors (shard 1 the decoder layers, shard 2 the rest, as
  the converter splits them), pytorch_model.bin.index.json, and the recomputable buffers
  (rotary_emb.inv_freq, q_pos_embed, k_pos_embed) that owl2 import must ignore.
- ref_golden.safetensors: a two-image batch and the logits of the Python reference model (scripts/reference/)
  run in float64 on exactly the float16 values stored in ref/.
- clip/: a tiny CLIPVisionModel (8 px images, grid 2, float32) and llama/: a tiny LlamaForCausalLM (float16),
  both written by transformers' save_pretrained (safetensors), the inputs of `owl2 init`.
- init_golden.safetensors: 12 px images through HF CLIP in float64 with interpolate_pos_encoding (grid 2 -> 3),
  post_layernorm applied to every token (what owl2's ViT returns, spec §1.1), and HF LLaMA's float64 logits on
  a few token ids.
- tiny.yaml: the owl2 config of the model these fixtures fit (the golden tiny model of tests/golden_io.h).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import TINY, randomize  # noqa: E402
from reference import ReferenceOwl2, IMAGE_TOKEN_INDEX as IMG, sincos_1d, sincos_2d_with_cls  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf")
CLIP_IMAGE_SIZE = 8  # the owl2 config uses 12: init must interpolate the positions from a 2x2 to a 3x3 grid


def reference_config_json():
    v, a, d = TINY.vision, TINY.abstractor, TINY.decoder
    return {
        "architectures": ["MPLUGOwl2LlamaForCausalLM"], "model_type": "mplug_owl2", "hidden_act": "silu",
        "vocab_size": d["vocab_size"], "hidden_size": d["hidden_size"], "intermediate_size": d["intermediate_size"],
        "num_hidden_layers": d["num_hidden_layers"], "num_attention_heads": d["num_attention_heads"],
        "num_key_value_heads": d["num_key_value_heads"], "max_position_embeddings": d["max_position_embeddings"],
        "rms_norm_eps": d["rms_norm_eps"], "rope_theta": d["rope_theta"], "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
        "visual_config": {
            "visual_model": {"model_type": "mplug_owl_vision_model", "hidden_act": "quick_gelu",
                             **{k: v[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_channels", "image_size", "patch_size",
                                                  "layer_norm_eps")}},
            "visual_abstractor": {"model_type": "mplug_owl_visual_abstract",
                                  **{k: a[k] for k in ("num_learnable_queries", "hidden_size", "num_hidden_layers",
                                                       "num_attention_heads", "intermediate_size",
                                                       "encoder_hidden_size", "grid_size", "layer_norm_eps")}},
        },
    }


def write_reference_fixture(gen):
    ref = ReferenceOwl2(TINY).double()
    randomize(ref, gen)
    # The stored values are float16; the golden model runs in float64 on exactly those values.
    sd16 = {k: v.to(torch.float16).contiguous() for k, v in ref.owl2_tensors().items()}
    ref.load_owl2({k: v.to(torch.float64) for k, v in sd16.items()})
    d, a = TINY.decoder, TINY.abstractor
    head_dim = d["hidden_size"] // d["num_attention_heads"]
    inv_freq = 1.0 / (d["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    shards = [{}, {}]
    for name, t in sd16.items():
        shards[0 if name.startswith("model.layers.") else 1][name] = t
    for i in range(d["num_hidden_layers"]):
        shards[0][f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    for i in range(a["num_hidden_layers"]):
        p = f"model.visual_abstractor.encoder.layers.{i}.crossattention.attention."
        shards[1][p + "q_pos_embed"] = sincos_1d(a["hidden_size"], torch.arange(a["num_learnable_queries"]))
        shards[1][p + "k_pos_embed"] = sincos_2d_with_cls(a["hidden_size"], a["grid_size"])
    ref_dir = os.path.join(OUT, "ref")
    os.makedirs(ref_dir, exist_ok=True)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(dict(shard), os.path.join(ref_dir, fname))  # a plain dict of tensors
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(ref_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    with open(os.path.join(ref_dir, "config.json"), "w") as f:
        json.dump(reference_config_json(), f, indent=2)

    ids = torch.tensor([[1, 5, IMG, 7, 8, 9], [1, IMG, 10, 11, 12, 13]], dtype=torch.int64)
    images = torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        logits = ref(ids, torch.ones_like(ids, dtype=torch.bool), images)["logits"]
    save_file({"in.input_ids": ids, "in.images": images, "out.logits": logits.contiguous()},
              os.path.join(OUT, "ref_golden.safetensors"))


def write_init_fixture(gen):
    v, d = TINY.vision, TINY.decoder
    clip_conf = CLIPVisionConfig(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                                 num_hidden_layers=v["num_hidden_layers"], num_attention_heads=v["num_attention_heads"],
                                 num_channels=v["num_channels"], image_size=CLIP_IMAGE_SIZE, patch_size=v["patch_size"],
                                 hidden_act="quick_gelu", layer_norm_eps=v["layer_norm_eps"])
    clip = CLIPVisionModel(clip_conf)
    randomize(clip, gen)
    clip.save_pretrained(os.path.join(OUT, "clip"))

    llama_conf = LlamaConfig(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                             intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
                             num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
                             max_position_embeddings=d["max_position_embeddings"], rms_norm_eps=d["rms_norm_eps"],
                             rope_theta=d["rope_theta"], tie_word_embeddings=False, attention_bias=False)
    llama = LlamaForCausalLM(llama_conf)
    randomize(llama, gen)
    llama.half().save_pretrained(os.path.join(OUT, "llama"))

    # Golden values from the saved files, in float64 (sdpa: HF's eager softmax would drop to float32).
    clip64 = CLIPVisionModel.from_pretrained(os.path.join(OUT, "clip"), attn_implementation="sdpa").double().eval()
    images = torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    llama64 = LlamaForCausalLM.from_pretrained(os.path.join(OUT, "llama"), attn_implementation="sdpa").double().eval()
    # HF's RMSNorm computes in float32 even for float64 inputs; keep float64 (as scripts/make_golden.py does).
    modeling_llama.LlamaRMSNorm.forward = lambda self, x: self.weight * (
        x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    ids = torch.randint(0, d["vocab_size"], (2, 7), generator=gen)
    with torch.no_grad():
        h = clip64(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
        vit = clip64.post_layernorm(h)
        logits = llama64(input_ids=ids).logits
    save_file({"in.images": images, "out.vit_hidden": vit.contiguous(), "in.input_ids": ids,
               "out.logits": logits.contiguous()}, os.path.join(OUT, "init_golden.safetensors"))


def write_owl2_config():
    def flow(d):
        return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"
    with open(os.path.join(OUT, "tiny.yaml"), "w") as f:
        f.write("# The tiny golden model (tests/golden_io.h) that the fixtures of this folder fit.\nmodel:\n")
        f.write(f"  vision: {flow(TINY.vision)}\n")
        f.write(f"  abstractor: {flow(TINY.abstractor)}\n")
        f.write(f"  decoder: {flow(TINY.decoder)}\n")


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4321)
    os.makedirs(OUT, exist_ok=True)
    write_reference_fixture(gen)
    write_init_fixture(gen)
    write_owl2_config()
    total = 0
    for dirpath, _, files in os.walk(OUT):
        for fn in sorted(files):
            size = os.path.getsize(os.path.join(dirpath, fn))
            total += size
            print(f"{os.path.relpath(os.path.join(dirpath, fn), OUT)}: {size} bytes")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
