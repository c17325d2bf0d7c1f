"""Seeds, context tokens and attention maps of `tcclip_jax.visualize`, checked against the model's
outputs, the synthetic dataset's ground-truth object boxes, and the pixels of the written images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tcclip_jax import visualize
from tcclip_jax.apps.inference import Predictor, view_config
from tcclip_jax.data import synthetic
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.models import ModelConfig
from tcclip_jax.visualization import explain, render
from tcclip_jax.weights.checkpoint import save_model
from tests.commands.test_predict import REPO, random_params

T, RES, PATCH = 8, 64, 8
GRID = RES // PATCH


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """The shared tiny TC-CLIP: 4 frames of 4x4 patches, 4 of 16 patches are seeds."""
    return Predictor(tiny_config, random_params(tiny_config, 0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One 8-frame 64x64 video per class, with the object's box in every frame."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(root, videos_per_class=1, val_per_class=0, num_frames=T, size=(RES, RES))
    with open(os.path.join(root, "annotations.json")) as f:
        videos = json.load(f)["videos"]
    return [(os.path.join(root, rel), np.array(v["boxes"])) for rel, v in videos.items()]


def test_explanation_is_the_models_own_seeds_and_assignment(tiny):
    cfg = tiny.config
    clip = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    out = tiny.encode_video(clip[None], return_attention=True)
    assert cfg.summary_layers == (1, 2)
    for block, layer, j in ((-1, 2, 1), (1, 1, 0), (-2, 1, 0)):
        exp = explain.explain(tiny, clip, block)
        assert exp.layer == layer
        assert exp.seed_mask.shape == exp.context_id.shape == exp.attention.shape == (4, 4, 4)
        # Seeds: the n_s patches of highest CLS attention of that block, per frame.
        attention = np.asarray(out["cls_attention"][0, layer - 1])
        np.testing.assert_array_equal(exp.attention.reshape(4, 16), attention)
        for t in range(4):
            top = set(np.argsort(-attention[t])[: cfg.seeds_per_frame].tolist())
            assert set(np.flatnonzero(exp.seed_mask[t])) == top
        # Row-major patch p sits at (p // 4, p % 4) and carries its seed's context token.
        seeds, assignment = np.asarray(out["seed_index"][0, j]), np.asarray(out["assignment"][0, j])
        for t in range(4):
            for p, c in zip(seeds[t], assignment[t], strict=True):
                assert exp.context_id[t, p // 4, p % 4] == c
        assert (exp.context_id[~exp.seed_mask] == -1).all()
        assert exp.token_sizes().sum() == 4 * cfg.seeds_per_frame
        assert set(np.unique(exp.context_id[exp.seed_mask])) == set(range(cfg.context_tokens))


def test_blocks_that_do_not_summarise_are_refused(tiny_config):
    with pytest.raises(ValueError, match=r"block 3 does not summarise.*\[1, 2\]"):
        explain.summary_block(tiny_config, 3)
    with pytest.raises(ValueError, match=r"'vifi_clip' model has no seed or context tokens"):
        explain.summary_block(tiny_config.replace(model="vifi_clip"), -1)


def object_patches(frames: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth on the patch grid: (object, background) masks [T, g, g].

    Object: the patch centre is inside the frame's box and the patch's mean colour is far (> 60
    in RGB) from every patch outside the box; the synthetic shapes are >= 100 from the
    background gradient, so these are mostly-object patches. Background: the centre is more
    than a patch away from the box.
    """
    colours = frames.reshape(T, GRID, PATCH, GRID, PATCH, 3).mean(axis=(2, 4))
    centre = (np.arange(GRID) + 0.5) * PATCH
    obj, background = np.zeros((2, T, GRID, GRID), bool)
    for t, (x0, y0, x1, y1) in enumerate(boxes):

        def inside(margin, x0=x0, y0=y0, x1=x1, y1=y1):
            ys = (centre > y0 - margin) & (centre < y1 + margin)
            xs = (centre > x0 - margin) & (centre < x1 + margin)
            return ys[:, None] & xs[None, :]

        outside = colours[t][~inside(0)]
        distance = np.linalg.norm(colours[t][:, :, None] - outside[None, None], axis=-1).min(-1)
        obj[t] = inside(0) & (distance > 60)
        background[t] = ~inside(PATCH)
    return obj, background


