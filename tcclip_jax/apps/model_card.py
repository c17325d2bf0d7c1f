"""The model card (`README.md`) of a Hub model folder: what the model is, where its weights come
from (the orbax directory's info.json), the command that wrote the folder, the run's evaluation
results when its directory holds them, and how to load it.

Local paths in the provenance are cut to their file names: a card is meant to be published.
"""

from __future__ import annotations

import json
import os

from tcclip_jax.data.config import normalization_stats
from tcclip_jax.evaluation.paper_tables import METRICS_FILES, load_run
from tcclip_jax.evaluation.tables import format_results
from tcclip_jax.models.config import ARCH_NAMES, ModelConfig, check_arch
from tcclip_jax.runtime import storage
from tcclip_jax.weights.checkpoint import INFO_FILE
from tcclip_jax.weights.hub import TOKEN_EMBEDDING_KEY

TAGS = ("video-classification", "action-recognition", "zero-shot", "clip", "jax", "flax")
MODEL_NAMES = {"tc_clip": "TC-CLIP", "vifi_clip": "ViFi-CLIP", "clip": "CLIP"}
MODEL_TAGS = {"tc_clip": "tc-clip", "vifi_clip": "vifi-clip", "clip": "clip"}
_FENCE = "```"


def read_info(checkpoint: str) -> dict | None:
    """The orbax directory's provenance record (info.json), if any."""
    path = storage.join(checkpoint, INFO_FILE)
    return json.loads(storage.read_text(path)) if storage.isfile(path) else None


def run_metrics(checkpoint: str) -> dict | None:
    """The evaluation results of the run whose exported model `checkpoint` is (its parent
    directory's eval_metrics.json or final_metrics.json), if there."""
    run = os.path.dirname(os.path.abspath(checkpoint))
    if storage.is_remote(checkpoint) or not any(
        os.path.isfile(os.path.join(run, name)) for name in METRICS_FILES
    ):
        return None
    return load_run(run)


def architecture(config: ModelConfig) -> str:
    """OpenAI's name of the towers (`ViT-B/16`), or their sizes."""
    for name in ARCH_NAMES:
        try:
            check_arch(config, name, "")
            return name
        except ValueError:
            continue
    return (
        f"ViT of {config.vision_layers} blocks, width {config.vision_width}, "
        f"patch {config.vision_patch_size}"
    )


def _origin(info: dict | None) -> list[str]:
    if not info:
        return ["Weights written by tcclip_jax (no provenance record)."]
    if "tcclip" in info:
        return [
            f"Converted from the released checkpoint `{os.path.basename(info['tcclip'])}` "
            f"(token embedding from CLIP `{os.path.basename(str(info.get('clip')))}`). Its terms "
            "of use are those of that release."
        ]
    if "step" in info:
        lines = [f"Trained with tcclip_jax; the weights of step {info['step']}."]
        for key in ("protocol", "model_variant", "init_checkpoint"):
            if info.get(key):
                value = info[key]
                value = os.path.basename(value) if key == "init_checkpoint" else value
                lines.append(f"- {key.replace('_', ' ')}: `{value}`")
        if info.get("validation"):
            lines.append(f"- validation: `{json.dumps(info['validation'], sort_keys=True)}`")
        return lines
    if "clip" in info:
        return [
            f"Initialised from CLIP `{os.path.basename(str(info['clip']))}` as the published code "
            "does before training (not fine-tuned)."
        ]
    return [f"Provenance: `{json.dumps(info, sort_keys=True)}`"]


def model_card(
    config: ModelConfig,
    normalization: str,
    *,
    info: dict | None = None,
    metrics: dict | None = None,
    command: str | None = None,
    license: str = "apache-2.0",
) -> str:
    """The card's Markdown: YAML front matter (license, library, tags, pipeline) and body."""
    name = MODEL_NAMES[config.model]
    tags = [f"- {t}" for t in dict.fromkeys((*TAGS, MODEL_TAGS[config.model]))]
    mean, std = normalization_stats(normalization)
    arch = architecture(config)
    lines = [
        "---",
        f"license: {license}",
        "library_name: tcclip_jax",
        "tags:",
        *tags,
        "pipeline_tag: video-classification",
        "---",
        "",
        f"# {name} ({arch}, {config.num_frames} frames)",
        "",
        f"A {name} video classifier in JAX/Flax: it scores a clip of {config.num_frames} frames "
        f"at {config.image_resolution} x {config.image_resolution} against any class names given "
        "at call time (open vocabulary).",
        "",
        "## Weights",
        "",
        *_origin(info),
    ]
    if command:
        lines += ["", "This folder was written by:", "", f"{_FENCE}sh", command, _FENCE]
    if metrics:
        lines += ["", "## Evaluation", "", "Top-1 / top-5 accuracy (%):", "", _FENCE]
        lines += [format_results(metrics), _FENCE]
    lines += [
        "",
        "## Input",
        "",
        f"uint8 RGB frames `[B, {config.num_frames}, {config.image_resolution}, "
        f"{config.image_resolution}, 3]` (short side resized to "
        f"{int(256 / 224 * config.image_resolution)}, centre crop), normalised as "
        f"`(x / 255 - mean) / std` with the {normalization} statistics: mean "
        f"{list(mean)}, std {list(std)}.",
        "",
        "## Use",
        "",
        f"{_FENCE}python",
        "from tcclip_jax.apps.inference import Predictor",
        "",
        'predictor = Predictor.from_pretrained("OWNER/NAME")  # a repo id, or this folder',
        "logits = predictor.logits(predictor.normalize(clips), "
        '["juggling balls", "riding a bike"])',
        _FENCE,
        "",
        f"{_FENCE}sh",
        "python -m tcclip_jax.predict --checkpoint OWNER/NAME --video a.mp4 "
        '--classes "juggling balls" "riding a bike"',
        _FENCE,
        "",
        "## Files",
        "",
        "- `config.json`: the model config and the preprocessing above.",
        "- `model.safetensors`: the parameters under the released TC-CLIP / ViFi-CLIP PyTorch "
        f"state-dict names (`module.*`) plus CLIP's `{TOKEN_EMBEDDING_KEY}`; "
        "`safetensors.torch.load_file` reads them without tcclip_jax.",
        "",
    ]
    return "\n".join(lines)
