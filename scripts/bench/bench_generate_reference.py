#!/usr/bin/env python3
"""Greedy generation with a KV cache on the Python reference model (scripts/reference/), for `owl2 bench generate`.

The reference has no cache, so this script adds one the way HF transformers 4.31 LLaMA does (the version the
mPLUG-Owl2 code pins, spec §7.15): every layer keeps its post-RoPE keys / values and concatenates the new ones
each step; the prefill runs the modality-adaptive layers over the spliced prompt (image positions through the
image copies), decode steps are text tokens (spec §1.4); attention is an explicit matmul with an fp32 softmax.

Each dtype of the spec (fp32, bf16) casts the model's weights and the images to it, as `owl2 generate --dtype` does;
norms and the attention softmax stay in fp32 (the reference layers upcast), the argmax reads the logits as they are.

Usage: bench_generate_reference.py --spec JSON (config, weights file, dtypes, batch sizes, prompt and generation
lengths; written by `owl2 bench generate`). Prints one JSON line with the timings and the generated tokens.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/, for reference/
from reference import ReferenceOwl2, ReferenceConfig, IMAGE_TOKEN_INDEX  # noqa: E402
from reference.owl2_reference import at_least_f32, rotary  # noqa: E402


def attention_cached(attn, x, modality, cos, sin, allowed, past):
    """The reference attention plus a cache: past = (k, v) [B,H,L,K] post-RoPE, or None on the prefill."""
    B, S, _ = x.shape
    q = attn.q_proj(x).view(B, S, attn.H, attn.K).transpose(1, 2)
    k = attn.k_proj(x, modality).view(B, S, attn.G, attn.K).transpose(1, 2)
    v = attn.v_proj(x, modality).view(B, S, attn.G, attn.K).transpose(1, 2)

    def rot(t):
        half = t.shape[-1] // 2
        return torch.cat([-t[..., half:], t[..., :half]], dim=-1)
    q = q * cos[:, None] + rot(q) * sin[:, None]
    k = k * cos[:, None] + rot(k) * sin[:, None]
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    present = (k, v)
    k = k.repeat_interleave(attn.H // attn.G, 1)
    v = v.repeat_interleave(attn.H // attn.G, 1)
    scores = (q @ k.transpose(-1, -2)) / (attn.K ** 0.5)
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1, dtype=at_least_f32(scores.dtype)).to(q.dtype)
    return attn.o_proj((probs @ v).transpose(1, 2).reshape(B, S, -1)), present


def decode_cached(model, embeds, modality, position_ids, allowed, cache):
    """All layers over the new positions; returns (last-position logits, new cache)."""
    d = model.cfg.decoder
    cos, sin = rotary(position_ids, d["hidden_size"] // d["num_attention_heads"], d["rope_theta"], embeds.dtype)
    x = embeds
    new_cache = []
    for i, layer in enumerate(model.model.layers):
        a, present = attention_cached(layer.self_attn, layer.input_layernorm(x, modality), modality, cos, sin,
                                      allowed, cache[i] if cache else None)
        h = x + a
        x = h + layer.mlp(layer.post_attention_layernorm(h, modality))
        new_cache.append(present)
    x = model.model.norm(x[:, -1:])
    return model.lm_head(x)[:, -1], new_cache


@torch.no_grad()
def greedy(model, ids, images, new_tokens):
    """Returns (tokens [B,new], seconds to the first token, wall and CPU seconds of the remaining steps)."""
    t0 = time.perf_counter()
    embeds, mask, modality, _ = model.splice(ids, torch.ones_like(ids, dtype=torch.bool), images)
    B, S = mask.shape
    position_ids = torch.arange(S)[None].expand(B, S)
    allowed = torch.ones(S, S, dtype=torch.bool).tril()[None] & mask[:, None, :]
    logits, cache = decode_cached(model, embeds, modality, position_ids, allowed, None)
    out = [logits.argmax(-1)]
    t1, c1 = time.perf_counter(), time.process_time()
    for step in range(1, new_tokens):
        tok = out[-1]
        pos = torch.full((B, 1), S + step - 1, dtype=torch.int64)
        allowed = torch.ones(B, 1, S + step, dtype=torch.bool)
        logits, cache = decode_cached(model, model.model.embed_tokens(tok[:, None]), torch.zeros(B, 1, dtype=torch.int64),
                                      pos, allowed, cache)
        out.append(logits.argmax(-1))
    t2, c2 = time.perf_counter(), time.process_time()
    return torch.stack(out, 1), t1 - t0, t2 - t1, c2 - c1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    spec = json.loads(ap.parse_args().spec)
    torch.set_num_threads(spec["threads"])
    cfg = ReferenceConfig(vision=spec["vision"], abstractor=spec["abstractor"], decoder=spec["decoder"])
    model = ReferenceOwl2(cfg).float().eval()
    model.load_owl2(load_file(spec["weights"]))
    inputs = load_file(spec["inputs"])
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    results = []
    for name in spec.get("dtypes", ["fp32"]):
        model.to(dtypes[name])  # from the fp32 weights on the first dtype; fp32 -> bf16 rounds once
        for B in spec["batches"]:
            ids, images = inputs["input_ids"][:B], inputs["images"][:B].to(dtypes[name])
            assert int((ids == IMAGE_TOKEN_INDEX).sum()) == B
            greedy(model, ids, images, 2)  # warm-up
            ttft, decode, cpu, tokens = [], [], [], None
            for _ in range(spec["iters"]):
                tokens, t_first, t_rest, c_rest = greedy(model, ids, images, spec["new_tokens"])
                ttft.append(t_first)
                decode.append(t_rest)
                cpu.append(c_rest)
            n = spec["new_tokens"]
            results.append({"dtype": name, "batch": B, "ttft_s": statistics.median(ttft),
                            "decode_s": statistics.median(decode), "decode_cpu_s": statistics.median(cpu),
                            "decode_tokens_per_s": B * (n - 1) / statistics.median(decode),
                            "tokens": tokens.tolist()})
    print(json.dumps({"threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
