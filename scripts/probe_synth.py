# Learnability probe for `owl2 data synth` output: a tiny ViT (2 layers, width 64, patch 4, like the demo
# model's vision tower) trained to predict colour / shape / count / position from the pretraining shards,
# scored on the held-out images. Usage: .venv/bin/python scripts/probe_synth.py DIR [steps]
import json, sys, tarfile, io, time
import numpy as np, torch, torch.nn as nn
from PIL import Image
torch.set_num_threads(2); torch.manual_seed(0)
root = sys.argv[1]
C = ["red","green","blue","yellow"]; S = ["circle","square","triangle"]; P = ["", "left","right","top","bottom"]
def load_train():
    xs, ys = [], []
    import glob
    for t in sorted(glob.glob(root + "/pretrain/*.tar")):
        tf = tarfile.open(t); mem = {m.name: m for m in tf.getmembers()}
        for n in sorted(mem):
            if n.endswith(".json"):
                k = n[:-5]; meta = json.loads(tf.extractfile(mem[n]).read())
                img = np.array(Image.open(io.BytesIO(tf.extractfile(mem[k + ".png"]).read())).convert("RGB"))
                xs.append(img); ys.append([C.index(meta["color"]), S.index(meta["shape"]), meta["count"] - 1, P.index(meta["position"])])
    return np.stack(xs), np.array(ys)
def load_heldout():
    xs, ys, seen = [], [], {}
    for line in open(root + "/heldout.jsonl"):
        j = json.loads(line)
        if "image" not in j: continue
        seen.setdefault(j["image"], {})[j["type"]] = j["answer"]
    for im, a in seen.items():
        xs.append(np.array(Image.open(root + "/" + im).convert("RGB")))
        ys.append([C.index(a["color"]), S.index(a["shape"]), int(a["count"]) - 1, P.index(a.get("position", ""))])
    return np.stack(xs), np.array(ys)
xtr, ytr = load_train(); xte, yte = load_heldout()
f = lambda x: torch.tensor(x).permute(0, 3, 1, 2).float() / 255.0
xtr, xte = f(xtr), f(xte); ytr, yte = torch.tensor(ytr), torch.tensor(yte)
class ViT(nn.Module):
    def __init__(s):
        super().__init__()
        s.patch = nn.Conv2d(3, 64, 4, 4); s.pos = nn.Parameter(torch.randn(1, 64, 64) * .02)
        s.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(64, 4, 256, 0.0, batch_first=True, norm_first=True), 2,
                                          enable_nested_tensor=False)
        s.heads = nn.ModuleList([nn.Linear(64, n) for n in (4, 3, 3, 5)])
    def forward(s, x):
        h = s.enc(s.patch(x).flatten(2).transpose(1, 2) + s.pos).mean(1)
        return [hd(h) for hd in s.heads]
m = ViT(); opt = torch.optim.AdamW(m.parameters(), 2e-3)
t0 = time.time()
for step in range(int(sys.argv[2]) if len(sys.argv) > 2 else 600):
    idx = torch.randint(0, len(xtr), (32,))
    loss = sum(nn.functional.cross_entropy(o, ytr[idx, k]) for k, o in enumerate(m(xtr[idx])))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 200 == 199:
        with torch.no_grad():
            out = m(xte); acc = [(o.argmax(1) == yte[:, k]).float().mean().item() for k, o in enumerate(out)]
        print(f"step {step+1} {time.time()-t0:.0f}s loss {loss.item():.3f} heldout acc color/shape/count/position {[round(a,3) for a in acc]}", flush=True)
