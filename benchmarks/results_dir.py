"""Where benchmark results go: benchmarks/results/<gpu>/, one folder per GPU model.

A short slug of the device name keeps runs on different GPUs apart, and a new run of a table
(bench-d128.md, gpu-tests.txt, ...) replaces the last one in place: the folder holds the latest
result of each table, and git keeps the older ones.

    python benchmarks/results_dir.py        # prints this GPU's folder (used by gpu_session.sh)
"""
from __future__ import annotations

import os
import re
from typing import Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_BRANDS = {"nvidia", "amd", "geforce", "tesla", "quadro", "instinct", "radeon"}
_FORM = {"pcie", "nvl"}  # variants of one model with other clocks or memory: kept in the slug


def gpu_slug(name: str) -> str:
    """A short folder name for a device name: the model, without brand words and sizes.

    'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H100 PCIe' -> 'h100-pcie',
    'NVIDIA A100-SXM4-80GB' -> 'a100', 'NVIDIA GeForce RTX 4090' -> 'rtx4090'."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in _BRANDS]
    cut = next((i for i, w in enumerate(words) if any(c.isdigit() for c in w)), len(words) - 1)
    slug = "".join(words[:cut + 1])  # up to the first word with a digit: 'rtx' + '4090'
    form = [w for w in words[cut + 1:] if w in _FORM][:1]
    return "-".join([slug] + form) if slug else "gpu"


def results_dir(device_name: Optional[str] = None) -> str:
    """benchmarks/results/<slug> for a device name, by default the current CUDA device's."""
    if device_name is None:
        import torch

        device_name = torch.cuda.get_device_name()
    return os.path.join(RESULTS, gpu_slug(device_name))


if __name__ == "__main__":
    print(os.path.relpath(results_dir()))
