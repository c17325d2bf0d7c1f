"""Evaluator and protocols on a tiny TC-CLIP and synthetic videos, against a plain per-view loop.

The reference runs the full forward pass (`model.apply(params, clip, tokens)`: class embeddings
recomputed every time) one view at a time, fuses views with a NumPy softmax, and ranks in NumPy.
"""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from xla_env import xla_flags

from tcclip_jax.data import synthetic
from tcclip_jax.data.classes import AnnotationError, load_class_names, read_annotations
from tcclip_jax.data.config import default_data_config, normalization_stats
from tcclip_jax.data.normalize import normalize_on_device
from tcclip_jax.data.pipeline import create_eval_dataset
from tcclip_jax.evaluation.accuracy import Evaluator
from tcclip_jax.evaluation.protocols import evaluate_protocol
from tcclip_jax.evaluation.wise_ft import wise_ft
from tcclip_jax.models import ModelConfig, VideoCLIP
from tcclip_jax.models.tokenizer import tokenize_prompts
from tcclip_jax.runtime.errors import RunError
from tcclip_jax.runtime.sharding import create_mesh
from tcclip_jax.weights.checkpoint import save_model


def init_params(config: ModelConfig, seed: int) -> dict:
    """Random weights of the right shapes (flax's own init would compile for half a minute)."""
    clips, tokens = np.zeros((1, 4, 32, 32, 3), np.float32), np.ones((2, 30), np.int32)
    shapes = jax.eval_shape(VideoCLIP(config).init, jax.random.key(0), clips, tokens)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "logit_scale":
            return np.float32(np.log(1 / 0.07))
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "scale":  # LayerNorm
            return 1 + 0.1 * z
        return z * (leaf.shape[-2] ** -0.5 if len(leaf.shape) > 1 else 0.02)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(root, videos_per_class=1, val_per_class=2, num_frames=8, size=(32, 32))
    cfg = default_data_config()
    cfg.root = root
    cfg.val_list = os.path.join(root, "val.txt")
    cfg.class_list = os.path.join(root, "classes.csv")
    cfg.num_frames, cfg.image_size, cfg.resize_size = 4, 32, 32
    cfg.test_clips, cfg.test_crops = 2, 1
    return cfg


@pytest.fixture(scope="module")
def model_config(tiny_config):
    return tiny_config


@pytest.fixture(scope="module")
def params(model_config):
    return init_params(model_config, 0)


@functools.cache
def full_forward(model_config):
    model = VideoCLIP(model_config)
    return jax.jit(lambda p, clip, tokens: model.apply({"params": p}, clip, tokens)[0][0])


def view_logits(model_config, params, cfg) -> np.ndarray:
    """[N, V, C] logits of every view of every video of `cfg.val_list`, one view at a time."""
    forward = functools.partial(
        full_forward(model_config), tokens=tokenize_prompts(load_class_names(cfg.class_list))
    )
    out = []
    for batch in create_eval_dataset(cfg, batch_size=1):
        views = normalize_on_device(batch["video"][0], *normalization_stats(cfg.normalization))
        out.append([np.asarray(forward(params, view[None]), np.float64) for view in views])
    return np.array(out)


def fused(logits: np.ndarray, class_ids=None) -> np.ndarray:
    if class_ids is not None:
        logits = logits[..., class_ids]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).sum(1)


def accuracy(scores: np.ndarray, labels) -> tuple[float, float]:
    rank = np.array([list(np.argsort(-s)).index(y) for s, y in zip(scores, labels, strict=True)])
    n = len(rank)
    return 100.0 * np.sum(rank == 0) / n, 100.0 * np.sum(rank < 5) / n


@pytest.fixture(scope="module")
def reference(model_config, params, data):
    return view_logits(model_config, params, data)


def write_list(path, entries):
    with open(path, "w") as f:
        f.writelines(f"{p} {y}\n" for p, y in entries)
    return str(path)


