"""`python -m tcclip_jax.export --format jax|onnx` on the golden TC-CLIP: the artifact run by
`jax` alone and the ONNX file run by onnxruntime, each in a process that never imports
tcclip_jax, give the Predictor's logits and video embeddings for uint8 clips, at any batch size;
what cannot be exported is refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import golden_recipe
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import random_params

from tcclip_jax import export as export_cli
from tcclip_jax.apps.export import ExportError, onnx_model
from tcclip_jax.apps.inference import Predictor
from tcclip_jax.weights.checkpoint import save_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What a user of each file runs: no tcclip_jax anywhere. Batches of 2 and 1 clips (the batch
# dimension is symbolic); outputs saved for the test to compare.
RUN_JAX = """
import sys
import numpy as np
from jax import export
exported = export.deserialize(open(sys.argv[1], "rb").read())
clips = np.load(sys.argv[2])
out = {}
for b in (len(clips), 1):
    result = exported.call(clips[:b])
    out[f"logits{b}"] = np.asarray(result["logits"])
    out[f"video{b}"] = np.asarray(result["video_embedding"])
assert "tcclip_jax" not in sys.modules
np.savez(sys.argv[3], **out)
"""
RUN_ONNX = """
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
clips = np.load(sys.argv[2])
out = {}
for b in (len(clips), 1):
    video, logits = session.run(["video_embedding", "logits"], {"clips": clips[:b]})
    out[f"logits{b}"], out[f"video{b}"] = logits, video
assert "tcclip_jax" not in sys.modules
np.savez(sys.argv[3], **out)
"""


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The golden TC-CLIP as an orbax model directory, uint8 clips, and the Predictor's
    logits and video embeddings for them."""
    fixture = golden_recipe.load_fixture(os.path.join(REPO, golden_recipe.FIXTURE))
    cfg, params = golden_recipe.golden_model(fixture)
    d = tmp_path_factory.mktemp("golden")
    save_model(str(d / "model"), cfg, params, normalization="imagenet")
    shape = (2, cfg.num_frames, cfg.image_resolution, cfg.image_resolution, 3)
    clips = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.save(d / "clips.npy", clips)
    predictor = Predictor.from_checkpoint(str(d / "model"))
    classnames = fixture["case"]["classnames"]
    video, logits = predictor.predict(predictor.normalize(clips), classnames)
    return {
        "dir": d, "classnames": classnames, "logits": logits,
        "video": video["video_embedding"],
    }  # fmt: skip


def _run_without_tcclip(script: str, artifact: str, golden: dict) -> dict:
    out = golden["dir"] / "outputs.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)
    res = subprocess.run(
        [sys.executable, "-c", script, artifact, str(golden["dir"] / "clips.npy"), str(out)],
        capture_output=True, text=True, cwd=str(golden["dir"]), env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return dict(np.load(out))


def _export(golden: dict, fmt: str, output: str, capsys) -> None:
    argv = ["--checkpoint", str(golden["dir"] / "model"), "--format", fmt, "--output", output,
            "--classes", *golden["classnames"]]  # fmt: skip
    assert export_cli.main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"wrote {output}: ")


def _assert_same(got: dict, golden: dict) -> None:
    for b in (2, 1):
        np.testing.assert_allclose(got[f"logits{b}"], golden["logits"][:b], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[f"video{b}"], golden["video"][:b], atol=1e-5, rtol=0)


def test_jax_export_artifact_runs_with_jax_alone(golden, capsys):
    pytest.importorskip("flatbuffers", reason="pip install 'tcclip-jax[export]'")
    artifact = str(golden["dir"] / "tcclip.jax")
    _export(golden, "jax", artifact, capsys)
    _assert_same(_run_without_tcclip(RUN_JAX, artifact, golden), golden)


@pytest.mark.slow  # ~30 s: the conversion of the golden model (the tiny one runs below)
def test_onnx_file_runs_with_onnxruntime(golden, capsys):
    pytest.importorskip("jax2onnx", reason="pip install 'tcclip-jax[export]'")
    pytest.importorskip("onnxruntime", reason="pip install 'tcclip-jax[export]'")
    path = str(golden["dir"] / "tcclip.onnx")
    _export(golden, "onnx", path, capsys)
    _assert_same(_run_without_tcclip(RUN_ONNX, path, golden), golden)


@pytest.fixture(scope="module")
def tiny_xla(tmp_path_factory, tiny_config):
    """A tiny TC-CLIP whose config asks for jax.nn.dot_product_attention, and the command's
    arguments for it."""
    cfg = tiny_config.replace(attention="xla")
    d = tmp_path_factory.mktemp("xla")
    save_model(str(d / "model"), cfg, random_params(cfg, 0), normalization="clip")
    return d, ["--checkpoint", str(d / "model"), "--classes", "a", "b"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_onnx_of_a_config_asking_for_dot_product_attention(tiny_xla):
    """The ONNX file computes attention as einsums, whatever the config asks for."""
    pytest.importorskip("jax2onnx", reason="pip install 'tcclip-jax[export]'")
    onnxruntime = pytest.importorskip("onnxruntime", reason="pip install 'tcclip-jax[export]'")
    d, argv = tiny_xla
    output = str(d / "model.onnx")
    assert export_cli.main([*argv, "--format", "onnx", "--output", output]) == 0
    predictor = Predictor.from_checkpoint(str(d / "model"))
    clips = np.random.default_rng(1).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(output, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"clips": clips})
    want = predictor.logits(predictor.normalize(clips), ["a", "b"])
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=0)


def test_what_onnx_cannot_hold_is_refused_in_one_line(tiny_xla, capsys):
    pytest.importorskip("jax2onnx", reason="pip install 'tcclip-jax[export]'")
    spec = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    with pytest.raises(ExportError) as e:  # a primitive the converter lacks
        onnx_model(lambda x: (jnp.linalg.eigh(x)[0], x), spec, "eigh")
    assert str(e.value) == (
        "cannot convert the model to ONNX: NotImplementedError: eigh currently supports only "
        "1x1 and 2x2 matrices; larger decompositions are pending"
    )
    d, argv = tiny_xla
    output = str(d / "bf16.onnx")
    assert export_cli.main([*argv, "--format", "onnx", "--output", output, "--dtype",
                            "bfloat16"]) == 2  # fmt: skip
    assert _error_line(capsys) == "error: ONNX export is float32 only, not bfloat16"
    assert not os.path.exists(output)


def test_arguments_are_checked_first(tiny_xla, capsys):
    d, argv = tiny_xla
    checkpoint = argv[:2]
    assert export_cli.main([*checkpoint, "--format", "jax", "--output", str(d / "a.jax")]) == 2
    assert _error_line(capsys) == (
        "error: --format jax bakes in class names: give --classes or --labels"
    )
    (d / "taken.jax").write_bytes(b"")
    assert export_cli.main([*argv, "--format", "jax", "--output", str(d / "taken.jax")]) == 2
    assert _error_line(capsys) == (
        f"error: --output {d / 'taken.jax'} exists (--overwrite to replace it)"
    )
    assert export_cli.main([*argv, "--format", "hub", "--output", str(d / "hub")]) == 2
    assert _error_line(capsys) == (
        "error: --format hub keeps every class open: drop --classes / --labels"
    )
