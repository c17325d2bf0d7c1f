"""The evaluations a run makes, read from its config once (big_vision's `config.evals`).

A protocol config declares what it evaluates through its fields: `data.val_list` against
`data.class_list` (validated on during training to `select` the checkpoint kept, and, except in
zero-shot, `test`ed at the end with the full views), base-to-novel's `data.novel_val_list`
against `data.novel_class_list`, and any number of `eval.datasets` (name, splits, class list or
one per split, and data fields of their own such as `root` or `format`), each a `test`. Over
them it reports what the paper reports: the harmonic mean of base and novel, the mean ± std over
a dataset's splits, and both again for the WiSE-FT ensemble when `wise_ft` is set.

`eval_plan(config)` turns a config into those typed specs; the list checks, the dry run, the
training loop's validation, `evaluate` and `report` all walk the same plan, and no other module
knows the protocol names: adding a test dataset to a config is one `eval.datasets` entry, and a
variant of a protocol (e.g. starting from another checkpoint) is one config file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

SELECT, TEST = "select", "test"
SPLIT_MEAN, HARMONIC_MEAN = "split_mean", "harmonic_mean"
# The weights evaluated: as trained, and (with `wise_ft` set) ensembled with CLIP's.
PLAIN, WISE_FT = "plain", "with_wise_ft"
# Fields of an `eval.datasets` entry that are not data config fields.
DATASET_FIELDS = ("name", "splits", "class_list")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What a protocol name implies beyond its config fields."""

    title: str  # its table in the report
    tests_val_list: bool = True  # zero-shot validates on K-400 val but tests other datasets
    base_and_novel: bool = False  # needs the novel list; tests "base" and "novel"


# In the paper's order (Tables 2-5); `demo` is evaluated as a single validation list.
PROTOCOLS = {
    "zeroshot": Protocol("Zero-shot", tests_val_list=False),
    "fewshot": Protocol("Few-shot"),
    "base2novel": Protocol("Base-to-novel", base_and_novel=True),
    "fully_supervised": Protocol("Fully supervised"),
    "demo": Protocol("Demo"),
}


