"""Reference for the stage hand-over: resizes a ViT position embedding [1, 1+g*g, D] to a new grid the way
HF CLIP's interpolate_pos_encoding does (torch F.interpolate, bicubic, align_corners=False; the class row is
kept), for tests/test_stage_handover.cpp.

usage: interpolate_positions.py IN.safetensors KEY NEW_GRID OUT.safetensors   (writes OUT with key "expected")
"""
import math
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def interpolate(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    _, t, d = pos.shape
    g = math.isqrt(t - 1)
    assert g * g == t - 1, f"{t - 1} patch rows are not a square grid"
    grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], resized.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, d)], dim=1)


def main() -> None:
    src, key, new_grid, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    pos = load_file(src)[key]
    save_file({"expected": interpolate(pos, new_grid).contiguous()}, out)


if __name__ == "__main__":
    main()
