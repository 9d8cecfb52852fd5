"""`owl2 bench consolidate`'s Python side: the same job as `owl2 checkpoint consolidate` with the `safetensors`
package. Reads the ZeRO manifest in state.json, opens every rank's shard, puts each parameter together from the
ranks' `values` by their `segments` rows (parameter, offset in it, length, offset in the shard), writes all of
them with save_file and fsyncs the file.

Usage: python scripts/bench/checkpoint_consolidate.py CHECKPOINT_DIR OUT_FILE  (prints one JSON line)"""
import json, os, resource, sys, time
import torch
from safetensors import safe_open
from safetensors.torch import save_file

src, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
zero = json.load(open(os.path.join(src, "state.json")))["extra"]["zero"]
params = zero["params"]
full = [torch.empty(numel, dtype=torch.float32) for _, numel, _ in params]
for r in range(zero["world_size"]):
    with safe_open(os.path.join(src, "optimizer.rank-%05d.safetensors" % r), framework="pt") as f:
        values = f.get_tensor("values")
        for k, offset, length, shard_offset, _ in f.get_tensor("segments").tolist():
            full[k][offset:offset + length] = values[shard_offset:shard_offset + length]
        del values
tensors = {name: full[k].view(shape) for k, (name, _, shape) in enumerate(params)}
save_file(tensors, out, metadata={"format": "pt"})
fd = os.open(out, os.O_RDONLY); os.fsync(fd); os.close(fd)
s = time.perf_counter() - t0
n = sum(t.numel() * t.element_size() for t in tensors.values())
print(json.dumps({"seconds": s, "bytes": n, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