def check_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"config.protocol must be one of {tuple(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """One evaluation: a list against a class list, with the data fields it changes.

    `name` (and `split`, for a dataset's splits) key its results; `source` is the config
    node that declares it (`data`, `eval.datasets[i]`) and the `*_field`s the config fields that
    set the list, class list and video folder, for messages.
    """

    name: str
    split: str
    role: str  # SELECT | TEST
    list_file: str
    class_list: str
    source: str
    list_field: str
    class_field: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def field(self, key: str) -> str:
        """The config field that sets data field `key` for this evaluation."""
        return f"{self.source}.{key}" if key in dict(self.overrides) else f"data.{key}"

    @property
    def key(self) -> str:
        return f"{self.name}/{self.split}" if self.split else self.name

    def data_config(self, data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """`data` with this evaluation's list, class list and own fields in place: the one
        place a data config is copied for an evaluation."""
        out = ml_collections.ConfigDict(data.to_dict())
        out.update(dict(self.overrides))
        out.val_list, out.class_list = self.list_file, self.class_list
        return out


@dataclasses.dataclass(frozen=True)
class Summary:
    """A number the paper reports over several evaluations (keys of `EvalSpec.key`)."""

    kind: str  # SPLIT_MEAN | HARMONIC_MEAN
    name: str
    members: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """Every evaluation of a run and its summaries."""

    protocol: str
    specs: tuple[EvalSpec, ...]
    summaries: tuple[Summary, ...]
    wise_ft: float | None

    def role(self, role: str) -> list[EvalSpec]:
        return [s for s in self.specs if s.role == role]

    @property
    def weights(self) -> tuple[str, ...]:
        return (PLAIN,) if self.wise_ft is None else (PLAIN, WISE_FT)


def _list_name(config: ml_collections.ConfigDict) -> str:
    data = config.data
    return config.get("dataset_name") or os.path.splitext(os.path.basename(data.val_list))[0]


def _dataset_specs(config: ml_collections.ConfigDict) -> tuple[list[EvalSpec], list[Summary]]:
    specs, summaries = [], []
    for i, ds in enumerate(config.eval.get("datasets", [])):
        field = f"eval.datasets[{i}]"
        unknown = [k for k in ds if k not in DATASET_FIELDS and k not in config.data]
        if unknown:
            raise ValueError(
                f"config.{field}: unknown field {unknown[0]!r} (allowed: "
                f"{', '.join(DATASET_FIELDS)} and the data config fields)"
            )
        one = isinstance(ds.class_list, str)
        if not one and len(ds.class_list) != len(ds.splits):
            raise ValueError(
                f"config.{field}.class_list: {len(ds.class_list)} class lists for "
                f"{len(ds.splits)} splits (give one, or one per split)"
            )
        overrides = tuple((k, v) for k, v in ds.items() if k not in DATASET_FIELDS)
        members = []
        for j, split in enumerate(ds.splits):
            spec = EvalSpec(
                name=ds.name,
                split=f"split{j + 1}",
                role=TEST,
                list_file=split,
                class_list=ds.class_list if one else ds.class_list[j],
                source=field,
                list_field=f"{field}.splits[{j}]",
                class_field=f"{field}.class_list" + ("" if one else f"[{j}]"),
                overrides=overrides,
            )
            specs.append(spec)
            members.append(spec.key)
        summaries.append(Summary(SPLIT_MEAN, ds.name, tuple(members)))
    return specs, summaries


def eval_plan(config: ml_collections.ConfigDict) -> EvalPlan:
    """The evaluations `config` declares (see the module docstring), in the order they run.

    Raises ValueError naming the config field for a declaration that cannot be evaluated.
    """
    protocol = check_protocol(config.protocol)
    data, specs, summaries = config.data, [], []

    def val_list(name: str, role: str, views: Mapping[str, int | None] | None = None) -> EvalSpec:
        overrides = tuple((k, v) for k, v in (views or {}).items() if v is not None)
        return EvalSpec(name, "", role, data.val_list, data.class_list, "data", "data.val_list",
                        "data.class_list", overrides)  # fmt: skip

    if config.eval.get("every_epochs", 0) > 0:
        views = {"test_clips": config.eval.get("val_clips"),
                 "test_crops": config.eval.get("val_crops")}  # fmt: skip
        specs.append(val_list("val", SELECT, views))
    if protocol.base_and_novel:  # unset novel fields fail the list checks, naming them
        novel = EvalSpec("novel", "", TEST, data.novel_val_list, data.novel_class_list, "data",
                         "data.novel_val_list", "data.novel_class_list")  # fmt: skip
        specs += [val_list("base", TEST), novel]
        summaries.append(Summary(HARMONIC_MEAN, HARMONIC_MEAN, ("base", "novel")))
    elif protocol.tests_val_list:
        specs.append(val_list(_list_name(config), TEST))
    extra, extra_summaries = _dataset_specs(config)
    names = [s.key for s in specs if s.role == TEST] + [m.name for m in extra_summaries]
    for i, summary in enumerate(extra_summaries):
        if names.count(summary.name) > 1:
            raise ValueError(
                f"config.eval.datasets[{i}].name: {summary.name!r} names another evaluation too"
            )
    if not extra and not any(s.role == TEST for s in specs):
        raise ValueError(f"config.eval.datasets is empty: {config.protocol} tests only those")
    return EvalPlan(
        protocol=config.protocol,
        specs=(*specs, *extra),
        summaries=(*summaries, *extra_summaries),
        wise_ft=config.get("wise_ft"),
    )


def validation_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data config of the training's validation (the `select` evaluation), e.g. K-400 val
    with the published 1x1 views in place of the test views."""
    selected = eval_plan(config).role(SELECT)
    if not selected:
        raise ValueError("config.eval.every_epochs is 0: the run has no validation")
    return selected[0].data_config(config.data)


def eval_batch_size(requested: int, devices: int, processes: int = 1) -> int:
    """Videos per evaluation step on `devices` devices of `processes` processes:
    `config.eval.batch_size` rounded up to a multiple of both, so every device scores whole
    videos and every process loads as many (16 on 8 devices stays 16; on a 32-chip slice it is
    32, one video per chip). Scores do not depend on it: padding entries are left out."""
    if requested < 1 or devices < 1 or processes < 1:
        raise ValueError(f"eval batch {requested}, devices {devices}, processes {processes}")
    multiple = math.lcm(devices, processes)
    return -(-requested // multiple) * multiple
