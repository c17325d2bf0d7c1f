"""What a TC-CLIP model looks at: seed tokens, context tokens, CLS attention (paper Figs. 6, 7, 9).

  python -m tcclip_jax.visualize --checkpoint checkpoints/tcclip_k400 --video a.mp4 --output viz/

writes, for the centre clip and centre crop of the video (the model's own input frames):

  seeds.png           the seed patches of every frame; the other patches are faded.
  context_tokens.png  every seed patch filled with the average colour of all the patches merged
                      into its context token, bordered with a colour of its own (same fill and
                      border: same token); the token spread over the most frames is red (Fig. 6).
  attention.png       the head-averaged CLS attention over the patches of each frame, as a heat map.
  explanation.gif     the four views side by side, one GIF frame per video frame.
  explanation.npz     the arrays behind the pictures (`Explanation` fields and the frames).

All of it comes from one summarising vision block (`--block`, default the last, as the paper
shows): its seeds are the top-n_s patches of the CLS attention drawn in attention.png. The
Python API is `explain(predictor, clip) -> Explanation` plus the `render_*` functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont

from tcclip_jax import allocator
from tcclip_jax.checkpoints import CheckpointError
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.data.transforms import normalize
from tcclip_jax.inference import Predictor
from tcclip_jax.models.config import ModelConfig
from tcclip_jax.predict import DTYPES, data_config, load_predictor

HIGHLIGHT = (230, 30, 30)  # fill of the highlighted context token, as the paper's red.
HIGHLIGHT_BORDER = (140, 0, 0)
FADE = 0.7  # non-seed patches: this much white over the frame.
HEAT_ALPHA = 0.55  # attention heat map over the frame.
LEGEND_TOKENS = 12  # context tokens listed under context_tokens.png.


# The arrays ---------------------------------------------------------------------------------


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
    cfg = predictor.config
    layer = summary_block(cfg, block)
    out = predictor.encode_video(np.asarray(clip)[None], return_attention=True)
    j = cfg.summary_layers.index(layer)
    seed_index = np.asarray(out["seed_index"][0, j])  # [T, n_s], row-major patch indices.
    assignment = np.asarray(out["assignment"][0, j])
    attention = np.asarray(out["cls_attention"][0, layer - 1], np.float32)  # [T, P]
    t, g = seed_index.shape[0], cfg.grid_size
    context_id = np.full((t, cfg.num_patches), -1, np.int32)
    np.put_along_axis(context_id, seed_index, assignment.astype(np.int32), axis=1)
    context_id = context_id.reshape(t, g, g)
    return Explanation(
        layer=layer,
        num_context=cfg.context_tokens,
        seed_mask=context_id >= 0,
        context_id=context_id,
        attention=attention.reshape(t, g, g),
    )


# Pictures ----------------------------------------------------------------------------------

MARGIN = 8
TITLE_HEIGHT = 28
LABEL_HEIGHT = 18
MIN_CELL = 128  # frames are enlarged by a whole factor to at least this size.
MAX_COLUMNS = 8
MIN_WIDTH = 640


@dataclasses.dataclass(frozen=True)
class Layout:
    """Frames in a grid of at most MAX_COLUMNS columns under a title, a footer below."""

    num_frames: int
    resolution: int
    columns: int = MAX_COLUMNS

    @property
    def scale(self) -> int:
        return max(1, math.ceil(MIN_CELL / self.resolution))

    @property
    def cell(self) -> int:
        return self.resolution * self.scale

    @property
    def grid_columns(self) -> int:
        return min(self.num_frames, self.columns)

    @property
    def rows(self) -> int:
        return math.ceil(self.num_frames / self.grid_columns)

    @property
    def width(self) -> int:
        return max(MIN_WIDTH, self.grid_columns * (self.cell + MARGIN) + MARGIN)

    @property
    def grid_bottom(self) -> int:
        return TITLE_HEIGHT + self.rows * (LABEL_HEIGHT + self.cell + MARGIN)

    def cell_origin(self, index: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of cell `index`."""
        row, col = divmod(index, self.grid_columns)
        return (
            MARGIN + col * (self.cell + MARGIN),
            TITLE_HEIGHT + row * (LABEL_HEIGHT + self.cell + MARGIN) + LABEL_HEIGHT,
        )