def test_evaluator_matches_per_view_loop(data, model_config, params, reference, tmp_path):
    scores = fused(reference)
    order = np.argsort(-scores, axis=-1)
    # Top-1 and top-5 membership are clear-cut (float32 noise is far smaller), so the
    # comparison below can be exact.
    ranked = np.sort(scores, -1)[:, ::-1]
    assert (ranked[:, 0] - ranked[:, 1]).min() > 1e-5
    assert (ranked[:, 4] - ranked[:, 5]).min() > 1e-5
    # Relabel the videos so that video i's label is its (i mod 7)-th best class: every
    # disagreement in the ranking between the two paths changes top-1 or top-5.
    videos = [p for p, _ in read_annotations(data.val_list)]
    labels = [int(order[i, i % 7]) for i in range(len(videos))]
    listing = write_list(tmp_path / "relabelled.txt", zip(videos, labels, strict=True))
    evaluator = Evaluator(
        VideoCLIP(model_config),
        create_mesh(),
        data,
        annotation_file=listing,
        class_names=load_class_names(data.class_list),
        batch_size=6,  # 16 videos: the last batch has 2 padding rows
    )
    calls = []
    encode_text = evaluator._encode_text
    evaluator._encode_text = lambda *a: calls.append(1) or encode_text(*a)
    result = evaluator(params)
    top1, top5 = accuracy(scores, labels)
    assert (top1, top5) == (100.0 * 3 / 16, 100.0 * 12 / 16)  # ranks 0 and 0..4 of i mod 7
    assert result == {"top1": top1, "top5": top5, "num_videos": 16}
    assert len(calls) == 1  # the class embeddings: once for 3 batches


def test_a_video_the_loader_never_delivers_is_an_error(data, model_config, params, tmp_path):
    """The denominator is the list as constructed; a shorter delivery must not pass silently."""
    annotations = read_annotations(data.val_list)
    listing = write_list(tmp_path / "list.txt", annotations)
    evaluator = Evaluator(
        VideoCLIP(model_config),
        create_mesh(),
        data,
        annotation_file=listing,
        class_names=load_class_names(data.class_list),
        batch_size=6,
    )
    write_list(listing, annotations[:-1])  # the list loses its last line after construction
    with pytest.raises(RuntimeError, match=r"1 never scored \(\['.*list.txt:16'\]\)"):
        evaluator(params)


def test_unreadable_videos_count_as_misses_up_to_the_limit(
    data, model_config, params, reference, tmp_path
):
    """Policy: an unreadable video stays in the denominator as a miss, is named, and past
    data.max_bad_videos the evaluation stops in one line naming the first."""
    annotations = read_annotations(data.val_list)
    labels = [y for _, y in annotations]
    scores = fused(reference)
    hits = [int(np.argmax(s) == y) for s, y in zip(scores, labels, strict=True)]
    broken = [i for i in range(len(hits)) if hits[i]][:1] + [i for i in range(2, 4) if not hits[i]]
    entries = list(annotations)
    for i in broken:  # truncated copies, in place of the videos
        path = tmp_path / f"cut{i}.mp4"
        path.write_bytes(b"\0" * 64)
        entries[i] = (str(path), labels[i])
    listing = write_list(tmp_path / "list.txt", entries)
    cfg = data.copy_and_resolve_references()
    cfg.max_bad_videos = len(broken)
    evaluator = Evaluator(
        VideoCLIP(model_config), create_mesh(), cfg, annotation_file=listing,
        class_names=load_class_names(data.class_list), batch_size=6,
    )  # fmt: skip
    result = evaluator(params)
    expected = 100.0 * (sum(hits) - sum(hits[i] for i in broken)) / len(hits)
    assert result["num_videos"] == 16 and result["top1"] == pytest.approx(expected)
    assert evaluator.unreadable == [str(tmp_path / f"cut{i}.mp4") for i in sorted(broken)]
    assert evaluator.unreadable_mask.sum() == len(broken)

    cfg.max_bad_videos = len(broken) - 1
    evaluator.data_cfg = cfg
    first = min(broken)
    with pytest.raises(
        RunError,
        match=rf"^{len(broken)} unreadable videos in .*list.txt, more than "
        rf"data.max_bad_videos={len(broken) - 1} \(each counts as a miss\); the first: "
        rf".*cut{first}.mp4: .*\(listed at .*list.txt:{first + 1}\)$",
    ):
        evaluator(params)


