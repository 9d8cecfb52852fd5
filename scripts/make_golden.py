#!/usr/bin/env python3
"""Writes the model golden files under tests/golden/ (float64, fixed seed, tiny sizes).

Run with the project venv:  .venv/bin/python scripts/make_golden.py
- model_tiny.safetensors: every weight (owl2 / checkpoint names), a batch with two images in one sample, a
  text-only sample with right padding and a one-image sample, the ViT hidden states, the abstractor output,
  the spliced mask / modality / positions / labels, logits, loss and the gradients of one parameter per component.
- llama_check.safetensors: text ids and the logits of HF LlamaForCausalLM loaded with the multiway.0 weights
  (the C++ test sets multiway.1 = multiway.0 and must match plain LLaMA).
- vit_interp.safetensors: 16 px images through HF CLIP with interpolate_pos_encoding (bicubic) -> hidden states.
The reference model itself lives in scripts/reference/ (HF CLIP + plain-PyTorch abstractor and MAM decoder).
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import ReferenceOwl2, ReferenceConfig, IMAGE_TOKEN_INDEX as IMG  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

# Must equal TinyGoldenConfig() in tests/golden_io.h.
TINY = ReferenceConfig(
    vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_channels=3,
                image_size=12, patch_size=4, layer_norm_eps=1e-6),
    abstractor=dict(num_learnable_queries=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, encoder_hidden_size=16, grid_size=3, layer_norm_eps=1e-6,
                    attn_norm_eps=1e-5),
    decoder=dict(vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0))

GRAD_PARAMS = [
    "model.vision_model.encoder.layers.0.self_attn.query_key_value.weight",
    "model.visual_abstractor.encoder.layers.0.crossattention.attention.key.weight",
    "model.layers.0.self_attn.k_proj.multiway.1.weight",
    "model.layers.1.mlp.gate_proj.weight",
]


def randomize(model, gen):
    """Non-trivial values everywhere (norm weights and biases too), so that every mapping mistake shows."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.3)
        for name, p in model.named_parameters():
            if ("norm" in name or "layrnorm" in name or "ffn_ln" in name) and name.endswith("weight"):
                p.add_(1.0)  # norm gains around 1


def batch(gen):
    ids = torch.tensor([[1, 5, IMG, 7, 8, 9, IMG, 10, 11],
                        [1, 12, 13, 14, 15, 16, 17, 0, 0],
                        [1, IMG, 18, 19, 20, 21, 22, 23, 24]], dtype=torch.int64)
    mask = torch.tensor([[1] * 9, [1] * 7 + [0] * 2, [1] * 9], dtype=torch.int64)
    labels = ids.clone()
    labels[ids == IMG] = -100
    labels[:, :2] = -100
    labels[mask == 0] = -100
    images = torch.randn(3, 3, 12, 12, generator=gen, dtype=torch.float64)
    return ids, mask, images, labels


def llama_check(ref, gen):
    d = TINY.decoder
    conf = LlamaConfig(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                       intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
                       num_attention_heads=d["num_attention_heads"], num_key_value_heads=d["num_key_value_heads"],
                       max_position_embeddings=d["max_position_embeddings"], rms_norm_eps=d["rms_norm_eps"],
                       rope_theta=d["rope_theta"], tie_word_embeddings=False, attention_bias=False)
    conf._attn_implementation = "sdpa"  # exact in float64; HF eager casts the softmax to float32
    llama = LlamaForCausalLM(conf).double().eval()
    sd = {}
    for name, t in ref.owl2_tensors().items():
        if name.startswith("model.vision_model.") or name.startswith("model.visual_abstractor."):
            continue
        if ".multiway.1." in name:
            continue
        sd[name.replace(".multiway.0", "")] = t
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    ids = torch.randint(0, d["vocab_size"], (2, 7), generator=gen)
    # HF's RMSNorm computes in float32 even for float64 inputs; keep float64 for 1e-6 comparisons.
    modeling_llama.LlamaRMSNorm.forward = lambda self, x: self.weight * (
        x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    with torch.no_grad():
        logits = llama(input_ids=ids).logits
        # Self-check of the reference decoder: both copies equal -> plain LLaMA.
        with torch.no_grad():
            for layer in ref.model.layers:
                for mw in (layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn.k_proj,
                           layer.self_attn.v_proj):
                    saved = [p.clone() for p in mw.multiway[1].parameters()]
                    for p0, p1 in zip(mw.multiway[0].parameters(), mw.multiway[1].parameters()):
                        p1.copy_(p0)
                    mw._saved = saved
            B, T = ids.shape
            mod = torch.tensor([[0, 1, 1, 0, 1, 0, 0]] * B)
            ours = ref.lm_head(ref.decode(ref.model.embed_tokens(ids), torch.ones(B, T, dtype=torch.bool), mod,
                                          torch.arange(T)[None].expand(B, T)))
            for layer in ref.model.layers:
                for mw in (layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn.k_proj,
                           layer.self_attn.v_proj):
                    for p1, s in zip(mw.multiway[1].parameters(), mw._saved):
                        p1.copy_(s)
                    del mw._saved
    err = (ours - logits).abs().max().item()
    assert err < 1e-12, f"reference decoder differs from HF LLaMA by {err}"
    return {"input_ids": ids, "logits": logits}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = os.path.join(root, "tests", "golden")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)

    ref = ReferenceOwl2(TINY).double()
    randomize(ref, gen)
    ids, mask, images, labels = batch(gen)

    vit = ref.model.vision_model(images)
    abstractor = ref.model.visual_abstractor(vit)
    out = ref(ids, mask, images, labels)
    out["loss"].backward()
    with torch.no_grad():
        embeds = ref.splice(ids, mask, images)[0]
    grads = ref.owl2_tensors(grads=True)

    tensors = {"w." + k: v.contiguous() for k, v in ref.owl2_tensors().items()}
    tensors.update({
        "in.input_ids": ids, "in.attention_mask": mask, "in.images": images, "in.labels": labels,
        "out.vit_hidden": vit.detach(), "out.abstractor": abstractor.detach(),
        "out.inputs_embeds": embeds, "out.logits": out["logits"].detach(), "out.loss": out["loss"].detach().reshape(1),
        "out.attention_mask": out["attention_mask"].to(torch.int64), "out.modality": out["modality"],
        "out.position_ids": out["position_ids"].contiguous(), "out.labels": out["labels"],
    })
    for name in GRAD_PARAMS:
        tensors["grad." + name] = grads[name].contiguous()
    save_file(tensors, os.path.join(out_dir, "model_tiny.safetensors"))

    ref.zero_grad()
    save_file({k: v.contiguous() for k, v in llama_check(ref, gen).items()},
              os.path.join(out_dir, "llama_check.safetensors"))

    images16 = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        vit16 = ref.model.vision_model(images16, interpolate=True)
    save_file({"in.images": images16, "out.vit_hidden": vit16.contiguous()},
              os.path.join(out_dir, "vit_interp.safetensors"))
    for f in sorted(os.listdir(out_dir)):
        print(f"{f}: {os.path.getsize(os.path.join(out_dir, f))} bytes")


if __name__ == "__main__":
    main()
