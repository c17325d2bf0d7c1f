"""The benchmark runs end to end and counts the same model FLOPs with and without remat
(the memory saving is tested in test_models.py, at a size where activations dominate)."""

from __future__ import annotations

import re
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tcclip_jax.bench import published
from tcclip_jax.bench.__main__ import main
from tcclip_jax.bench.steps import class_tokens, prepare_train
from tcclip_jax.models import VideoCLIP
from tcclip_jax.models.initialization import random_params
from tcclip_jax.models.vision import TCTransformer

ARGS = ["--arch", "ViT-B/32", "--depth", "2", "--frames", "8", "--batch", "1", "--classes", "3"]
ARGS += ["--steps", "1", "--warmup", "0"]


def test_remat_counts_model_flops(tiny_config):
    """With remat the vision blocks run as a scan, whose own cost analysis counts one block:
    the step's FLOPs are those of the unrolled program (ViFi-CLIP blocks 1..2 scanned here)."""
    cfg = tiny_config.replace(model="vifi_clip", vision_layers=3, text_layers=1, vp_context_layer=3)
    assert TCTransformer(cfg).runs() == [[1, 2], [3]]
    clips = np.random.default_rng(0).integers(0, 256, (2, cfg.num_frames, 32, 32, 3), np.uint8)
    tokens = jnp.asarray(class_tokens(cfg, 3))
    params = random_params(cfg, 0)  # NumPy: the step's donated state holds copies
    flops = {
        remat: prepare_train(VideoCLIP(cfg, remat=remat), params, clips, tokens).stats["flops"]
        for remat in (False, True)
    }
    assert flops[True] == pytest.approx(flops[False], rel=1e-6) and flops[False] > 0


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


def test_every_phase_runs_and_states_its_share_of_the_matmul_rate(capsys):
    """Inference (class set, then videos) and the train step, end to end with --remat; every
    measurement states its FLOP rate as a share of one plain matrix product's rate on this
    backend, which the header prints (with the TC summarisation form asked for)."""
    main([*ARGS, "--mode", "both", "--remat", "--merge", "dense"])
    out = capsys.readouterr().out
    assert "TC summarisation dense;" in out.splitlines()[0]
    phases = re.findall(r"^(\w+): .*?([\d.]+) GFLOP/call .*?memory ([\d.]+) GiB", out, re.M)
    assert [phase for phase, _, _ in phases] == ["infer", "infer", "train"]
    assert all(float(gflop) > 0 and float(gib) > 0 for _, gflop, gib in phases)
    rate = float(re.search(r"matmul rate ([\d.]+) GFLOP/s", out).group(1))
    shares = re.findall(r" ([\d.]+) GFLOP/s \([^)]*?(\d+)% of the matmul rate\)", out)
    assert rate > 0 and len(shares) == 3
    for gflops, share in shares:
        assert int(share) == pytest.approx(100 * float(gflops) / rate, abs=1)