def test_label_outside_the_evaluated_classes_names_the_line(data, model_config):
    with pytest.raises(AnnotationError, match=r"val.txt:\d+: label \d+ is outside the class list"):
        Evaluator(
            VideoCLIP(model_config),
            create_mesh(),
            data,
            annotation_file=data.val_list,
            class_names=load_class_names(data.class_list)[:3],
            batch_size=6,
        )


def eval_config(data, **fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.protocol = "fewshot"
    config.dtype = "float32"
    config.wise_ft = None
    config.clip_checkpoint = ""
    config.data = data
    config.eval = ml_collections.ConfigDict({"batch_size": 6, "datasets": []})
    config.update(fields)
    return config


def test_zeroshot_mean_and_std_over_splits_without_and_with_wise_ft(
    data, model_config, params, reference, tmp_path
):
    clip = init_params(model_config.replace(model="clip"), 1)
    mixed = wise_ft(clip, params, 0.7)
    plain_scores, scores = fused(reference), fused(view_logits(model_config, mixed, data))
    annotations = read_annotations(data.val_list)
    splits = [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 0, 3]]
    files = [
        write_list(tmp_path / f"split{k}.txt", [annotations[i] for i in rows])
        for k, rows in enumerate(splits)
    ]
    dataset = ml_collections.ConfigDict(
        {"name": "synthetic", "root": data.root, "class_list": data.class_list, "splits": files}
    )
    config = eval_config(data, protocol="zeroshot", wise_ft=0.7)
    config.eval.datasets = [dataset]
    metrics = evaluate_protocol(
        config, params, create_mesh(), model_config=model_config, clip_params=clip
    )
    assert metrics["wise_ft"] == 0.7 and metrics["protocol"] == "zeroshot"
    # The paper reports both: the fine-tuned weights as they are, and their WiSE-FT ensemble.
    outcomes = {}
    for key, result, s in (
        ("plain", metrics["results"]["synthetic"], plain_scores),
        ("wise_ft", metrics["with_wise_ft"]["results"]["synthetic"], scores),
    ):
        expected = np.array([accuracy(s[r], [annotations[i][1] for i in r]) for r in splits])
        assert len(set(expected[:, 0])) > 1  # the splits disagree, so the std is informative
        for k, rows in enumerate(splits):
            split = result["splits"][f"split{k + 1}"]
            assert (split["top1"], split["top5"], split["num_videos"]) == (*expected[k], len(rows))
        assert result["top1"] == pytest.approx(expected[:, 0].mean())
        assert result["top1_std"] == pytest.approx(expected[:, 0].std())
        assert result["top5"] == pytest.approx(expected[:, 1].mean())
        assert result["top5_std"] == pytest.approx(expected[:, 1].std())
        outcomes[key] = expected
    assert not np.array_equal(outcomes["plain"], outcomes["wise_ft"])