def _font(size: int = 13) -> ImageFont.FreeTypeFont:
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return ImageFont.truetype(path, size)


def _enlarge(frames: np.ndarray, scale: int) -> np.ndarray:
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def _patch_boxes(shape: tuple[int, int], cell: int):
    """(row, col, x0, y0, x1, y1) of every patch of a `shape` grid drawn in a cell."""
    gh, gw = shape
    for i in range(gh):
        for j in range(gw):
            yield i, j, j * cell // gw, i * cell // gh, (j + 1) * cell // gw, (i + 1) * cell // gh


def _faded(frame: np.ndarray) -> np.ndarray:
    return np.round(frame * (1 - FADE) + 255 * FADE).astype(np.uint8)


def seed_cell(frame: np.ndarray, seed_mask: np.ndarray) -> np.ndarray:
    """An enlarged frame [S, S, 3] with its non-seed patches faded to white."""
    out = _faded(frame)
    for i, j, x0, y0, x1, y1 in _patch_boxes(seed_mask.shape, frame.shape[0]):
        if seed_mask[i, j]:
            out[y0:y1, x0:x1] = frame[y0:y1, x0:x1]
    return out


def _border_colours(k: int) -> np.ndarray:
    """[k, 3] uint8: a categorical colour per context token; no red, which marks `highlight`."""
    palette = [c for i, c in enumerate(colormaps["tab20"].colors) if i not in (6, 7)]
    return np.round(255 * np.array([palette[i % len(palette)] for i in range(k)])).astype(np.uint8)


def context_cell(
    frame: np.ndarray, context_id: np.ndarray, colours: np.ndarray, highlight: int | None
) -> np.ndarray:
    """Seed patches filled with their token's colour and bordered with its own colour."""
    img = Image.fromarray(_faded(frame))
    draw = ImageDraw.Draw(img)
    borders = _border_colours(len(colours))
    for i, j, x0, y0, x1, y1 in _patch_boxes(context_id.shape, frame.shape[0]):
        c = context_id[i, j]
        if c < 0:
            continue
        width = max(1, (x1 - x0) // 8)
        fill, edge = tuple(colours[c].tolist()), tuple(borders[c].tolist())
        if c == highlight:
            fill, edge = HIGHLIGHT, HIGHLIGHT_BORDER
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill, outline=edge, width=width)
    return np.asarray(img)


def attention_cell(
    frame: np.ndarray, attention: np.ndarray, vmin: float, vmax: float
) -> np.ndarray:
    """The frame under a jet heat map of `attention` [gh, gw], [vmin, vmax] -> [blue, red]."""
    size = frame.shape[0]
    heat = Image.fromarray(((attention - vmin) / max(vmax - vmin, 1e-12)).astype(np.float32))
    heat = np.clip(np.asarray(heat.resize((size, size), Image.Resampling.BILINEAR)), 0, 1)
    rgb = colormaps["jet"](heat)[..., :3] * 255
    return np.round(HEAT_ALPHA * rgb + (1 - HEAT_ALPHA) * frame).astype(np.uint8)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    chars = max(20, int(width / font.getlength("n")))
    return textwrap.wrap(text, chars)


