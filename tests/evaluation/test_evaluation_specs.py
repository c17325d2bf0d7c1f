"""The evaluation plans the protocol configs declare, their typed results, and the "(P)" presets."""

from __future__ import annotations

import json
import re

import ml_collections
import pytest

from tcclip_jax.config import resolve
from tcclip_jax.data import readers
from tcclip_jax.data.classes import AnnotationError
from tcclip_jax.data.config import default_data_config
from tcclip_jax.evaluation.paper_tables import load_run, markdown, summarize
from tcclip_jax.evaluation.results import Results
from tcclip_jax.evaluation.specs import (
    HARMONIC_MEAN,
    PLAIN,
    SELECT,
    SPLIT_MEAN,
    TEST,
    WISE_FT,
    eval_batch_size,
    eval_plan,
)
from tests.config.test_config import get_config


def _roles(plan) -> list[tuple[str, str]]:
    return [(s.role, s.key) for s in plan.specs]


def test_fewshot_validates_and_tests_its_val_list():
    plan = eval_plan(get_config("fewshot", "ucf101,8"))
    assert _roles(plan) == [(SELECT, "val"), (TEST, "ucf101")]
    assert {s.list_file for s in plan.specs} == {"datasets_splits/ucf_splits/val1.txt"}
    assert plan.summaries == () and plan.weights == (PLAIN,)
    select, test = plan.specs
    # The validation views are the test views here (eval.val_clips / val_crops unset).
    assert select.data_config(get_config("fewshot").data).test_clips == 2


def test_fully_supervised_validates_with_1x1_views_and_tests_with_4x3():
    c = get_config("fully_supervised")
    select, test = eval_plan(c).specs
    assert (select.role, test.role, test.key) == (SELECT, TEST, "k400")
    assert (select.data_config(c.data).test_clips, select.data_config(c.data).test_crops) == (1, 1)
    assert (test.data_config(c.data).test_clips, test.data_config(c.data).test_crops) == (4, 3)


def test_zeroshot_tests_three_datasets_of_three_splits_with_and_without_wise_ft():
    c = get_config("zeroshot")
    c.eval.datasets[2].root = "/data/k600"
    plan = eval_plan(c)
    tests = plan.role(TEST)
    assert [s.key for s in tests] == [
        f"{name}/split{i}" for name in ("hmdb51", "ucf101", "k600") for i in (1, 2, 3)
    ]
    assert [s.key for s in plan.role(SELECT)] == ["val"]  # K-400 val, during training only
    assert [(m.kind, m.name, len(m.members)) for m in plan.summaries] == [
        (SPLIT_MEAN, name, 3) for name in ("hmdb51", "ucf101", "k600")
    ]
    k600 = tests[-1]
    assert k600.class_list == "labels/ZS_split3_K600.csv"  # one class list per split
    assert (k600.list_field, k600.class_field) == ("eval.datasets[2].splits[2]",
                                                   "eval.datasets[2].class_list[2]")  # fmt: skip
    assert k600.data_config(c.data).root == "/data/k600"
    assert (k600.field("root"), k600.field("num_frames")) == (
        "eval.datasets[2].root",
        "data.num_frames",
    )
    assert plan.weights == (PLAIN, WISE_FT) and plan.wise_ft == 0.7


def test_base2novel_tests_base_and_novel_and_their_harmonic_mean():
    plan = eval_plan(get_config("base2novel", "hmdb51,2"))
    assert _roles(plan) == [(SELECT, "val"), (TEST, "base"), (TEST, "novel")]
    novel = plan.specs[-1]
    assert novel.class_list.endswith("hmdb_51_novel_labels.csv")
    assert (novel.list_field, novel.class_field) == ("data.novel_val_list", "data.novel_class_list")
    assert [(m.kind, m.members) for m in plan.summaries] == [(HARMONIC_MEAN, ("base", "novel"))]


def test_extra_test_datasets_are_one_config_entry_for_any_protocol(tmp_path):
    """`eval.datasets` adds tests to any protocol (here the temporal subset of K-400 to a fully
    supervised run), checked like the protocol's own lists."""
    c = get_config("fully_supervised")
    with c.unlocked():
        c.eval.datasets = [
            ml_collections.ConfigDict(
                dict(name="k400_temporal", splits=["t.txt"], class_list="t.csv", test_clips=1)
            )
        ]
    plan = eval_plan(c)
    assert [s.key for s in plan.role(TEST)] == ["k400", "k400_temporal/split1"]
    extra = plan.role(TEST)[1]
    assert extra.data_config(c.data).test_clips == 1 and extra.field("root") == "data.root"
    fields = [u.field for u in resolve.list_uses(c, training=False)]
    assert fields == ["data.val_list", "eval.datasets[0].splits[0]"]
    c.eval.datasets[0].name = "k400"  # the fully supervised test's own name
    with pytest.raises(resolve.ConfigError, match=r"datasets\[0\]\.name: 'k400' names another"):
        resolve.list_uses(c)
    c.eval.datasets[0].name = "k400_temporal"
    c.eval.datasets[0].num_frame = 8  # misspelt
    with pytest.raises(
        resolve.ConfigError, match=r"eval\.datasets\[0\]: unknown field 'num_frame'"
    ):
        resolve.list_uses(c)


def test_a_plan_that_tests_nothing_is_an_error():
    c = get_config("zeroshot")
    c.eval.datasets = []
    with pytest.raises(resolve.ConfigError, match=r"config\.eval\.datasets is empty"):
        resolve.list_uses(c)


