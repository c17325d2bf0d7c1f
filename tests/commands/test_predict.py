"""`python -m tcclip_jax.predict` on synthetic videos with tiny TC-CLIP and ViFi-CLIP checkpoints,
against a direct `Predictor` computation on `load_test_views`; and its answers to bad input."""

import csv
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from tcclip_jax import predict
from tcclip_jax.apps import collection
from tcclip_jax.apps.inference import Predictor, load_predictor, view_config
from tcclip_jax.data import synthetic
from tcclip_jax.data.config import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_data_config,
)
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.models import ModelConfig, VideoCLIP
from tcclip_jax.weights.checkpoint import CheckpointError, save_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_params(config: ModelConfig, seed: int) -> dict:
    """Random weights of the right shapes, without compiling flax's init.

    Matrices are N(0, 1 / fan_in), vectors (biases, LayerNorm gains, class embedding)
    N(0, 0.02^2), and the logit scale CLIP's initial 1 / 0.07. The small LayerNorm gains keep
    every residual branch small, so tokens stay close to their patch embeddings.
    """
    res, t = config.image_resolution, config.num_frames
    clips, tokens = np.zeros((1, t, res, res, 3), np.float32), np.ones((2, 30), np.int32)
    shapes = jax.eval_shape(VideoCLIP(config).init, jax.random.key(0), clips, tokens)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "logit_scale":
            return np.float32(np.log(1 / 0.07))
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        return z * (leaf.shape[-2] ** -0.5 if len(leaf.shape) > 1 else 0.02)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    paths = synthetic.generate(
        root, videos_per_class=1, val_per_class=0, num_frames=8, size=(32, 32)
    )
    return {"videos": paths["videos"][:3], "classes": paths["classes"]}


@pytest.fixture(scope="module")
def checkpoints(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    # tc_clip records ImageNet's normalisation; vifi_clip records none: CLIP's, the fallback.
    for seed, (model, norm) in enumerate((("tc_clip", "imagenet"), ("vifi_clip", None))):
        config = tiny_config.replace(model=model)
        out[model] = str(root / model)
        save_model(out[model], config, random_params(config, seed), normalization=norm)
    return out


def run_predict(*commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs `python -m tcclip_jax.predict` with each argument list, concurrently."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tcclip_jax.predict", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for args in commands
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, *out)
        for p, out in zip(procs, outputs, strict=True)
    ]


@functools.cache
def predictor(checkpoint: str) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


def direct_probabilities(
    checkpoint: str, video: str, classnames, normalization: str, clips=2
) -> np.ndarray:
    """Class probabilities computed here: test views of the checkpoint's 4 frames at 32 px
    (short side 36 = int(256 / 224 * 32), centre crop), softmax per view, mean over views."""
    cfg = default_data_config()
    cfg.normalization = normalization
    cfg.num_frames, cfg.image_size, cfg.resize_size = 4, 32, 36
    cfg.test_clips, cfg.test_crops, cfg.uint8_output = clips, 1, False
    logits = predictor(checkpoint).logits(load_test_views(video, cfg), classnames)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).mean(0)


def parse_table(text: str) -> dict[str, list[tuple[int, float, str]]]:
    tables = {}
    for block in text.strip().split("\n\n"):
        video, header, *rows = block.splitlines()
        assert header.split() == ["rank", "probability", "class"]
        tables[video] = [
            (int(r.split(None, 2)[0]), float(r.split(None, 2)[1]), r.split(None, 2)[2])
            for r in rows
        ]
    return tables


