"""`owl2 bench checkpoint`'s Python side: load_file one safetensors file, clone every tensor, print the timings.

Usage: python scripts/bench/checkpoint_load.py FILE.safetensors  (prints one JSON line)"""
import json, resource, sys, time
from safetensors.torch import load_file
t0 = time.perf_counter()
d = load_file(sys.argv[1])
lazy = time.perf_counter() - t0
d = {k: v.clone() for k, v in d.items()}  # materialize: load_file maps the file lazily
s = time.perf_counter() - t0
n = sum(t.numel() * t.element_size() for t in d.values())
print(json.dumps({"seconds": s, "lazy_seconds": lazy, "bytes": n, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
