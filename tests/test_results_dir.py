"""Benchmark results land in benchmarks/results/<gpu>/: the folder slug of a device name."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
from results_dir import RESULTS, gpu_slug, results_dir  # noqa: E402


@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H200", "h200"),
    ("NVIDIA H100 80GB HBM3", "h100"),            # sizes and memory kind are not part of the model
    ("NVIDIA H100 PCIe", "h100-pcie"),            # another form factor, other clocks: its own folder
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"),       # the model word joins the number after it
    ("AMD Instinct MI300X", "mi300x"),
    ("NVIDIA", "gpu"),                            # nothing left of the name
    ("", "gpu"),
])
def test_gpu_slug(name, slug):
    assert gpu_slug(name) == slug


def test_the_stored_results_use_the_slugs_of_their_gpus():
    """Each folder's bench results were made on the GPU the folder is named for."""
    import json

    folders = [p for p in Path(RESULTS).iterdir() if p.is_dir()]
    assert folders
    for folder in folders:
        for f in folder.glob("bench-*.json"):
            gpu = json.loads(f.read_text())["meta"]["gpu"]
            assert gpu_slug(gpu) == folder.name, (f, gpu)


def test_results_dir_is_under_benchmarks_results():
    assert results_dir("NVIDIA H200") == os.path.join(str(BENCH / "results"), "h200")


def test_importing_results_dir_does_not_import_torch():
    """`python benchmarks/results_dir.py` (gpu_session.sh's OUT) asks torch for the device name;
    importing the module must not import torch (the slug is pure)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import results_dir; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
