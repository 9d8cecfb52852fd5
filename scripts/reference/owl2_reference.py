"""Reference mPLUG-Owl2 written from shared/spec/mplug_owl2.md.

The vision tower is HF transformers' CLIPVisionModel (weights mapped from the owl2 interleaved layout) plus a
post-LayerNorm over all tokens; the abstractor and the modality-adaptive decoder are plain PyTorch. Parameter
names of the abstractor / decoder equal the checkpoint keys; `owl2_state_dict()` / `load_owl2_state_dict()`
convert the vision tower. Precision follows the reference: RMSNorm, decoder softmax and the loss in at least
float32 (in float64 everything stays float64), rotary tables in float32.
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100


@dataclass
class ReferenceConfig:
    vision: dict = field(default_factory=lambda: dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                      num_attention_heads=16, num_channels=3, image_size=448,
                                                      patch_size=14, layer_norm_eps=1e-6))
    abstractor: dict = field(default_factory=lambda: dict(num_learnable_queries=64, hidden_size=1024,
                                                          num_hidden_layers=6, num_attention_heads=16,
                                                          intermediate_size=2816, encoder_hidden_size=1024,
                                                          grid_size=32, layer_norm_eps=1e-6, attn_norm_eps=1e-5))
    decoder: dict = field(default_factory=lambda: dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                                       num_hidden_layers=32, num_attention_heads=32,
                                                       num_key_value_heads=32, max_position_embeddings=2048,
                                                       rms_norm_eps=1e-6, rope_theta=10000.0))


def at_least_f32(dtype):
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------- sin-cos tables
def sincos_1d(dim, pos):
    """MAE 1-D table: [sin(pos*w) | cos(pos*w)], w_i = 1 / 10000^(i / (dim/2)); float32."""
    omega = torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0)
    omega = 1.0 / (10000.0 ** omega)
    out = pos.to(torch.float32).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d_with_cls(dim, grid):
    """2-D table: first half encodes the column, second half the row (spec §1.2); zero row for the class token."""
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)
    return torch.cat([torch.zeros(1, dim), emb], dim=0)


# ----------------------------------------------------------------------------------------------- vision tower
class VisionTower(nn.Module):
    """HF CLIP vision transformer + post-LayerNorm applied to every token (spec §1.1)."""

    def __init__(self, v):
        super().__init__()
        self.cfg = v
        conf = CLIPVisionConfig(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                                num_hidden_layers=v["num_hidden_layers"], num_attention_heads=v["num_attention_heads"],
                                num_channels=v["num_channels"], image_size=v["image_size"],
                                patch_size=v["patch_size"], hidden_act="quick_gelu",
                                layer_norm_eps=v["layer_norm_eps"])
        # sdpa: HF's eager path casts the softmax to float32, which would lower float64 golden values.
        conf._attn_implementation = "sdpa"
        self.clip = CLIPVisionModel(conf)

    def forward(self, pixels, interpolate=False):
        vm = self.clip
        h = vm(pixel_values=pixels, interpolate_pos_encoding=interpolate).last_hidden_state
        return vm.post_layernorm(h)

    def owl2_tensors(self, grads=False):
        """owl2 names -> tensors (or their .grad), fusing q/k/v into the per-head interleaved layout."""
        vm = self.clip
        E, h = self.cfg["hidden_size"], self.cfg["num_attention_heads"]
        get = (lambda p: p.grad) if grads else (lambda p: p.detach())
        out = {"embeddings.cls_token": get(vm.embeddings.class_embedding).reshape(1, 1, E),
               "embeddings.patch_embed.weight": get(vm.embeddings.patch_embedding.weight),
               "embeddings.position_embedding": get(vm.embeddings.position_embedding.weight)[None],
               "embeddings.pre_layernorm.weight": get(vm.pre_layrnorm.weight),
               "embeddings.pre_layernorm.bias": get(vm.pre_layrnorm.bias),
               "post_layernorm.weight": get(vm.post_layernorm.weight),
               "post_layernorm.bias": get(vm.post_layernorm.bias)}
        for i, layer in enumerate(vm.encoder.layers):
            p = f"encoder.layers.{i}."
            a = layer.self_attn
            for suf in ("weight", "bias"):
                parts = [get(getattr(getattr(a, n), suf)) for n in ("q_proj", "k_proj", "v_proj")]
                parts = [t.reshape(h, E // h, *t.shape[1:]) for t in parts]
                out[p + "self_attn.query_key_value." + suf] = torch.stack(parts, 1).reshape(3 * E, *parts[0].shape[2:])
                out[p + "self_attn.dense." + suf] = get(getattr(a.out_proj, suf))
                out[p + "input_layernorm." + suf] = get(getattr(layer.layer_norm1, suf))
                out[p + "post_attention_layernorm." + suf] = get(getattr(layer.layer_norm2, suf))
                out[p + "mlp.fc1." + suf] = get(getattr(layer.mlp.fc1, suf))
                out[p + "mlp.fc2." + suf] = get(getattr(layer.mlp.fc2, suf))
        return out

    @torch.no_grad()
    def load_owl2(self, sd):
        vm = self.clip
        E, h = self.cfg["hidden_size"], self.cfg["num_attention_heads"]
        vm.embeddings.class_embedding.copy_(sd["embeddings.cls_token"].reshape(E))
        vm.embeddings.patch_embedding.weight.copy_(sd["embeddings.patch_embed.weight"])
        vm.embeddings.position_embedding.weight.copy_(sd["embeddings.position_embedding"][0])
        vm.pre_layrnorm.weight.copy_(sd["embeddings.pre_layernorm.weight"])
        vm.pre_layrnorm.bias.copy_(sd["embeddings.pre_layernorm.bias"])
        vm.post_layernorm.weight.copy_(sd["post_layernorm.weight"])
        vm.post_layernorm.bias.copy_(sd["post_layernorm.bias"])
        for i, layer in enumerate(vm.encoder.layers):
            p = f"encoder.layers.{i}."
            a = layer.self_attn
            for suf in ("weight", "bias"):
                qkv = sd[p + "self_attn.query_key_value." + suf]
                qkv = qkv.reshape(h, 3, E // h, *qkv.shape[1:])
                for j, n in enumerate(("q_proj", "k_proj", "v_proj")):
                    getattr(getattr(a, n), suf).copy_(qkv[:, j].reshape(E, *qkv.shape[3:]))
                getattr(a.out_proj, suf).copy_(sd[p + "self_attn.dense." + suf])
                getattr(layer.layer_norm1, suf).copy_(sd[p + "input_layernorm." + suf])
                getattr(layer.layer_norm2, suf).copy_(sd[p + "post_attention_layernorm." + suf])
                getattr(layer.mlp.fc1, suf).copy_(sd[p + "mlp.fc1." + suf])
                getattr(layer.mlp.fc2, suf).copy_(sd[p + "mlp.fc2." + suf])


# ----------------------------------------------------------------------------------------------- abstractor
class _Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.heads = a["num_attention_heads"]
        self.query = nn.Linear(a["hidden_size"], a["hidden_size"])
        self.key = nn.Linear(a["encoder_hidden_size"], a["hidden_size"])
        self.value = nn.Linear(a["encoder_hidden_size"], a["hidden_size"])

    def forward(self, q_in, kv_in, qpos, kpos):
        def heads(t):
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)
        q = heads(self.query(q_in + qpos.to(q_in.dtype)))
        k = heads(self.key(kv_in + kpos.to(kv_in.dtype)))
        v = heads(self.value(kv_in))
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        ctx = scores.softmax(-1) @ v  # activation dtype, no mask (spec §1.2 step 5)
        return ctx.transpose(1, 2).reshape(q_in.shape)


class _Mlp(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.w1 = nn.Linear(a["hidden_size"], a["intermediate_size"])
        self.w2 = nn.Linear(a["intermediate_size"], a["hidden_size"])
        self.w3 = nn.Linear(a["hidden_size"], a["intermediate_size"])
        self.ffn_ln = nn.LayerNorm(a["intermediate_size"], eps=a["layer_norm_eps"])

    def forward(self, x):
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class _Output(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.out_proj = nn.Linear(a["hidden_size"], a["hidden_size"])
        self.norm2 = nn.LayerNorm(a["hidden_size"], eps=a["attn_norm_eps"])
        self.mlp = _Mlp(a)


class _CrossAttention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.norm1 = nn.LayerNorm(a["hidden_size"], eps=a["attn_norm_eps"])
        self.normk = nn.LayerNorm(a["encoder_hidden_size"], eps=a["attn_norm_eps"])
        self.attention = _Attention(a)
        self.output = _Output(a)

    def forward(self, queries, image, qpos, kpos):
        q_in = self.norm1(queries)
        kv_in = torch.cat([q_in, self.normk(image)], dim=1)
        x = q_in + self.output.out_proj(self.attention(q_in, kv_in, qpos, kpos))
        return x + self.output.mlp(self.output.norm2(x))


class _AbstractorLayer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.crossattention = _CrossAttention(a)


class _Encoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.layers = nn.ModuleList([_AbstractorLayer(a) for _ in range(a["num_hidden_layers"])])


class VisualAbstractor(nn.Module):
    def __init__(self, a, llm_hidden):
        super().__init__()
        self.cfg = a
        self.query_embeds = nn.Parameter(torch.randn(1, a["num_learnable_queries"], a["hidden_size"]) * 0.02)
        self.encoder = _Encoder(a)
        self.visual_fc = nn.Linear(a["hidden_size"], llm_hidden)
        self.vit_eos = nn.Parameter(torch.randn(1, 1, llm_hidden) * 0.02)

    def forward(self, image):
        a = self.cfg
        qpos = sincos_1d(a["hidden_size"], torch.arange(a["num_learnable_queries"]))
        kpos = torch.cat([qpos, sincos_2d_with_cls(a["hidden_size"], a["grid_size"])], dim=0)
        qpos, kpos = qpos.to(image.device), kpos.to(image.device)
        x = self.query_embeds.expand(image.shape[0], -1, -1)
        for layer in self.encoder.layers:
            x = layer.crossattention(x, image, qpos, kpos)
        return torch.cat([self.visual_fc(x), self.vit_eos.expand(image.shape[0], -1, -1)], dim=1)


# ----------------------------------------------------------------------------------------------- decoder
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.to(at_least_f32(x.dtype))
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Multiway(nn.Module):
    """Copy k runs on the tokens whose modality is k and is scattered back (spec §1.4); a way with no
    tokens is skipped."""

    def __init__(self, make):
        super().__init__()
        self.multiway = nn.ModuleList([make(), make()])

    def forward(self, x, modality):
        outs = [None, None]
        for k in (0, 1):
            sel = modality == k
            if bool(sel.any()):
                outs[k] = (sel, self.multiway[k](x[sel]))
        first = outs[0] if outs[0] is not None else outs[1]
        out = x.new_zeros(*x.shape[:-1], first[1].shape[-1])
        for o in outs:
            if o is not None:
                out = out.index_put((o[0],), o[1])
        return out


class _DecAttention(nn.Module):
    def __init__(self, d):
        super().__init__()
        D, H, G = d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"]
        self.H, self.G, self.K = H, G, D // H
        self.q_proj = nn.Linear(D, H * self.K, bias=False)
        self.k_proj = Multiway(lambda: nn.Linear(D, G * self.K, bias=False))
        self.v_proj = Multiway(lambda: nn.Linear(D, G * self.K, bias=False))
        self.o_proj = nn.Linear(H * self.K, D, bias=False)

    def forward(self, x, modality, cos, sin, allowed):
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.H, self.K).transpose(1, 2)
        k = self.k_proj(x, modality).view(B, S, self.G, self.K).transpose(1, 2)
        v = self.v_proj(x, modality).view(B, S, self.G, self.K).transpose(1, 2)

        def rot(t):
            half = t.shape[-1] // 2
            return torch.cat([-t[..., half:], t[..., :half]], dim=-1)
        q = q * cos[:, None] + rot(q) * sin[:, None]
        k = k * cos[:, None] + rot(k) * sin[:, None]
        k = k.repeat_interleave(self.H // self.G, 1)
        v = v.repeat_interleave(self.H // self.G, 1)
        scores = (q @ k.transpose(-1, -2)) / (self.K ** 0.5)
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1, dtype=at_least_f32(scores.dtype)).to(q.dtype)  # fp32 softmax (spec §1.3)
        return self.o_proj((probs @ v).transpose(1, 2).reshape(B, S, -1))


class _DecMlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        D, I = d["hidden_size"], d["intermediate_size"]
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.input_layernorm = Multiway(lambda: RMSNorm(d["hidden_size"], d["rms_norm_eps"]))
        self.self_attn = _DecAttention(d)
        self.post_attention_layernorm = Multiway(lambda: RMSNorm(d["hidden_size"], d["rms_norm_eps"]))
        self.mlp = _DecMlp(d)

    def forward(self, x, modality, cos, sin, allowed):
        h = x + self.self_attn(self.input_layernorm(x, modality), modality, cos, sin, allowed)
        return h + self.mlp(self.post_attention_layernorm(h, modality))


def rotary(position_ids, head_dim, theta, dtype):
    """cos / sin tables in float32, then cast (as HF LLaMA does)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq.to(position_ids.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


# ----------------------------------------------------------------------------------------------- full model
class _Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg.decoder
        self.embed_tokens = nn.Embedding(d["vocab_size"], d["hidden_size"])
        self.layers = nn.ModuleList([DecoderLayer(d) for _ in range(d["num_hidden_layers"])])
        self.norm = RMSNorm(d["hidden_size"], d["rms_norm_eps"])
        self.vision_model = VisionTower(cfg.vision)
        self.visual_abstractor = VisualAbstractor(cfg.abstractor, d["hidden_size"])


class ReferenceOwl2(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.cfg = cfg
        self.model = _Model(cfg)
        self.lm_head = nn.Linear(cfg.decoder["hidden_size"], cfg.decoder["vocab_size"], bias=False)

    # -- names
    def owl2_tensors(self, grads=False):
        out = {}
        for name, p in self.named_parameters():
            if not name.startswith("model.vision_model."):
                out[name] = p.grad if grads else p.detach()
        for name, t in self.model.vision_model.owl2_tensors(grads).items():
            out["model.vision_model." + name] = t
        return out

    @torch.no_grad()
    def load_owl2(self, sd):
        own = dict(self.named_parameters())
        for name, t in sd.items():
            if not name.startswith("model.vision_model."):
                own[name].copy_(t)
        self.model.vision_model.load_owl2({k[len("model.vision_model."):]: v for k, v in sd.items()
                                           if k.startswith("model.vision_model.")})

    # -- forward
    def encode_images(self, images):
        return self.model.visual_abstractor(self.model.vision_model(images))

    def decode(self, embeds, mask, modality, position_ids):
        d = self.cfg.decoder
        S = embeds.shape[1]
        causal = torch.ones(S, S, dtype=torch.bool, device=embeds.device).tril()
        allowed = causal[None] & mask[:, None, :].bool()
        cos, sin = rotary(position_ids, d["hidden_size"] // d["num_attention_heads"], d["rope_theta"], embeds.dtype)
        x = embeds
        for layer in self.model.layers:
            x = layer(x, modality, cos, sin, allowed)
        return self.model.norm(x)

    def splice(self, input_ids, attention_mask, images):
        """The reference splicing (spec §3.2): images in reading order, right padding with zero embeddings,
        modality 1 on every visual token, labels handled in forward; positions = arange."""
        B, T = input_ids.shape
        feats = self.encode_images(images) if images is not None and images.shape[0] > 0 else None
        embeds = self.model.embed_tokens(input_ids.clamp(min=0))
        ids_list = input_ids.tolist()
        seqs, mods, masks, srcs = [], [], [], []
        img = 0
        for b in range(B):
            places = [t for t in range(T) if ids_list[b][t] == IMAGE_TOKEN_INDEX]
            e, m, k, s = [], [], [], []
            start = 0
            for t in places + [T]:  # text chunk [start, t), then the image at t
                if t > start:
                    e.append(embeds[b, start:t]); m += [0] * (t - start)
                    k += [bool(x) for x in attention_mask[b, start:t].tolist()]; s += list(range(start, t))
                if t < T:
                    if feats is None or img >= feats.shape[0]:
                        raise ValueError(f"more image placeholders than images ({0 if feats is None else feats.shape[0]})")
                    n = feats.shape[1]
                    e.append(feats[img]); m += [1] * n; k += [True] * n; s += [-1] * n
                    img += 1
                start = t + 1
            seqs.append(torch.cat(e, 0)); mods.append(m); masks.append(k); srcs.append(s)
        if feats is not None and img != feats.shape[0]:
            raise ValueError(f"{img} image placeholders, {feats.shape[0]} images")
        S = max(x.shape[0] for x in seqs)
        D = embeds.shape[-1]
        pad = [S - x.shape[0] for x in seqs]
        out = torch.stack([torch.cat([x, x.new_zeros(p, D)], 0) for x, p in zip(seqs, pad)])
        modality = torch.tensor([m + [0] * p for m, p in zip(mods, pad)], dtype=torch.int64)
        mask = torch.tensor([k + [False] * p for k, p in zip(masks, pad)], dtype=torch.bool)
        src = torch.tensor([x + [-1] * p for x, p in zip(srcs, pad)], dtype=torch.int64)
        return out, mask, modality, src

    def forward(self, input_ids, attention_mask=None, images=None, labels=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        embeds, mask, modality, src = self.splice(input_ids, attention_mask, images)
        B, S = mask.shape
        position_ids = torch.arange(S)[None].expand(B, S)
        logits = self.lm_head(self.decode(embeds, mask, modality, position_ids))
        out = dict(logits=logits, attention_mask=mask, modality=modality, position_ids=position_ids)
        if labels is not None:
            new_labels = torch.where(src >= 0, labels.gather(1, src.clamp(min=0)), IGNORE_INDEX)
            lg = logits[:, :-1].reshape(-1, logits.shape[-1])
            lg = lg.to(at_least_f32(lg.dtype))
            out["loss"] = F.cross_entropy(lg, new_labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
            out["labels"] = new_labels
        return out