def test_an_unknown_protocol_names_the_field():
    c = get_config("fewshot")
    c.protocol = "oneshot"
    with pytest.raises(resolve.ConfigError, match=r"config\.protocol must be one of"):
        resolve.resolve(c, "/tmp")


ZEROSHOT = {
    "protocol": "zeroshot",
    "dataset": "k400",
    "train_list": "train.txt",
    "class_list": "kinetics_400_labels.csv",
    "wise_ft": 0.7,
    "results": {
        "hmdb51": {
            "num_videos": 20,
            "top1": 50.0,
            "top1_std": 1.0,
            "top5": 80.0,
            "top5_std": 0.0,
            "splits": {
                "split1": {"top1": 49.0, "top5": 80.0, "num_videos": 10, "annotation_file": "a"},
                "split2": {"top1": 51.0, "top5": 80.0, "num_videos": 10, "annotation_file": "b"},
            },
        }
    },
}
ZEROSHOT[WISE_FT] = {"results": ZEROSHOT["results"]}
B2N = {
    "protocol": "base2novel",
    "dataset": "hmdb51",
    "results": {
        "base": {"top1": 80.0, "top5": 95.0, "num_videos": 5},
        "novel": {"top1": 40.0, "top5": 70.0, "num_videos": 6},
    },
    HARMONIC_MEAN: 160 / 3,
}


@pytest.mark.parametrize("metrics", [ZEROSHOT, B2N])
def test_results_files_read_back_as_typed_records_and_write_the_same(metrics):
    results = Results.from_json(metrics)
    assert results.to_json() == metrics
    assert json.dumps(results.to_json()) == json.dumps(metrics)  # the same order, too
    if metrics is ZEROSHOT:
        plain = results.weights[PLAIN]
        assert plain.lists["hmdb51/split2"].top1 == 51.0
        assert plain.split_means["hmdb51"].top1_std == 1.0
        flat = results.flat()
        assert flat["hmdb51/top1"] == 50.0 and flat["wise_ft/hmdb51/top1_std"] == 1.0
        assert "hmdb51/splits" not in flat
    else:
        assert results.weights[PLAIN].harmonic_mean == pytest.approx(160 / 3)


def test_k400_presets_are_the_recipe_from_a_k400_model():
    for name, arg in (("fewshot", "hmdb51,16"), ("base2novel", "ucf101,1")):
        plain, p = (
            get_config(name, arg).to_dict(),
            get_config(name, arg + ",k400_pretrained").to_dict(),
        )
        assert p.pop("pretraining") == "k400" and plain.pop("pretraining") == ""
        assert p == plain
    with pytest.raises(ValueError, match="k400_pretrained"):
        get_config("zeroshot", "k400_pretrained")  # not a variant of zero-shot


def test_k400_presets_refuse_a_clip_checkpoint(tmp_path):
    c = get_config("fewshot", "hmdb51,2,k400_pretrained")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "model_config.json").write_text(json.dumps({"model": "clip"}))
    c.init_checkpoint = str(tmp_path / "clip")
    assert re.match(r"config\.init_checkpoint: .* is CLIP, but", resolve._model_problem(c))
    c.pretraining = ""
    assert resolve._model_problem(c) is None  # fine-tuning CLIP itself


def test_report_keeps_k400_pretrained_seeds_apart(tmp_path):
    runs = []
    for i, pretraining in enumerate(("", "", "k400")):
        run = {**B2N, "class_list": "hmdb_51_base_labels.csv"}
        if pretraining:
            run["pretraining"] = pretraining
        (tmp_path / f"r{i}").mkdir()
        (tmp_path / f"r{i}" / "final_metrics.json").write_text(json.dumps(run))
        runs.append(load_run(str(tmp_path / f"r{i}")))
    rows = summarize(runs)["base2novel"]
    assert [len(r["runs"]) for r in rows] == [2, 1]
    assert "| hmdb51 (k400 pre-trained) | hmdb_51_base_labels.csv | 1 |" in markdown(
        summarize(runs)
    )


def test_one_reader_per_format():
    assert set(readers.READERS) == {"video", "frames", "tfds"}
    assert all(issubclass(r, readers.Reader) for r in readers.READERS.values())
    cfg = default_data_config()
    cfg.root = "/nonexistent"
    for fmt in ("video", "frames"):
        cfg.format = fmt
        with pytest.raises(AnnotationError, match="data root '/nonexistent' is not a directory"):
            readers.make_reader(cfg, "val")
    cfg.format = "webdataset"
    with pytest.raises(ValueError, match="data format must be one of"):
        readers.make_reader(cfg, "val")
    assert readers.READERS["tfds"].carries_list and not readers.READERS["tfds"].uses_root


@pytest.mark.parametrize(
    "requested,devices,processes,batch",
    [
        (16, 1, 1, 16),
        (16, 8, 1, 16),  # v5e-8: as configured
        (16, 4, 1, 16),  # v4-8, v5p-8
        (16, 16, 1, 16),
        (16, 32, 1, 32),  # v5e:4x8: one video per chip
        (16, 32, 4, 32),  # ... on its 4 hosts
        (16, 64, 8, 64),
        (33, 8, 1, 40),
        (6, 2, 2, 6),
        (5, 1, 2, 6),  # every process loads as many videos
        (1, 6, 4, 12),  # a multiple of both
    ],
)
def test_the_eval_batch_is_rounded_up_to_the_devices(requested, devices, processes, batch):
    assert eval_batch_size(requested, devices, processes) == batch


def test_an_eval_batch_needs_positive_counts():
    with pytest.raises(ValueError):
        eval_batch_size(0, 8)
