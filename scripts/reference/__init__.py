"""Plain-PyTorch reference of mPLUG-Owl2 (shared/spec/mplug_owl2.md), used for golden values and benchmarks."""
from .owl2_reference import (ReferenceOwl2, ReferenceConfig, sincos_1d, sincos_2d_with_cls,  # noqa: F401
                             IMAGE_TOKEN_INDEX, IGNORE_INDEX)