def test_tc_clip_table_and_json_agree_with_direct_computation(dataset, checkpoints, tmp_path):
    videos = dataset["videos"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    inputs = [videos[0], str(broken), *videos[1:]]
    common = ["--checkpoint", checkpoints["tc_clip"], "--labels", dataset["classes"]]

    table, document, as_clip = run_predict(
        [*common, "--video", *inputs],
        [*common, "--video", *inputs, "--json"],
        [*common, "--video", videos[0], "--json", "--normalization", "clip"],
    )

    for result in (table, document):
        # The unreadable video is reported once, by name, without a traceback; the rest is done.
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith("error: ") and str(broken) in result.stderr
        assert "Traceback" not in result.stderr

    tables = parse_table(table.stdout)
    assert list(tables) == videos
    assert json.loads(document.stdout)["normalization"] == "imagenet"  # the checkpoint's record
    results = json.loads(document.stdout)["results"]
    assert [r["video"] for r in results] == inputs
    assert results[1]["top"] is None and str(broken) in results[1]["error"]
    for result in results[:1] + results[2:]:
        assert result["error"] is None
        rows = tables[result["video"]]
        probs = [row["probability"] for row in result["top"]]
        assert len(rows) == 5 and [r["rank"] for r in result["top"]] == [1, 2, 3, 4, 5]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert [(r[0], r[2]) for r in rows] == [(r["rank"], r["class"]) for r in result["top"]]
        np.testing.assert_allclose([r[1] for r in rows], probs, atol=5e-5)

        expected = direct_probabilities(
            checkpoints["tc_clip"], result["video"], synthetic.CLASS_NAMES, "imagenet"
        )
        best = np.argsort(-expected)[:5]
        assert [r["index"] for r in result["top"]] == best.tolist()
        assert [r["class"] for r in result["top"]] == [synthetic.CLASS_NAMES[i] for i in best]
        np.testing.assert_allclose(probs, expected[best], rtol=1e-5, atol=1e-6)

    # --normalization overrides the record.
    assert as_clip.returncode == 0, as_clip.stderr
    assert json.loads(as_clip.stdout)["normalization"] == "clip"


@pytest.mark.parametrize("choice", ["checkpoint", "clip"])
def test_views_reach_the_model_normalised_as_recorded(dataset, checkpoints, choice):
    """predict's input: the test views normalised with the checkpoint's record (ImageNet's for
    this one) or the --normalization choice. (The tiny random model's probabilities barely
    depend on it, so this is checked on the views themselves.)"""
    predictor = load_predictor(checkpoints["tc_clip"], normalization=choice)
    cfg = view_config(predictor.config, 2, 1, predictor.normalization)
    views = load_test_views(dataset["videos"][0], cfg)
    cfg.uint8_output = True
    frames = load_test_views(dataset["videos"][0], cfg)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if choice == "checkpoint" else (CLIP_MEAN, CLIP_STD)
    np.testing.assert_allclose(views, (frames / 255 - np.array(mean)) / np.array(std), atol=1e-5)


def test_vifi_clip_with_plain_text_labels_and_options(dataset, checkpoints, tmp_path):
    labels = tmp_path / "labels.txt"
    names = ["juggling balls", "", "playing guitar", "a shape moving left", "riding a bike"]
    labels.write_text("\n".join(names) + "\n")
    video = dataset["videos"][1]
    (result,) = run_predict(
        ["--checkpoint", checkpoints["vifi_clip"], "--video", video, "--labels", str(labels),
         "--json", "--top-k", "3", "--clips", "3"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"] == "vifi_clip" and document["num_classes"] == 4
    assert document["views"] == {"clips": 3, "crops": 1}
    assert document["normalization"] == "clip"  # no record: the documented fallback
    (top,) = [r["top"] for r in document["results"]]
    classnames = [n for n in names if n]
    expected = direct_probabilities(checkpoints["vifi_clip"], video, classnames, "clip", clips=3)
    best = np.argsort(-expected)[:3]
    assert [r["class"] for r in top] == [classnames[i] for i in best]
    np.testing.assert_allclose([r["probability"] for r in top], expected[best], rtol=1e-5)


def test_class_list_formats(tmp_path):
    csv = tmp_path / "classes.csv"
    csv.write_text("id,name\n1,riding a bike\n0,juggling balls\n")
    llm = tmp_path / "classes.json"
    llm.write_text('{"0": "Juggling balls: tossing", "1": "Riding a bike: pedalling"}')
    text = tmp_path / "classes.txt"
    text.write_text("juggling balls\n\n  riding a bike  \n")
    assert collection.read_class_names(str(csv)) == ["juggling balls", "riding a bike"]
    assert collection.read_class_names(str(llm)) == [
        "Juggling balls: tossing",
        "Riding a bike: pedalling",
    ]
    assert collection.read_class_names(str(text)) == ["juggling balls", "riding a bike"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_bad_arguments_get_one_line_and_status_2(dataset, checkpoints, tmp_path, capsys):
    video = ["--video", dataset["videos"][0]]
    tc = ["--checkpoint", checkpoints["tc_clip"]]

    assert predict.main([*tc, *video, "--classes"]) == 2
    assert "no class names" in error_line(capsys)
    assert predict.main([*tc, *video, "--classes", "a", " "]) == 2
    assert "[2]" in error_line(capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert predict.main([*tc, *video, "--labels", str(empty)]) == 2
    assert f"{empty}: the class list is empty" in error_line(capsys)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,name\n0,a\n0,b\n")
    assert predict.main([*tc, *video, "--labels", str(bad_csv)]) == 2
    assert f"{bad_csv}:3: duplicate class id 0" in error_line(capsys)

    assert predict.main(["--checkpoint", str(tmp_path), *video, "--classes", "a"]) == 2
    assert f"{tmp_path} is not a tcclip_jax checkpoint" in error_line(capsys)
    # A training run directory and its training state point to the exported model.
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints" / "60")
    os.symlink(checkpoints["tc_clip"], run / "model")
    for wrong in (run, run / "checkpoints" / "60"):
        assert predict.main(["--checkpoint", str(wrong), *video, "--classes", "a"]) == 2
        assert str(run / "model") in error_line(capsys)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            {"vision_layers": 3},
            "missing keys for this model config: ['visual/transformer/resblocks_2",
        ),
        (
            {"positional_embedding": "joint"},
            "shape mismatch for visual/positional_embedding: expected [4, 17, 64], got [17, 64]",
        ),
    ],
)
def test_checkpoint_whose_config_does_not_match_its_params(
    checkpoints, dataset, tmp_path, capsys, edit, message
):
    """A hand-edited model_config.json is caught when the checkpoint is loaded, by name."""
    path = tmp_path / "edited"
    shutil.copytree(checkpoints["tc_clip"], path)
    config = json.loads((path / "model_config.json").read_text())
    (path / "model_config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError, match=re.escape(f"{path / 'params'}: {message}")):
        Predictor.from_checkpoint(str(path))
    args = ["--checkpoint", str(path), "--video", dataset["videos"][0], "--classes", "a"]
    assert predict.main(args) == 2
    assert message in error_line(capsys)


# Collections: folders, list files, batches, result files, --resume ---------------------------


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory):
    """24 videos in class folders, a frame folder among them and an unreadable file."""
    root = tmp_path_factory.mktemp("collection")
    paths = synthetic.generate(
        str(root), videos_per_class=3, val_per_class=0, num_frames=8, size=(32, 32), seed=1
    )
    frames, _ = synthetic.render_clip(0, np.random.default_rng(5), 8, (32, 32))
    folder = root / "videos" / "extra" / "as_frames"
    os.makedirs(folder)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{i + 1:05d}.jpg")
    (root / "videos" / "extra" / "broken.mp4").write_bytes(b"not a video")
    (root / "videos" / "extra" / "notes.md").write_text("not a video, not listed")
    videos = sorted(paths["videos"]) + [str(folder)]
    return {"root": str(root), "videos": videos, "classes": paths["classes"],
            "broken": str(root / "videos" / "extra" / "broken.mp4")}  # fmt: skip


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_to_csv_and_resume_after_a_kill(collection_dir, checkpoints, tmp_path):
    """A folder: every video (and the frame folder) once, decoded by a worker process in batches
    of 4; the unreadable one listed with its reason; rows as predict computes them directly.
    A run killed mid-write (rows kept, the last line cut) resumes without repeating a row."""
    out = tmp_path / "results.csv"
    command = ["--checkpoint", checkpoints["tc_clip"], "--labels", collection_dir["classes"],
               "--video", os.path.join(collection_dir["root"], "videos"), "--output", str(out),
               "--batch-size", "4", "--workers", "1", "--top-k", "3"]  # fmt: skip
    (first,) = run_predict(command)
    assert first.returncode == 1, first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and collection_dir["broken"] in errors[0] and "cannot open" in errors[0]
    rows = read_rows(out)
    expected = sorted([*collection_dir["videos"], collection_dir["broken"]])
    assert sorted(r["video"] for r in rows) == expected
    by_video = {r["video"]: r for r in rows}
    assert by_video[collection_dir["broken"]]["error"].startswith(collection_dir["broken"])
    for video in (collection_dir["videos"][0], collection_dir["videos"][-1]):
        row = by_video[video]
        assert row["error"] == "" and row["views"] == "2"
        probs = direct_probabilities(
            checkpoints["tc_clip"], video, synthetic.CLASS_NAMES, "imagenet"
        )
        best = np.argsort(-probs)[:3]
        assert [row[f"class_{r}"] for r in (1, 2, 3)] == [synthetic.CLASS_NAMES[i] for i in best]
        np.testing.assert_allclose(
            [float(row[f"probability_{r}"]) for r in (1, 2, 3)], probs[best], rtol=1e-5
        )
    assert float(by_video[collection_dir["videos"][0]]["duration_s"]) == pytest.approx(8 / 25)
    assert by_video[collection_dir["videos"][-1]]["duration_s"] == ""  # a frame folder

    # What a kill leaves: the header, some rows, half a line.
    lines = out.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if "broken" not in line][:10]
    out.write_text(lines[0] + "".join(kept) + lines[12][: len(lines[12]) // 2])
    (again,) = run_predict(command)
    assert again.returncode == 2 and "exists; pass --resume" in again.stderr
    (resumed,) = run_predict([*command, "--resume"])
    assert resumed.returncode == 1, resumed.stderr  # the broken video is tried again
    assert "10 videos already done" in resumed.stderr
    resumed_rows = read_rows(out)
    assert sorted(r["video"] for r in resumed_rows) == expected  # each once
    assert resumed_rows[:10] == read_rows_from(lines[0] + "".join(kept))
    for row in resumed_rows:
        np.testing.assert_allclose(
            float(row["probability_1"] or 0), float(by_video[row["video"]]["probability_1"] or 0),
            rtol=1e-5,
        )  # fmt: skip


def read_rows_from(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_list_file_to_jsonl(collection_dir, checkpoints, tmp_path):
    videos = collection_dir["videos"]
    listing = tmp_path / "list.txt"
    rel = os.path.relpath(videos[1], tmp_path)
    listing.write_text(f"{videos[0]} 3\n\n{rel}\n{videos[-1]}\n")
    out = tmp_path / "out" / "r.jsonl"
    (result,) = run_predict(
        ["--checkpoint", checkpoints["tc_clip"], "--labels", collection_dir["classes"],
         "--video", str(listing), videos[0], "--output", str(out), "--batch-size", "2"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [os.path.normpath(r["video"]) for r in records] == [videos[0], videos[1], videos[-1]]
    for record in records:
        assert record["error"] is None and record["views"] == 2 and len(record["top"]) == 5
        probs = [t["probability"] for t in record["top"]]
        assert probs == sorted(probs, reverse=True)


def test_collection_mistakes(collection_dir, checkpoints, tmp_path, capsys):
    base = ["--checkpoint", checkpoints["tc_clip"], "--classes", "a", "b"]
    empty = tmp_path / "empty_folder"
    os.makedirs(empty / "sub")
    assert predict.main([*base, "--video", str(empty)]) == 2
    assert f"{empty}: no video files" in error_line(capsys)
    assert predict.main([*base, "--video", collection_dir["videos"][0], "--resume"]) == 2
    assert "--resume needs --output" in error_line(capsys)
    bad = tmp_path / "r.txt"
    assert predict.main([*base, "--video", collection_dir["videos"][0], "--output", str(bad)]) == 2
    assert "must end in .csv or .jsonl" in error_line(capsys)
    other = tmp_path / "other.csv"
    other.write_text("video,score\n")
    args = [*base, "--video", collection_dir["videos"][0], "--output", str(other), "--resume"]
    assert predict.main(args) == 2
    assert "its columns are not those of this run" in error_line(capsys)


@pytest.mark.slow
def test_200_videos_killed_halfway_and_resumed(checkpoints, tmp_path):
    root = tmp_path / "many"
    synthetic.generate(str(root), videos_per_class=25, val_per_class=0, num_frames=8, size=(32, 32))
    out = tmp_path / "r.csv"
    command = [sys.executable, "-m", "tcclip_jax.predict", "--checkpoint", checkpoints["tc_clip"],
               "--labels", str(root / "classes.csv"), "--video", str(root / "videos"),
               "--output", str(out), "--batch-size", "2", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and (not out.exists() or out.read_text().count("\n") < 101):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    killed_at = len(read_rows(out))
    assert 0 < killed_at < 200, "the run finished before it could be killed"
    (resumed,) = run_predict([*command[3:], "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    rows = read_rows(out)
    assert len(rows) == 200 and len({r["video"] for r in rows}) == 200
