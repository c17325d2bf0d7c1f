"""The checkpoint's normalisation record: written, read back, and the fallback for checkpoints
written before it; Predictor feeds its weights the recorded normalisation."""

import json

import jax
import numpy as np
import pytest

from tcclip_jax.apps.inference import Predictor, checkpoint_normalization
from tcclip_jax.data.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from tcclip_jax.models import VideoCLIP
from tcclip_jax.weights.checkpoint import (
    INFO_FILE,
    PREPROCESSING_FILE,
    CheckpointError,
    load_normalization,
    save_model,
)

# save_model writes any tree; only the Predictor test needs the model's own parameters.
TREE = {"w": np.zeros(2, np.float32)}


def test_the_record_names_the_normalisation_and_its_values(tiny_config, tmp_path):
    config = tiny_config.replace(model="vifi_clip")
    save_model(str(tmp_path / "a"), config, TREE, normalization="imagenet")
    record = json.loads((tmp_path / "a" / PREPROCESSING_FILE).read_text())
    assert record == {
        "normalization": "imagenet",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    assert load_normalization(str(tmp_path / "a")) == "imagenet"
    # What the checkpoint records, unless the caller names one.
    assert checkpoint_normalization(str(tmp_path / "a")) == "imagenet"
    assert checkpoint_normalization(str(tmp_path / "a"), "clip") == "clip"
    with pytest.raises(ValueError, match="normalization must be one of"):
        checkpoint_normalization(str(tmp_path / "a"), "openai")


def test_checkpoints_without_a_record_fall_back(tiny_config, tmp_path):
    """Before the record: a released TC-CLIP conversion (info.json names the file) expects
    ImageNet's statistics; everything else was CLIP-normalised."""
    config = tiny_config.replace(model="vifi_clip")
    save_model(str(tmp_path / "released"), config, TREE, info={"tcclip": "/x/k400.pth"})
    save_model(str(tmp_path / "clip"), config, TREE, info={"clip": "/x/ViT-B-16.pt"})
    save_model(str(tmp_path / "trained"), config, TREE, info={"protocol": "fewshot"})
    assert load_normalization(str(tmp_path / "released")) == "imagenet"
    assert load_normalization(str(tmp_path / "clip")) == "clip"
    assert load_normalization(str(tmp_path / "trained")) == "clip"
    assert not (tmp_path / "clip" / PREPROCESSING_FILE).exists()
    assert (tmp_path / "clip" / INFO_FILE).exists()


def test_a_bad_record_is_one_line_naming_the_file(tiny_config, tmp_path):
    config = tiny_config.replace(model="vifi_clip")
    save_model(str(tmp_path / "a"), config, TREE, normalization="clip")
    (tmp_path / "a" / PREPROCESSING_FILE).write_text('{"normalization": "rgb"}')
    with pytest.raises(CheckpointError, match=rf"{PREPROCESSING_FILE}: invalid preprocessing"):
        load_normalization(str(tmp_path / "a"))


def test_predictor_normalises_as_the_checkpoint_records(tiny_config, tmp_path):
    config = tiny_config.replace(model="vifi_clip")
    clips, tokens = np.zeros((1, 4, 32, 32, 3), np.float32), np.ones((2, 30), np.int32)
    shapes = jax.eval_shape(VideoCLIP(config).init, jax.random.key(0), clips, tokens)["params"]
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # no compiling
    save_model(str(tmp_path / "a"), config, params, normalization="clip")
    frames = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)
    predictor = Predictor.from_checkpoint(str(tmp_path / "a"))
    assert predictor.normalization == "clip"
    expected = (frames / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(predictor.normalize(frames), expected, rtol=1e-5, atol=1e-5)
    told = Predictor.from_checkpoint(str(tmp_path / "a"), normalization="imagenet")
    expected = (frames / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(told.normalize(frames), expected, rtol=1e-5, atol=1e-5)
