"""Golden parity with the published PyTorch TC-CLIP, through the user's path: the real files
(an OpenAI-format CLIP `.pt`, a released-format TC-CLIP `.pth`) -> the converter CLI ->
`Predictor.logits`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")

import golden_recipe  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLOAT64_CHECK = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
sys.path.insert(0, "tests/helpers")
import golden_recipe as g
from tcclip_jax.apps.inference import Predictor
f = g.load_fixture()
case = f["case"]
shape = (case["batch"], case["num_frames"], 3, 224, 224)
clips = g.clips(case["video_seed"], shape).transpose(0, 1, 3, 4, 2)
p = Predictor.from_checkpoint(sys.argv[1], dtype=jnp.float64)
video, logits = p.predict(clips, case["classnames"])
print(json.dumps({
    "dtype": str(logits.dtype),
    "logits": float(np.abs(logits - f["logits"]).max()),
    "video": float(np.abs(video["video_embedding"] - f["video_embedding"]).max()),
    "context": float(np.abs(video["context_embeddings"] - f["context_tokens_last"]).max()),
    "seeds_equal": bool(np.array_equal(video["seed_index"], f["seed_indices"])),
}))
"""


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    fixture = golden_recipe.load_fixture(os.path.join(REPO, golden_recipe.FIXTURE))
    d = tmp_path_factory.mktemp("golden")
    clip_path, tcclip_path = str(d / "ViT-B-16-small.pt"), str(d / "tcclip-small.pth")
    golden_recipe.write_torch_files(fixture, clip_path, tcclip_path)
    out = str(d / "converted")
    case = fixture["case"]
    res = subprocess.run(
        [
            sys.executable, "tools/convert_torch_weights.py", "--clip", clip_path,
            "--tcclip", tcclip_path, "--num-frames", str(case["num_frames"]), "--output", out,
        ],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return fixture, out


def test_recipe_check_sums():
    f = golden_recipe.load_fixture(os.path.join(REPO, golden_recipe.FIXTURE))
    case, clip = f["case"], dict(f["manifest_clip"])
    conv = golden_recipe.tensor(
        case["clip_seed"], "visual.conv1.weight", clip["visual.conv1.weight"]
    )
    assert conv.astype(np.float16).astype(np.float64).sum() == pytest.approx(-3.0945008397102356)
    clips = golden_recipe.clips(case["video_seed"], (2, 8, 3, 224, 224))
    assert clips.sum() == pytest.approx(274.66315612585333)
    # The fine-tuned tensors, generated from the unprefixed keys (see golden_recipe).
    ft = golden_recipe.state_dict(f["manifest_ft"], case["ft_seed"], np.float64, strip="module.")
    assert ft["module.prompt_learner.ctx"].sum() == pytest.approx(-0.6483543782801326)
    assert ft["module.logit_scale"].sum() == pytest.approx(2.615244860690728)


def test_golden_float32(golden):
    from tcclip_jax.apps.inference import Predictor

    fixture, ckpt = golden
    case = fixture["case"]
    shape = (case["batch"], case["num_frames"], 3, 224, 224)
    clips = golden_recipe.clips(case["video_seed"], shape).transpose(0, 1, 3, 4, 2)
    predictor = Predictor.from_checkpoint(ckpt, dtype=jnp.float32)
    # A released TC-CLIP was trained and evaluated on ImageNet-normalised frames: so recorded.
    assert predictor.normalization == "imagenet"
    logits = predictor.logits(clips, case["classnames"])
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, fixture["logits"], atol=1e-4, rtol=0)
    video, _ = predictor.predict(clips, case["classnames"])
    np.testing.assert_array_equal(video["seed_index"], fixture["seed_indices"])
    np.testing.assert_allclose(video["video_embedding"], fixture["video_embedding"], atol=1e-5)
    np.testing.assert_allclose(
        video["context_embeddings"], fixture["context_tokens_last"], atol=1e-4
    )
    np.testing.assert_array_equal(
        predictor.tokens(case["classnames"]), fixture["tokenized_prompts"]
    )


def test_golden_float64(golden):
    _, ckpt = golden
    res = subprocess.run(
        [sys.executable, "-c", FLOAT64_CHECK, ckpt],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    err = json.loads(res.stdout.strip().splitlines()[-1])
    assert err["dtype"] == "float64"
    assert err["logits"] < 1e-8
    assert err["video"] < 1e-10
    assert err["context"] < 1e-8
    assert err["seeds_equal"]
