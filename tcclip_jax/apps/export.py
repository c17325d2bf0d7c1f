"""A model in formats that run without tcclip_jax: a Hub model folder (`weights.hub`), a
`jax.export` artifact, and an ONNX file.

The artifact and the ONNX file hold one function of uint8 RGB clips `[B, T, H, W, 3]`: the
checkpoint's normalisation, the vision tower and (TC-CLIP) VP against the class names given at
export, whose text embeddings are baked in, to `video_embedding` [B, E] (L2-normalised) and
`logits` [B, C] (exp(logit_scale) * cosine). The batch size is symbolic. TC's context
summarisation is traced in its matrix-product form (`ModelConfig.merge="dense"`, equal in value
to the gather form): no sort, gather or scatter-add, so it lowers to plain ONNX operators; the
ONNX file also computes attention as einsums (`attention="explicit"`, equal in value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tcclip_jax.apps.inference import Predictor
from tcclip_jax.apps.model_card import model_card, read_info, run_metrics
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.runtime.errors import UserError
from tcclip_jax.weights import hub
from tcclip_jax.weights.checkpoint import load_model, load_normalization

FORMATS = ("hub", "jax", "onnx")
OUTPUTS = ("video_embedding", "logits")
INPUT_NAME = "clips"
BATCH = "b"  # the symbolic batch dimension's name
EXPORT_INSTALL = "pip install 'tcclip-jax[export]'"
# Warnings that say nothing about the exported model: jax2onnx 0.12.5 skipping its dm_pix plugins
# under jax 0.10, onnx_ir serialising shape constants without a recorded type.
CONVERTER_LOGGERS = ("jax2onnx", "onnx_ir")


class ExportError(UserError):
    """A model or function that cannot be written in the asked format."""


def export_hub(
    checkpoint: str,
    output: str,
    *,
    command: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> list[str]:
    """An orbax model directory as a Hub model folder, with its model card (provenance from
    info.json, the run's evaluation results if its directory holds them, `command`)."""
    config, params = load_model(checkpoint)
    normalization = load_normalization(checkpoint)
    info = read_info(checkpoint)
    card = model_card(
        config, normalization, info=info, metrics=run_metrics(checkpoint), command=command,
        license=license,
    )  # fmt: skip
    return hub.save_pretrained(
        output, config, params, normalization, card, info=info, overwrite=overwrite
    )


def serving_function(predictor: Predictor, classnames: Sequence[str], **forms: str) -> Callable:
    """uint8 clips [B, T, H, W, 3] -> {"video_embedding", "logits"}, with the predictor's
    normalisation, parameters and the class text embeddings of `classnames` as constants; TC's
    summarisation in its dense form, `forms` overriding other ModelConfig fields of equal value
    (e.g. `attention`)."""
    config = dataclasses.replace(predictor.config, merge="dense", **forms)
    model = VideoCLIP(config, dtype=predictor.dtype)
    params, text = predictor.params, predictor.encode_classes(classnames)
    shift = jnp.asarray(255.0 * np.asarray(predictor.mean, np.float32), jnp.float32)
    scale = jnp.asarray(255.0 * np.asarray(predictor.std, np.float32), jnp.float32)

    def serve(clips: jax.Array) -> dict:
        x = ((clips.astype(jnp.float32) - shift) / scale).astype(predictor.dtype)
        video = model.apply({"params": params}, x, method="encode_video")
        logits = model.apply({"params": params}, video, text, method="logits")
        return {"video_embedding": video["video_embedding"], "logits": logits}

    return serve


def input_shape(predictor: Predictor) -> tuple[int, int, int, int]:
    """(T, H, W, 3) of one clip."""
    size = predictor.config.image_resolution
    return predictor.config.num_frames, size, size, 3


def export_jax(
    predictor: Predictor,
    classnames: Sequence[str],
    output: str,
    platforms: Sequence[str] = ("cpu",),
) -> int:
    """The serving function as a serialised `jax.export.Exported` (for `platforms`), written
    to `output`; returns its size in bytes. Read back with `jax.export.deserialize`."""
    from jax import export

    try:
        import flatbuffers  # noqa: F401 - what jax's serialisation needs
    except ImportError as e:
        raise ExportError(f"--format jax needs flatbuffers ({EXPORT_INSTALL})") from e
    (batch,) = export.symbolic_shape(BATCH)
    spec = jax.ShapeDtypeStruct((batch, *input_shape(predictor)), jnp.uint8)
    fn = jax.jit(serving_function(predictor, classnames))
    try:
        exported = export.export(fn, platforms=tuple(platforms))(spec)
    except (ValueError, NotImplementedError) as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        raise ExportError(f"cannot export for platforms {list(platforms)}: {reason}") from e
    data = exported.serialize()
    _write(output, bytes(data))
    return len(data)


def export_onnx(predictor: Predictor, classnames: Sequence[str], output: str) -> int:
    """The serving function as an ONNX model (float32, opset 23, batch dimension "b") in one
    self-contained file `output`; returns its size in bytes. A primitive the converter lacks is
    refused in one line naming it."""
    if predictor.dtype != jnp.float32:
        raise ExportError(f"ONNX export is float32 only, not {jnp.dtype(predictor.dtype).name}")
    # Attention as einsums: jax2onnx 0.12.5 lacks jax.nn.dot_product_attention with a bias.
    fn = serving_function(predictor, classnames, attention="explicit")
    spec = jax.ShapeDtypeStruct((BATCH, *input_shape(predictor)), jnp.uint8)
    model = onnx_model(
        lambda clips: tuple(fn(clips)[k] for k in OUTPUTS), spec, predictor.config.model
    )
    data = model.SerializeToString()
    _write(output, data)
    return len(data)


def onnx_model(fn: Callable, spec: jax.ShapeDtypeStruct, name: str) -> Any:
    """jax2onnx's ONNX ModelProto of `fn` (one input named `clips`, outputs named `OUTPUTS`);
    what the converter refuses (a primitive it lacks) becomes an ExportError, in one line."""
    with _quiet(*CONVERTER_LOGGERS):
        try:
            import jax2onnx
        except ImportError as e:
            raise ExportError(f"--format onnx needs jax2onnx ({EXPORT_INSTALL})") from e
    try:
        with _quiet(*CONVERTER_LOGGERS):
            return jax2onnx.to_onnx(
                fn, [spec], model_name=f"tcclip_jax_{name}", input_names=[INPUT_NAME],
                output_names=list(OUTPUTS),
            )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the converter's refusals have no common type.
        reason = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        raise ExportError(f"cannot convert the model to ONNX: {reason}") from e


@contextlib.contextmanager
def _quiet(*names: str):
    """Only errors from these loggers while the block runs."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _write(path: str, data: bytes) -> None:
    """`data` into `path` (beside, then moved: no partial file)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