def _figure(
    layout: Layout, cells: Sequence[np.ndarray], title: str, footer_height: int
) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    height = layout.grid_bottom + footer_height + MARGIN
    img = Image.new("RGB", (layout.width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((MARGIN, 6), title, fill="black", font=_font(15))
    for t, cell in enumerate(cells):
        x, y = layout.cell_origin(t)
        img.paste(Image.fromarray(cell), (x, y))
        draw.text((x, y - LABEL_HEIGHT + 2), f"t = {t}", fill="black", font=_font(12))
    return img, draw


def _text_footer(lines: Sequence[str], layout: Layout) -> tuple[list[str], int]:
    font = _font()
    wrapped = [w for line in lines for w in _wrap(line, font, layout.width - 2 * MARGIN)]
    return wrapped, 18 * len(wrapped)


def _draw_lines(draw: ImageDraw.ImageDraw, lines: Sequence[str], y: int) -> int:
    for line in lines:
        draw.text((MARGIN, y), line, fill="black", font=_font())
        y += 18
    return y


def render_seeds(frames: np.ndarray, exp: Explanation) -> Image.Image:
    """Figure (a): the seed patches of every frame. frames: uint8 [T, R, R, 3]."""
    layout = Layout(len(frames), frames.shape[1])
    big = _enlarge(frames, layout.scale)
    t, gh, gw = exp.seed_mask.shape
    n_s = int(exp.seed_mask[0].sum())
    lines, footer = _text_footer(
        [
            f"In every frame the {n_s} of {gh * gw} patches with the highest CLS attention of "
            f"block {exp.layer} are seed tokens (shown); the other patches are faded."
        ],
        layout,
    )
    img, draw = _figure(
        layout,
        [seed_cell(big[i], exp.seed_mask[i]) for i in range(t)],
        f"Seed tokens, vision block {exp.layer}",
        footer,
    )
    _draw_lines(draw, lines, layout.grid_bottom)
    return img


def render_context(
    frames: np.ndarray, exp: Explanation, highlight: int | None = None
) -> Image.Image:
    """Figure (b): seed patches coloured by the context token they merged into, with a legend.

    `highlight` (default: `exp.spread_token()`) is drawn red.
    """
    highlight = exp.spread_token() if highlight is None else highlight
    layout = Layout(len(frames), frames.shape[1])
    big = _enlarge(frames, layout.scale)
    colours, borders = exp.token_colours(frames), _border_colours(exp.num_context)
    sizes, spans, num_frames = exp.token_sizes(), exp.token_frames(), len(frames)
    order = [highlight] + [
        int(c) for c in np.lexsort((-sizes, -spans)) if c != highlight and sizes[c] > 0
    ]
    listed = order[:LEGEND_TOKENS]
    lines, text_height = _text_footer(
        [
            f"{exp.num_context} context tokens summarise the {int(sizes.sum())} seed tokens of "
            f"block {exp.layer}. Each seed patch is filled with the average colour of all the "
            "patches merged into its token and bordered with the token's own colour. Red: token "
            f"#{highlight}, the one spread over the most frames "
            f"({spans[highlight]} of {num_frames}). Listed: the {len(listed)} most widespread.",
        ],
        layout,
    )
    font = _font(12)
    labels = {
        c: f"#{c}: {sizes[c]} patch{'es' if sizes[c] != 1 else ''}, {spans[c]}/{num_frames} frames"
        for c in listed
    }
    entry_w = 24 + max(int(font.getlength(label)) for label in labels.values()) + 16
    entry_h = 24
    per_row = max(1, (layout.width - MARGIN) // entry_w)
    legend_height = math.ceil(len(listed) / per_row) * entry_h
    img, draw = _figure(
        layout,
        [context_cell(big[i], exp.context_id[i], colours, highlight) for i in range(len(frames))],
        f"Context tokens, vision block {exp.layer}",
        text_height + legend_height,
    )
    y0 = _draw_lines(draw, lines, layout.grid_bottom)
    for n, c in enumerate(listed):
        row, col = divmod(n, per_row)
        x, y = MARGIN + col * entry_w, y0 + row * entry_h + 2
        fill, edge = tuple(colours[c].tolist()), tuple(borders[c].tolist())
        if c == highlight:
            fill, edge = HIGHLIGHT, HIGHLIGHT_BORDER
        draw.rectangle((x, y, x + 17, y + 17), fill=fill, outline=edge, width=3)
        draw.text((x + 24, y + 2), labels[c], fill="black", font=font)
    return img


def render_attention(frames: np.ndarray, exp: Explanation) -> Image.Image:
    """Figure (c): CLS attention per frame, one colour scale for the whole clip."""
    layout = Layout(len(frames), frames.shape[1])
    big = _enlarge(frames, layout.scale)
    vmin, vmax = float(exp.attention.min()), float(exp.attention.max())
    lines, text_height = _text_footer(
        [
            f"[CLS] attention on the patches of its own frame, mean over the heads of block "
            f"{exp.layer}; one colour scale for all frames, from the clip's lowest to its "
            "highest value."
        ],
        layout,
    )
    bar_height = 16
    img, draw = _figure(
        layout,
        [attention_cell(big[i], exp.attention[i], vmin, vmax) for i in range(len(frames))],
        f"CLS attention, vision block {exp.layer}",
        text_height + bar_height + 4,
    )
    y = _draw_lines(draw, lines, layout.grid_bottom) + 2
    bar = colormaps["jet"](np.linspace(0, 1, 256))[None, :, :3] * 255
    bar = np.round(np.repeat(bar, bar_height, axis=0)).astype(np.uint8)
    img.paste(Image.fromarray(bar), (MARGIN + 60, y))
    font = _font(12)
    draw.text((MARGIN, y), f"{vmin:.4g}", fill="black", font=font)
    draw.text((MARGIN + 60 + 256 + 6, y), f"{vmax:.4g}", fill="black", font=font)
    return img


GIF_PANELS = ("input", "seeds", "context tokens", "CLS attention")


def render_gif_frames(
    frames: np.ndarray, exp: Explanation, highlight: int | None = None
) -> list[Image.Image]:
    """One image per video frame: input, seeds, context tokens and attention side by side."""
    highlight = exp.spread_token() if highlight is None else highlight
    layout = Layout(len(GIF_PANELS), frames.shape[1], columns=len(GIF_PANELS))
    big = _enlarge(frames, layout.scale)
    colours = exp.token_colours(frames)
    vmin, vmax = float(exp.attention.min()), float(exp.attention.max())
    out = []
    for t in range(len(frames)):
        panels = [
            big[t],
            seed_cell(big[t], exp.seed_mask[t]),
            context_cell(big[t], exp.context_id[t], colours, highlight),
            attention_cell(big[t], exp.attention[t], vmin, vmax),
        ]
        img, draw = _figure(
            layout, [], f"frame {t + 1} of {len(frames)}, vision block {exp.layer}", 0
        )
        for n, (name, panel) in enumerate(zip(GIF_PANELS, panels, strict=True)):
            x, y = layout.cell_origin(n)
            img.paste(Image.fromarray(panel), (x, y))
            draw.text((x, y - LABEL_HEIGHT + 2), name, fill="black", font=_font(12))
        out.append(img)
    return out


def write_figures(
    output_dir: str, frames: np.ndarray, exp: Explanation, highlight: int | None = None
) -> dict[str, str]:
    """Writes the PNGs, the GIF and the arrays into `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        name: os.path.join(output_dir, name)
        for name in (
            "seeds.png",
            "context_tokens.png",
            "attention.png",
            "explanation.gif",
            "explanation.npz",
        )
    }
    render_seeds(frames, exp).save(paths["seeds.png"])
    render_context(frames, exp, highlight).save(paths["context_tokens.png"])
    render_attention(frames, exp).save(paths["attention.png"])
    gif = render_gif_frames(frames, exp, highlight)
    gif[0].save(
        paths["explanation.gif"], save_all=True, append_images=gif[1:], duration=500, loop=0
    )
    np.savez_compressed(paths["explanation.npz"], frames=frames, **dataclasses.asdict(exp))
    return paths


# Command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcclip_jax.visualize",
        description="Seed tokens, context tokens and CLS attention of a TC-CLIP checkpoint.",
    )
    parser.add_argument("--checkpoint", required=True, help="TC-CLIP checkpoint directory.")
    parser.add_argument("--video", required=True, help="Video file (or frame folder).")
    parser.add_argument("--output", required=True, help="Directory for the images.")
    parser.add_argument(
        "--block",
        type=int,
        default=-1,
        help="Summarising vision block (1-based), or negative from the last (default -1).",
    )
    parser.add_argument(
        "--highlight", type=int, help="Context token drawn red (default: the most widespread)."
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        predictor = load_predictor(args.checkpoint, args.dtype)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        layer = summary_block(predictor.config, args.block)
        k = predictor.config.context_tokens
        if args.highlight is not None and not 0 <= args.highlight < k:
            raise ValueError(
                f"--highlight must be a context token id in [0, {k}), got {args.highlight}"
            )
    except ValueError as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    cfg = data_config(predictor.config, clips=1, crops=1)
    cfg.uint8_output = True
    try:
        frames = load_test_views(args.video, cfg)[0]  # the centre clip and crop.
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    exp = explain(predictor, normalize(frames, cfg.mean, cfg.std), layer)
    for path in write_figures(args.output, frames, exp, args.highlight).values():
        print(path)
    return 0


if __name__ == "__main__":
    allocator.configure()
    sys.exit(main())
