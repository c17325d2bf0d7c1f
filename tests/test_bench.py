"""The benchmark runs end to end and counts the same model FLOPs with and without remat
(the memory saving is tested in test_models.py, at a size where activations dominate)."""

from __future__ import annotations

import re
import sys

import pytest

from tcclip_jax.bench import published
from tcclip_jax.bench.__main__ import main

ARGS = ["--arch", "ViT-B/32", "--depth", "3", "--frames", "8", "--batch", "1", "--classes", "3"]
ARGS += ["--steps", "1", "--warmup", "0"]


def run(capsys, *extra: str) -> list[tuple[str, float, float]]:
    """(phase, GFLOP per call, compiled GiB) of every printed measurement."""
    main([*ARGS, *extra])
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


def test_compare_published_explains_a_missing_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not a checkout of github.com/naver-ai/tc-clip"):
        main([*ARGS, "--arch", "ViT-B/16", "--compare-published", str(tmp_path)])
    with pytest.raises(SystemExit, match="compared as TC-CLIP ViT-B/16"):
        main([*ARGS, "--compare-published", str(tmp_path)])  # ViT-B/32


def test_published_packages_are_taken_from_the_checkout(tmp_path, monkeypatch):
    """The checkout's namespace packages win over installed ones of the same name (openai-clip
    installs `clip`); a missing dependency is named."""
    files = {
        "clip/model.py": "CLIP = 'checkout CLIP'",
        "trainers/tc_clip.py": "from clip.model import CLIP\nTCCLIP = 'checkout TCCLIP'",
        "datasets/blending.py": "NAME = 'checkout blending'",
        "tome/merge.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    names = [*published.PUBLISHED_PACKAGES, "clip.model", "trainers.tc_clip", "datasets.blending"]
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    try:
        code = published.import_published(str(tmp_path))
        assert (code.CLIP, code.TCCLIP) == ("checkout CLIP", "checkout TCCLIP")
        assert code.blending.NAME == "checkout blending"
        assert sys.modules["clip"].__path__ == [str(tmp_path / "clip")]

        (tmp_path / "trainers/tc_clip.py").write_text("import timm_that_is_not_installed")
        del sys.modules["trainers.tc_clip"]
        with pytest.raises(published.PublishedCodeError, match="timm_that_is_not_installed"):
            published.import_published(str(tmp_path))
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]
        sys.modules.update(saved)


def test_utilisation_is_against_the_measured_matmul_rate(capsys):
    """Every measurement states its FLOP rate as a share of one plain matrix product's rate on
    this backend, which the header prints."""
    main([*ARGS, "--mode", "infer"])
    out = capsys.readouterr().out
    rate = float(re.search(r"matmul rate ([\d.]+) GFLOP/s", out).group(1))
    shares = re.findall(r" ([\d.]+) GFLOP/s \([^)]*?(\d+)% of the matmul rate\)", out)
    assert rate > 0 and len(shares) == 2
    for gflops, share in shares:
        assert int(share) == pytest.approx(100 * float(gflops) / rate, abs=1)
