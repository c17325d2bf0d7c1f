"""The benchmark runs end to end and counts the same model FLOPs with and without remat
(the memory saving is tested in test_models.py, at a size where activations dominate)."""

from __future__ import annotations

import re

import pytest

from tcclip_jax import bench

ARGS = ["--arch", "ViT-B/32", "--depth", "3", "--frames", "8", "--batch", "1", "--classes", "3"]
ARGS += ["--steps", "1", "--warmup", "0"]


def run(capsys, *extra: str) -> list[tuple[str, float, float]]:
    """(phase, GFLOP per call, compiled GiB) of every printed measurement."""
    bench.main([*ARGS, *extra])
    out = capsys.readouterr().out
    found = re.findall(r"^(\w+): .*?([\d.]+) GFLOP/call .*?memory ([\d.]+) GiB", out, re.M)
    return [(name, float(gflop), float(gib)) for name, gflop, gib in found]


def test_remat_counts_model_flops(capsys):
    ((phase, plain, _),) = run(capsys, "--mode", "train")
    ((remat_phase, remat, _),) = run(capsys, "--mode", "train", "--remat")
    assert phase == remat_phase == "train"
    # The scanned program's own cost analysis would count one block of the scan.
    assert remat == pytest.approx(plain, rel=1e-3) and plain > 0


def test_inference_phases(capsys):
    stats = run(capsys, "--mode", "infer")
    assert [phase for phase, _, _ in stats] == ["infer", "infer"]  # class set, then videos.
    assert all(gflop > 0 for _, gflop, _ in stats)
