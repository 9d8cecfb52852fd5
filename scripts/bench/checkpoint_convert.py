"""`owl2 bench checkpoint import|export`'s Python side: every shard loaded (load_file) and written (save_file) to
the output directory, each file fsync'd as owl2 does; the index copied.

Usage: python scripts/bench/checkpoint_convert.py SRC_DIR DST_DIR  (prints one JSON line)"""
import json, os, resource, shutil, sys, time
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
t0 = time.perf_counter()
n = 0
for f in sorted(os.listdir(src)):
    if f.endswith(".safetensors"):
        d = load_file(os.path.join(src, f))
        n += sum(t.numel() * t.element_size() for t in d.values())
        save_file(d, os.path.join(dst, f), metadata={"format": "pt"})
        fd = os.open(os.path.join(dst, f), os.O_RDONLY); os.fsync(fd); os.close(fd)
        del d
    elif f.endswith(".index.json"):
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
s = time.perf_counter() - t0
print(json.dumps({"seconds": s, "bytes": n, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
