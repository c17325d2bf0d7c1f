"""What a TC-CLIP model looks at, as arrays: seed tokens, context tokens and CLS attention of one
clip through one summarising vision block, on the patch grid (paper Figs. 6, 7, 9).

`explain(predictor, clip) -> Explanation` (`explanation` for vision outputs already computed);
`tcclip_jax.visualization.render` draws it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tcclip_jax.apps.inference import Predictor
from tcclip_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Explanation:
    """One clip through one summarising block, on the patch grid ([T, gh, gw], row-major)."""

    layer: int  # 1-based vision block.
    num_context: int  # k.
    seed_mask: np.ndarray  # bool: the patch is a seed of its frame.
    context_id: np.ndarray  # int32: the context token a seed merged into; -1 for non-seeds.
    attention: np.ndarray  # float32: CLS attention (mean over heads) on each patch.

    def token_sizes(self) -> np.ndarray:
        """[k] number of seed patches merged into each context token."""
        ids = self.context_id[self.seed_mask]
        return np.bincount(ids, minlength=self.num_context)

    def token_frames(self) -> np.ndarray:
        """[k] number of frames each context token has seed patches in."""
        present = np.zeros((len(self.context_id), self.num_context), bool)
        for t, ids in enumerate(self.context_id):
            present[t, ids[ids >= 0]] = True
        return present.sum(axis=0)

    def spread_token(self) -> int:
        """The context token over the most frames; among those, the most compact (fewest
        patches): an object or part that one token follows through the video, as the red token
        of the paper's figures, rather than a large stretch of background."""
        frames, sizes = self.token_frames(), self.token_sizes()
        return int(np.lexsort((sizes, -frames))[0])

    def token_colours(self, frames: np.ndarray) -> np.ndarray:
        """[k, 3] uint8: the mean colour of all the pixels of each token's patches.

        frames: the clip's uint8 frames [T, H, W, 3] (the model's input, before normalising).
        """
        t, gh, gw = self.context_id.shape
        h, w = frames.shape[1:3]
        patches = frames.reshape(t, gh, h // gh, gw, w // gw, 3).mean(axis=(2, 4))
        sums = np.zeros((self.num_context, 3))
        np.add.at(sums, self.context_id[self.seed_mask], patches[self.seed_mask])
        sizes = np.maximum(self.token_sizes(), 1)[:, None]
        return np.round(sums / sizes).astype(np.uint8)


def summary_block(config: ModelConfig, block: int) -> int:
    """The 1-based vision block `block` names: itself if positive, or counted from the last
    summarising block if negative (-1: the last). It must summarise (select seeds)."""
    layers = config.summary_layers
    if not layers:
        raise ValueError(
            f"a {config.model!r} model has no seed or context tokens; visualize needs a TC-CLIP "
            "checkpoint (model 'tc_clip')"
        )
    if block < 0 and -block <= len(layers):
        return layers[block]
    if block in layers:
        return block
    raise ValueError(
        f"block {block} does not summarise context tokens; choose one of the vision blocks "
        f"{list(layers)} (1-based) or a negative index counting from the last"
    )


def explain(predictor: Predictor, clip: np.ndarray, block: int = -1) -> Explanation:
    """Seeds, context tokens and CLS attention of a normalised clip [T, H, W, 3]."""
    out = predictor.encode_video(np.asarray(clip)[None], return_attention=True)
    return explanation(predictor.config, out, block)


def explanation(config: ModelConfig, out: dict, block: int = -1, row: int = 0) -> Explanation:
    """The Explanation of clip `row` from vision outputs computed with attention
    (`Predictor.encode_video(clips, return_attention=True)`): one forward pass can both
    classify and explain."""
    layer = summary_block(config, block)
    j = config.summary_layers.index(layer)
    seed_index = np.asarray(out["seed_index"][row, j])  # [T, n_s], row-major patch indices.
    assignment = np.asarray(out["assignment"][row, j])
    attention = np.asarray(out["cls_attention"][row, layer - 1], np.float32)  # [T, P]
    t, g = seed_index.shape[0], config.grid_size
    context_id = np.full((t, config.num_patches), -1, np.int32)
    np.put_along_axis(context_id, seed_index, assignment.astype(np.int32), axis=1)
    context_id = context_id.reshape(t, g, g)
    return Explanation(
        layer=layer,
        num_context=config.context_tokens,
        seed_mask=context_id >= 0,
        context_id=context_id,
        attention=attention.reshape(t, g, g),
    )