def tracking_statistics(videos) -> dict:
    """How the context tokens of (context_id [T, g, g], object, background) cover the object."""
    same = {"object": [0, 0], "background": [0, 0]}  # [pairs sharing a token, pairs]
    purity, frames_followed = [0, 0], []
    for context_id, obj, background in videos:
        frame = np.broadcast_to(np.arange(T)[:, None, None], context_id.shape)
        for name, other in (("object", obj), ("background", background)):
            across = frame[obj][:, None] != frame[other][None, :]  # pairs in different frames
            shared = context_id[obj][:, None] == context_id[other][None, :]
            same[name][0] += (shared & across).sum()
            same[name][1] += across.sum()
        ids, counts = np.unique(context_id[obj], return_counts=True)
        token = context_id == ids[counts.argmax()]  # the token holding most object patches
        purity[0] += (token & obj).sum()
        purity[1] += (token & (obj | background)).sum()
        frames_followed.append(int((token & obj).any(axis=(1, 2)).sum()))
    return {
        "object_object": same["object"][0] / same["object"][1],
        "object_background": same["background"][0] / same["background"][1],
        "purity": purity[0] / purity[1],
        "frames_followed": frames_followed,
    }


def test_a_context_token_follows_the_moving_object(dataset):
    """On the synthetic videos, the token that holds the object's patches holds (almost) nothing
    else, and holds them in frame after frame as the object moves.

    Why this holds for random weights: every patch is a seed (alpha = 1), and small LayerNorm
    gains keep the blocks' residual branches small, so a token stays close to its patch
    embedding, a linear function of its pixels. The object is one uniform colour far from the
    background, so its patches are near-identical tokens in every frame and cosine-similarity
    merging gathers them, apart from the background. The ground truth comes from the dataset's
    boxes and pixels, never from the model.
    """
    config = ModelConfig(
        vision_layers=2, text_layers=2, num_frames=T, vision_width=64, vision_heads=2,
        text_width=32, text_heads=2, embed_dim=32, image_resolution=RES,
        vision_patch_size=PATCH, context_tokens=16, seed_ratio=1.0,
    )  # fmt: skip
    predictor = Predictor(config, random_params(config, 0))
    cfg = view_config(config, clips=1, crops=1)
    cfg.resize_size, cfg.uint8_output = RES, True  # frames pixel-aligned with the boxes.
    videos = []
    for path, boxes in dataset:
        frames = load_test_views(path, cfg)[0]
        exp = explain.explain(predictor, predictor.normalize(frames))
        assert exp.seed_mask.all()
        obj, background = object_patches(frames, boxes)
        if obj.sum() >= 2:  # the smallest shapes cover no patch mostly
            videos.append((exp.context_id, obj, background))
    assert len(videos) >= 6

    stats = tracking_statistics(videos)
    assert stats["purity"] > 0.9, stats
    assert stats["object_object"] > 0.1, stats
    assert stats["object_object"] > 10 * stats["object_background"], stats
    assert sum(n >= T // 2 for n in stats["frames_followed"]) >= len(videos) - 2, stats
    # The check is not vacuous: with rows and columns of the patch grid swapped, it fails.
    swapped = tracking_statistics([(c.transpose(0, 2, 1), o, b) for c, o, b in videos])
    assert swapped["purity"] < 0.5, swapped


@pytest.fixture(scope="module")
def figures(tiny, dataset, tmp_path_factory):
    """The CLI's output for a tiny TC-CLIP checkpoint on a synthetic video."""
    root = tmp_path_factory.mktemp("visualize")
    checkpoint, output = str(root / "model"), str(root / "figures")
    save_model(checkpoint, tiny.config, tiny.params)
    result = subprocess.run(
        [sys.executable, "-m", "tcclip_jax.visualize", "--checkpoint", checkpoint,
         "--video", dataset[0][0], "--output", output],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with np.load(os.path.join(output, "explanation.npz")) as arrays:
        data = dict(arrays)
    return output, result.stdout.split(), data


def cells(path: str, num_cells: int, layout: render.Layout) -> list[np.ndarray]:
    img = np.asarray(Image.open(path).convert("RGB"))
    boxes = [layout.cell_origin(t) for t in range(num_cells)]
    return [img[y : y + layout.cell, x : x + layout.cell] for x, y in boxes]


def patch_centres(cell: np.ndarray, grid: int) -> np.ndarray:
    """[grid, grid, 3]: the pixel at the centre of every patch of a cell."""
    step = cell.shape[0] // grid
    centre = np.arange(grid) * step + step // 2
    return cell[centre][:, centre]


def test_cli_writes_images_that_show_the_explanation(figures):
    output, printed, data = figures
    names = ["seeds.png", "context_tokens.png", "attention.png", "explanation.gif"]
    assert printed == [os.path.join(output, n) for n in [*names, "explanation.npz"]]
    frames, seed_mask, context_id = data["frames"], data["seed_mask"], data["context_id"]
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert seed_mask.shape == context_id.shape == data["attention"].shape == (4, 4, 4)
    assert int(data["layer"]) == 2

    # 32-pixel frames are drawn 4x larger, 4 in a row: 4 * (128 + 8) + 8 < 640 = minimum width.
    layout = render.Layout(4, 32)
    assert (layout.cell, layout.grid_columns, layout.width) == (128, 4, 640)
    for name in names[:3]:
        width, height = Image.open(os.path.join(output, name)).size
        assert width == 640 and height > 28 + 18 + 128, name
    gif = Image.open(os.path.join(output, "explanation.gif"))
    assert gif.n_frames == 4 and gif.size[0] == 640 and gif.info["loop"] == 0

    big = frames.repeat(4, axis=1).repeat(4, axis=2)
    # Seeds: seed patches are the frame's own pixels, the others faded towards white.
    for t, cell in enumerate(cells(os.path.join(output, "seeds.png"), 4, layout)):
        for i, j in np.ndindex(4, 4):
            shown = cell[32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)].astype(int)
            frame = big[t, 32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)].astype(int)
            if seed_mask[t, i, j]:
                np.testing.assert_array_equal(shown, frame)
            else:
                faded = (1 - render.FADE) * frame + 255 * render.FADE
                np.testing.assert_allclose(shown, faded, atol=0.51)

    # Context tokens: every seed patch is filled with its token's average colour over the whole
    # clip (red for the token spread over the most frames); non-seed patches stay faded.
    exp = explain.Explanation(2, 4, seed_mask, context_id, data["attention"])
    colours, red = exp.token_colours(frames), exp.spread_token()
    assert exp.token_frames()[red] == exp.token_frames().max()
    for t, cell in enumerate(cells(os.path.join(output, "context_tokens.png"), 4, layout)):
        centres = patch_centres(cell, 4)
        for i, j in np.ndindex(4, 4):
            c = context_id[t, i, j]
            if c == red:
                assert tuple(centres[i, j]) == render.HIGHLIGHT
            elif c >= 0:
                np.testing.assert_array_equal(centres[i, j], colours[c])
    # ... that average is over all the token's source patches, in every frame.
    c = context_id[seed_mask][0]
    pixels = [big[t, 32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)] for t, i, j in
              zip(*np.nonzero(context_id == c), strict=True)]  # fmt: skip
    np.testing.assert_allclose(colours[c], np.mean(pixels, axis=(0, 1, 2)), atol=0.5)

    # Attention: one colour scale for the clip; the most attended patch of the clip is drawn
    # in the top colour of jet (dark red) blended over the frame.
    t, i, j = np.unravel_index(np.argmax(data["attention"]), (4, 4, 4))
    cell = cells(os.path.join(output, "attention.png"), 4, layout)[t]
    centre = patch_centres(cell, 4)[i, j].astype(float)
    top = np.array([127.5, 0, 0])  # jet(1.0)
    expected = render.HEAT_ALPHA * top + (1 - render.HEAT_ALPHA) * big[t, 32 * i + 16, 32 * j + 16]
    np.testing.assert_allclose(centre, expected, atol=25)


def test_cli_refuses_checkpoints_without_context_tokens(tiny, tmp_path, capsys):
    checkpoint = str(tmp_path / "vifi")
    config = tiny.config.replace(model="vifi_clip")
    save_model(checkpoint, config, random_params(config, 1))
    args = ["--checkpoint", checkpoint, "--video", "unused.mp4", "--output", str(tmp_path)]
    assert visualize.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a TC-CLIP checkpoint" in err
