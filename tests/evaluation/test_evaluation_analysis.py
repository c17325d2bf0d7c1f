"""The files an evaluation writes to look into (`evaluation.analysis`): read back against scores
whose answers are known, the Evaluator's per-video scores against a per-view loop, and
`report --worst`."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tcclip_jax import report
from tcclip_jax.data import synthetic
from tcclip_jax.data.classes import load_class_names
from tcclip_jax.data.config import default_data_config
from tcclip_jax.evaluation.accuracy import Evaluator
from tcclip_jax.evaluation.analysis import per_class, worst_classes, write_analysis
from tcclip_jax.models import VideoCLIP
from tcclip_jax.runtime.sharding import create_mesh
from tests.evaluation.test_evaluation_protocols import fused, init_params, view_logits

NAMES = ["run", "jump", "swim", "climb", "row", "ski", "dive"]


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def known_scores():
    """10 videos of 7 classes: labels, and scores whose top-1 is `predicted`."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    predicted = np.array([0, 0, 1, 1, 0, 2, 2, 3, 3, 3])
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.1, (10, 7))
    scores[np.arange(10), predicted] = 0.5
    scores[np.arange(10), labels] += np.where(labels != predicted, 0.2, 0)  # second best
    return labels, predicted, scores / scores.sum(1, keepdims=True)


def test_files_hold_the_predictions_accuracies_and_confusions(tmp_path):
    labels, predicted, scores = known_scores()
    videos = [f"v{i}.mp4" for i in range(10)]
    paths = write_analysis(str(tmp_path), videos, labels, scores, NAMES)

    records = read_jsonl(paths["predictions.jsonl"])
    assert [r["video"] for r in records] == videos
    assert [r["top5"][0]["index"] for r in records] == predicted.tolist()
    assert [r["correct"] for r in records] == (labels == predicted).tolist()
    assert all(len(r["top5"]) == 5 for r in records)
    assert records[2]["top5"][1]["class"] == "run"  # its label, second
    np.testing.assert_allclose(records[0]["top5"][0]["score"], scores[0].max(), rtol=1e-6)
    np.testing.assert_allclose(np.load(paths["scores.npy"]), scores, rtol=1e-6)

    with open(paths["confusion_matrix.csv"], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == NAMES
    matrix = np.array([[int(x) for x in r[1:]] for r in rows[1:]])
    expected = np.zeros((7, 7), int)
    np.add.at(expected, (labels, predicted), 1)
    np.testing.assert_array_equal(matrix, expected)

    with open(paths["per_class_accuracy.csv"], newline="") as f:
        classes = list(csv.DictReader(f))
    top1 = [float(c["top1"]) for c in classes[:4]]
    assert top1 == [pytest.approx(200 / 3, abs=0.01), 50.0, 50.0, 100.0]
    assert [c["most_confused_with"] for c in classes[:4]] == ["jump", "run", "climb", ""]
    assert [float(c["top5"]) for c in classes[:4]] == [100.0] * 4
    assert classes[4]["videos"] == "0"
    with Image.open(paths["confusion_matrix.png"]) as image:
        assert min(image.size) > 200

    worst = worst_classes(str(tmp_path), 2)
    assert [w["class"] for w in worst] == ["jump", "swim"]  # 50 %; classes without videos left out


def test_no_picture_for_many_classes(tmp_path):
    labels = np.arange(120) % 101
    scores = np.eye(101)[labels]
    paths = write_analysis(str(tmp_path), [str(i) for i in range(120)], labels, scores,
                           [f"c{i}" for i in range(101)])  # fmt: skip
    assert "confusion_matrix.png" not in paths and not (tmp_path / "confusion_matrix.png").exists()
    assert all(r["top1"] == 100.0 for r in per_class(labels, scores))


def test_evaluator_scores_are_the_per_view_softmax_mean(tiny_config, tmp_path):
    root = str(tmp_path / "data")
    synthetic.generate(root, videos_per_class=1, val_per_class=1, num_frames=8, size=(32, 32))
    cfg = default_data_config()
    cfg.root, cfg.val_list, cfg.class_list = root, f"{root}/val.txt", f"{root}/classes.csv"
    cfg.num_frames, cfg.image_size, cfg.resize_size = 4, 32, 32
    cfg.test_clips, cfg.test_crops = 2, 1
    params = init_params(tiny_config, 1)
    names = load_class_names(cfg.class_list)
    evaluator = Evaluator(VideoCLIP(tiny_config), create_mesh(), cfg, annotation_file=None,
                          class_names=names, batch_size=3)  # fmt: skip
    result = evaluator(params)
    expected = fused(view_logits(tiny_config, params, cfg)) / 2
    np.testing.assert_allclose(evaluator.scores, expected, rtol=1e-4, atol=1e-6)
    paths = write_analysis(str(tmp_path / "a"), evaluator.videos, evaluator.labels,
                           evaluator.scores, names)  # fmt: skip
    records = read_jsonl(paths["predictions.jsonl"])
    assert 100.0 * np.mean([r["correct"] for r in records]) == result["top1"]


def test_report_worst(tmp_path, capsys):
    labels, _, scores = known_scores()
    write_analysis(str(tmp_path / "analysis" / "val"), [str(i) for i in range(10)], labels,
                   scores, NAMES)  # fmt: skip
    assert report.main([str(tmp_path), "--worst", "1"]) == 0
    out = capsys.readouterr().out
    assert "jump  (run)" in out and "swim" not in out
    assert report.main([str(tmp_path / "analysis"), "--worst", "1"]) == 2
    assert "no analysis/" in capsys.readouterr().err
