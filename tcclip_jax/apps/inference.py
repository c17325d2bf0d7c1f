"""One-call inference: `Predictor.from_pretrained(DIR_OR_REPO_ID).logits(clips, classnames)`.

`from_pretrained` reads an orbax model directory (`weights.checkpoint`, what training and
conversion write), a Hugging Face Hub model folder or a Hub repo id (`weights.hub`);
`save_pretrained` writes the folder.

Also what the command lines share (predict, visualize, bench): dtype names, loading a
predictor with a one-line error, the normalisation to use with a checkpoint, and the test-time
view config of a model. Prompt tokens and the text encoder are the model's
(`tcclip_jax.models.prompts`).

Class embeddings depend on the class names and the weights only, so they are computed once per
class list and cached; each call then runs the vision tower and (TC-CLIP) VP + the EOT row of
the last text block.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tcclip_jax.apps.model_card import model_card
from tcclip_jax.data.config import NORMALIZATIONS, default_data_config, normalization_stats
from tcclip_jax.data.transforms import normalize
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.models.prompts import prompt_tokens, text_encoder
from tcclip_jax.models.video_clip import VideoCLIP
from tcclip_jax.runtime import storage
from tcclip_jax.weights import hub
from tcclip_jax.weights.checkpoint import (
    MODEL_CONFIG_FILE,
    CheckpointError,
    load_model,
    load_normalization,
)

# Compute dtypes by name, for command-line flags.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Class lists whose text embeddings a Predictor keeps (the least recently used dropped first).
TEXT_CACHE_SIZE = 16
# --normalization choices: the checkpoint's record, or a name overriding it.
NORMALIZATION_CHOICES = ("checkpoint", *sorted(NORMALIZATIONS))


def checkpoint_normalization(directory: str, choice: str = "checkpoint") -> str:
    """The normalisation to feed a checkpoint's weights: the one it records for `choice`
    'checkpoint' (see `weights.checkpoint.load_normalization`), else `choice` itself."""
    if choice == "checkpoint":
        return load_normalization(directory)
    normalization_stats(choice)  # a ValueError naming the choices
    return choice


def _dtype(dtype: Any) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 inference needs x64: call jax.config.update('jax_enable_x64', True) first"
        )
    return dtype


class Predictor:
    """A model and its weights, ready to classify clips against any class names.

    `normalization` names the input normalisation the weights expect (`normalize` applies it);
    `from_checkpoint` takes the checkpoint's record.
    """

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        dtype: Any = jnp.float32,
        normalization: str = "imagenet",
    ):
        self.config = config
        self.dtype = _dtype(dtype)
        self.normalization = normalization
        self.mean, self.std = normalization_stats(normalization)
        # float64 runs everything in float64; otherwise parameters stay float32 (master copy)
        # and `dtype` is the compute dtype.
        param_dtype = jnp.float64 if self.dtype == jnp.float64 else jnp.float32
        self.params = jax.tree.map(lambda p: jnp.asarray(p, param_dtype), params)
        self.model = VideoCLIP(config, dtype=self.dtype)
        self._encode_text = text_encoder(self.model)
        self._encode_video = jax.jit(
            lambda p, c, attn: self.model.apply(
                {"params": p}, c, return_attention=attn, method="encode_video"
            ),
            static_argnums=2,
        )
        self._logits = jax.jit(
            lambda p, v, t: self.model.apply({"params": p}, v, t, method="logits")
        )
        self._without_vp = jax.jit(
            lambda p, t: self.model.apply({"params": p}, t, method="text_embeddings_without_vp")
        )
        # The class lists' text embeddings, most recently used last (a web app's users each
        # bring their own lists: the oldest are dropped beyond TEXT_CACHE_SIZE).
        self._text_cache: collections.OrderedDict[tuple[str, ...], Any] = collections.OrderedDict()
        self._text_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls, directory: str, dtype: Any = jnp.float32, normalization: str = "checkpoint"
    ) -> Predictor:
        """The checkpoint's model, normalised as it records (or as `normalization` names)."""
        config, params = load_model(directory)
        normalization = checkpoint_normalization(directory, normalization)
        return cls(config, params, dtype=dtype, normalization=normalization)

    @classmethod
    def from_pretrained(
        cls, source: str, dtype: Any = jnp.float32, normalization: str = "checkpoint"
    ) -> Predictor:
        """The model of an orbax model directory, a Hub model folder or a Hub repo id (fetched
        into the Hugging Face cache; only the cache with `HF_HUB_OFFLINE=1`), normalised as it
        records (or as `normalization` names)."""
        if not hub.is_hub_source(source):
            return cls.from_checkpoint(source, dtype, normalization)
        config, params, recorded = hub.load_pretrained(source)
        if normalization == "checkpoint":
            normalization = recorded
        normalization_stats(normalization)  # a ValueError naming the choices
        return cls(config, params, dtype=dtype, normalization=normalization)

    def save_pretrained(self, directory: str, overwrite: bool = False) -> list[str]:
        """Write this model as a Hub model folder (`weights.hub`); returns the files written."""
        card = model_card(self.config, self.normalization)
        return hub.save_pretrained(
            directory, self.config, self.params, self.normalization, card, overwrite=overwrite
        )

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames [..., 3] -> the float32 input these weights expect."""
        return normalize(frames, self.mean, self.std)

    def tokens(self, classnames: Sequence[str]) -> np.ndarray:
        """Prompt token ids [C, L] (class names normalised as the published code does)."""
        return prompt_tokens(self.config, classnames, trim=False)

    def encode_classes(self, classnames: Sequence[str]) -> Any:
        """The text side of `classnames` (see `models.prompts.text_encoder`), cached per list."""
        key = tuple(classnames)
        with self._text_lock:  # a web app's handlers run in threads
            if key in self._text_cache:
                self._text_cache.move_to_end(key)
                return self._text_cache[key]
        text = self._encode_text(self.params, prompt_tokens(self.config, classnames))
        with self._text_lock:
            self._text_cache[key] = text
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return text

    def encode_video(self, clips: np.ndarray, return_attention: bool = False) -> dict:
        """clips [B, T, H, W, 3] normalised (`normalize`) -> the vision outputs (see
        VideoCLIP.encode_video)."""
        clips = jnp.asarray(clips, self.dtype)
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"clips must be [B, T, H, W, 3], got shape {tuple(clips.shape)}")
        return self._encode_video(self.params, clips, return_attention)

    def logits(self, clips: np.ndarray, classnames: Sequence[str]) -> np.ndarray:
        """[B, n_cls] logits, exp(logit_scale) * cosine, as NumPy."""
        return self.score(self.encode_video(clips), classnames)

    def score(self, video: dict, classnames: Sequence[str]) -> np.ndarray:
        """`logits` from vision outputs: `video_embedding` [B, E] and, for TC-CLIP,
        `context_embeddings` [B, k, D] (e.g. stored by `embed`)."""
        return np.asarray(self._logits(self.params, video, self.encode_classes(classnames)))

    def text_embeddings_without_vp(self, texts: Sequence[str]) -> np.ndarray:
        """[Q, E] L2-normalised embeddings of `texts` that need no video (see
        `VideoCLIP.text_embeddings_without_vp`)."""
        return np.asarray(self._without_vp(self.params, self.encode_classes(list(texts))))

    def logit_multiplier(self) -> float:
        """exp(logit_scale): what the model multiplies every cosine by."""
        return float(self.model.apply({"params": self.params}, method="logit_multiplier"))

    def predict(self, clips: np.ndarray, classnames: Sequence[str]) -> tuple[dict, np.ndarray]:
        """(vision outputs, logits): for callers that also want embeddings or seed indices."""
        video = self.encode_video(clips)
        logits = self._logits(self.params, video, self.encode_classes(classnames))
        return jax.tree.map(np.asarray, video), np.asarray(logits)


def class_probabilities(predictor: Predictor, views: np.ndarray, classnames: Sequence[str]):
    """[B, V, T, H, W, 3] normalised views of B videos -> [B, C] probabilities: per-view
    softmax, averaged over the V views."""
    b, v = views.shape[:2]
    logits = predictor.logits(views.reshape(b * v, *views.shape[2:]), classnames)  # [B*V, C]
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return np.asarray(probs.reshape(b, v, -1).mean(axis=1))


def _not_a_model_hint(directory: str) -> str:
    """Where the model probably is, when `directory` is a training run or its state."""
    run_model = storage.join(directory, "model")
    if storage.isfile(storage.join(run_model, MODEL_CONFIG_FILE)):
        return f"it is a training run directory, whose model is {run_model}"
    if storage.is_remote(directory):
        return ""
    parts = os.path.normpath(os.path.abspath(directory)).split(os.sep)
    if "checkpoints" in parts:
        run = os.sep.join(parts[: parts.index("checkpoints")]) or os.sep
        return (
            "it holds training state (optimizer and data iterator); use the run's exported "
            f"weights in {os.path.join(run, 'model')}"
        )
    return ""


def load_predictor(
    directory: str, dtype: str = "float32", normalization: str = "checkpoint"
) -> Predictor:
    """A Predictor for an orbax model directory, a Hub model folder or a Hub repo id
    (`Predictor.from_pretrained`); CheckpointError naming the problem."""
    try:
        return Predictor.from_pretrained(directory, DTYPES[dtype], normalization)
    except CheckpointError:
        hint = _not_a_model_hint(directory)
        if not hint:
            raise
        raise CheckpointError(f"{directory} is not a model checkpoint: {hint}") from None
    except (OSError, ValueError, KeyError) as e:  # orbax on a damaged params/ directory
        raise CheckpointError(f"{directory}: cannot read the parameters: {e}") from None


def view_config(
    model_config: ModelConfig, clips: int = 2, crops: int = 1, normalization: str = "imagenet"
) -> ml_collections.ConfigDict:
    """Test-time views for `model_config`: its frame count and resolution, resize as released
    (short side int(256 / 224 * size)), `clips` temporal x `crops` spatial views, normalised
    as `normalization` names (a Predictor's `normalization`)."""
    cfg = default_data_config()
    cfg.normalization = normalization
    cfg.num_frames = model_config.num_frames
    cfg.image_size = model_config.image_resolution
    cfg.resize_size = int(256 / 224 * model_config.image_resolution)
    cfg.test_clips, cfg.test_crops = clips, crops
    cfg.uint8_output = False
    return cfg