def test_base2novel_scores_each_half_over_its_own_class_list(
    data, model_config, params, reference, tmp_path
):
    """As published: each half's list numbers its classes 0..n-1 against its own class list, and
    each half's softmax covers its classes only."""
    base_ids, novel_ids = [1, 3, 4, 6], [0, 2, 5, 7]
    annotations = read_annotations(data.val_list)
    names = load_class_names(data.class_list)
    lists, classes, expected = {}, {}, {}
    for half, ids in (("base", base_ids), ("novel", novel_ids)):
        rows = [i for i, (_, y) in enumerate(annotations) if y in ids]
        labels = [ids.index(annotations[i][1]) for i in rows]
        lists[half] = write_list(
            tmp_path / f"{half}.txt",
            [(annotations[i][0], y) for i, y in zip(rows, labels, strict=True)],
        )
        classes[half] = str(tmp_path / f"{half}.csv")
        with open(classes[half], "w") as f:
            f.write("id,name\n" + "".join(f"{n},{names[c]}\n" for n, c in enumerate(ids)))
        expected[half] = accuracy(fused(reference[rows], ids), labels)
    cfg = data.copy_and_resolve_references()
    cfg.val_list, cfg.class_list = lists["base"], classes["base"]
    cfg.novel_val_list, cfg.novel_class_list = lists["novel"], classes["novel"]
    metrics = evaluate_protocol(
        eval_config(cfg, protocol="base2novel"), params, create_mesh(), model_config=model_config
    )
    for half in ("base", "novel"):
        result = metrics["results"][half]
        assert (result["top1"], result["top5"], result["num_videos"]) == (*expected[half], 8)
    # Scored over all 8 classes instead, the base half would come out differently.
    rows = [i for i, (_, y) in enumerate(annotations) if y in base_ids]
    assert accuracy(fused(reference[rows]), [annotations[i][1] for i in rows]) != expected["base"]
    assert metrics["harmonic_mean"] == pytest.approx(
        2
        * expected["base"][0]
        * expected["novel"][0]
        / (expected["base"][0] + expected["novel"][0])
    )


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def evaluate_command(data, checkpoint, workdir) -> list[str]:
    return [
        sys.executable, "-m", "tcclip_jax.evaluate",
        "--config", os.path.join(REPO, "configs", "fewshot.py") + ":hmdb51,2",
        "--checkpoint", str(checkpoint), "--workdir", str(workdir),
        f"--config.data.root={data.root}", f"--config.data.val_list={data.val_list}",
        f"--config.data.class_list={data.class_list}", "--config.data.num_frames=4",
        "--config.data.image_size=32", "--config.data.resize_size=32",
        "--config.eval.batch_size=6", "--config.dtype=float32", "--config.dataset_name=synthetic",
        "--config.data.normalization=clip",  # the checkpoint's record (imagenet) overrides it
    ]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(model_config, params, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "model"
    save_model(str(path), model_config, params, info={"step": 7}, normalization="imagenet")
    return path


def expected_accuracy(data, reference) -> tuple[float, float]:
    return accuracy(fused(reference), [y for _, y in read_annotations(data.val_list)])


def test_cli_evaluates_a_saved_checkpoint(data, checkpoint, reference, tmp_path):
    """`python -m tcclip_jax.evaluate` on 2 devices: the table, eval_metrics.json, metrics.jsonl."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    run = subprocess.run(
        evaluate_command(data, checkpoint, tmp_path),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    top1, top5 = expected_accuracy(data, reference)
    assert "protocol: fewshot" in run.stdout
    row = next(line for line in run.stdout.splitlines() if line.startswith("synthetic"))
    assert row.split() == ["synthetic", "16", f"{top1:.2f}", f"{top5:.2f}"]
    with open(tmp_path / "eval_metrics.json") as f:
        saved = json.load(f)
    assert saved["results"]["synthetic"]["top1"] == top1
    assert saved["results"]["synthetic"]["top5"] == top5
    assert saved["checkpoint"] == str(checkpoint) and saved["step"] == 7
    assert saved["normalization"] == "imagenet"  # as the reference computed
    with open(tmp_path / "metrics.jsonl") as f:
        logged = json.loads(f.readlines()[-1])
    assert logged["step"] == 7 and logged["synthetic/top1"] == top1
    with open(tmp_path / "analysis" / "synthetic" / "predictions.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 16 and 100 * np.mean([r["correct"] for r in records]) == top1
    assert (tmp_path / "analysis" / "synthetic" / "confusion_matrix.png").is_file()


def test_cli_on_more_devices_than_the_eval_batch(data, checkpoint, reference, tmp_path):
    """32 simulated devices (a v5e:4x8 slice's count) and `config.eval.batch_size=6`: the
    evaluator rounds the batch up to 32 videos, one per device, says so, and scores as on 2."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(32)}
    run = subprocess.run(
        evaluate_command(data, checkpoint, tmp_path),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "config.eval.batch_size 6 rounded up to 32 videos per evaluation step" in run.stderr
    top1, top5 = expected_accuracy(data, reference)
    row = next(line for line in run.stdout.splitlines() if line.startswith("synthetic"))
    assert row.split() == ["synthetic", "16", f"{top1:.2f}", f"{top5:.2f}"]


@pytest.mark.slow
def test_two_processes_share_the_videos_and_agree(data, checkpoint, reference, tmp_path):
    """Two JAX processes on this host, one device each: every video is scored exactly once."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    runs = []
    for rank in range(2):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(rank),
        }
        command = evaluate_command(data, checkpoint, tmp_path)
        runs.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    try:
        outputs = [run.communicate(timeout=400) for run in runs]
    finally:  # one process failing leaves the other waiting for it
        for run in runs:
            run.kill()
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
    with open(tmp_path / "eval_metrics.json") as f:
        saved = json.load(f)["results"]["synthetic"]
    top1, top5 = expected_accuracy(data, reference)
    assert (saved["top1"], saved["top5"], saved["num_videos"]) == (top1, top5, 16)
    assert "protocol" not in outputs[1][0]  # only process 0 reports


@pytest.mark.slow
def test_cli_zeroshot_protocol_on_a_converted_checkpoint(
    data, model_config, checkpoint, reference, tmp_path, capsys
):
    """`evaluate --config configs/zeroshot.py` on the published layout (HMDB-51, UCF-101 and
    K-600 lists, three splits each; synthetic videos): every split without and with WiSE-FT,
    then `report` gives mean ± std over the splits for both."""
    from tcclip_jax import report

    annotations = read_annotations(data.val_list)
    splits_dir = tmp_path / "TC-CLIP"
    (splits_dir / "labels").mkdir(parents=True)
    with open(data.class_list) as f:
        classes = f.read()
    layout = {
        "hmdb": ("hmdb_splits/val{}.txt", "hmdb_51_labels.csv"),
        "ucf": ("ucf_splits/val{}.txt", "ucf_101_labels.csv"),
        "k600": ("k600_splits/ZS_split{}_K600_eval.txt", "ZS_split{}_K600.csv"),
    }
    rows = {1: list(range(0, 16, 2)), 2: list(range(1, 16, 2)), 3: list(range(0, 16))}
    for lists, labels in layout.values():
        for i, chosen in rows.items():
            path = splits_dir / "datasets_splits" / lists.format(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_list(path, [annotations[j] for j in chosen])
            (splits_dir / "labels" / labels.format(i)).write_text(classes)
    clip_dir = tmp_path / "clip"
    save_model(str(clip_dir), model_config.replace(model="clip"), init_params(
        model_config.replace(model="clip"), 1))  # fmt: skip
    command = [
        sys.executable, "-m", "tcclip_jax.evaluate",
        "--config", os.path.join(REPO, "configs", "zeroshot.py"),
        "--checkpoint", str(checkpoint), "--workdir", str(tmp_path / "zs"),
        f"--config.splits_dir={splits_dir}", f"--config.clip_checkpoint={clip_dir}",
        *(f"--config.eval.datasets[{k}].root={data.root}" for k in range(3)),
        "--config.data.num_frames=4", "--config.data.image_size=32",
        "--config.data.resize_size=32", "--config.eval.batch_size=6", "--config.dtype=float32",
    ]  # fmt: skip
    (tmp_path / "zs").mkdir()
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "zs" / "eval_metrics.json") as f:
        saved = json.load(f)
    scores = fused(reference)
    for name in ("hmdb51", "ucf101", "k600"):
        for i, chosen in rows.items():
            got = saved["results"][name]["splits"][f"split{i}"]
            expected = accuracy(scores[chosen], [annotations[j][1] for j in chosen])
            assert (got["top1"], got["top5"]) == expected
        assert set(saved["with_wise_ft"]["results"][name]["splits"]) == {
            "split1",
            "split2",
            "split3",
        }
    assert report.main([str(tmp_path / "zs")]) == 0
    table = capsys.readouterr().out
    top1 = [saved["results"]["hmdb51"]["splits"][f"split{i}"]["top1"] for i in rows]
    wise = [saved["with_wise_ft"]["results"]["hmdb51"]["splits"][f"split{i}"]["top1"] for i in rows]
    assert f"| hmdb51 | {np.mean(top1):.1f} ± {np.std(top1):.1f} | {np.mean(wise):.1f} ± " in table
