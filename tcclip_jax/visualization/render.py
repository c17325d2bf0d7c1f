"""Pictures of an `Explanation` (paper Figs. 6, 7, 9): seeds, context tokens, CLS attention.

`write_figures(output_dir, frames, explanation)` writes:

  seeds.png           the seed patches of every frame; the other patches are faded.
  context_tokens.png  every seed patch filled with the average colour of all the patches merged
                      into its context token, bordered with a colour of its own (same fill and
                      border: same token); the token spread over the most frames is red (Fig. 6).
  attention.png       the head-averaged CLS attention over the patches of each frame, as a heat map.
  explanation.gif     the four views side by side, one GIF frame per video frame.
  explanation.npz     the arrays behind the pictures (`Explanation` fields and the frames).
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont

from tcclip_jax.visualization.explain import Explanation

HIGHLIGHT = (230, 30, 30)  # fill of the highlighted context token, as the paper's red.
HIGHLIGHT_BORDER = (140, 0, 0)
FADE = 0.7  # non-seed patches: this much white over the frame.
HEAT_ALPHA = 0.55  # attention heat map over the frame.
LEGEND_TOKENS = 12  # context tokens listed under context_tokens.png.


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
