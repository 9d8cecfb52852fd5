// Precompiled header for owl2 targets: the LibTorch headers every translation unit pays for.
#pragma once
#include <torch/torch.h>
