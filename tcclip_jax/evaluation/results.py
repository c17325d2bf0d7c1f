"""A run's evaluation results as typed records, keyed by weights, evaluation and summary.

`Results` holds, for each set of weights (`specs.PLAIN`, and `specs.WISE_FT` for the WiSE-FT
ensemble), the accuracy of every evaluated list (keyed by `EvalSpec.key`, e.g. `hmdb51/split2`
or `novel`) and the value of every summary of the plan (keyed by its name). `to_json` writes the
layout of `final_metrics.json` / `eval_metrics.json` (what `report` and other tools read), and
`from_json` reads it back, so the files stay as they have always been.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from tcclip_jax.evaluation.specs import HARMONIC_MEAN, PLAIN, SPLIT_MEAN, WISE_FT, EvalPlan


def harmonic_mean(base: float, novel: float) -> float:
    """The base-to-novel summary 2 * base * novel / (base + novel); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def summarize_splits(splits: Sequence[dict]) -> dict:
    """Mean and (population) standard deviation of top-1 / top-5 over a dataset's splits."""
    out = {"num_videos": int(sum(s["num_videos"] for s in splits))}
    for key in ("top1", "top5"):
        values = np.array([s[key] for s in splits], np.float64)
        out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Top-1 / top-5 (%) of one list; `unreadable`: the listed videos that could not be read,
    counted as misses (None when every video was read)."""

    top1: float
    top5: float
    num_videos: int | None = None
    annotation_file: str | None = None
    unreadable: list[str] | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class SplitMean:
    """Mean and population std over a dataset's splits."""

    num_videos: int
    top1: float
    top1_std: float
    top5: float
    top5_std: float


@dataclasses.dataclass
class WeightsResults:
    """The results of one set of weights."""

    lists: dict[str, Accuracy]
    split_means: dict[str, SplitMean] = dataclasses.field(default_factory=dict)
    harmonic_mean: float | None = None


def summarize(plan: EvalPlan, lists: dict[str, Accuracy]) -> WeightsResults:
    """The plan's summaries over the test lists' accuracies."""
    out = WeightsResults(lists)
    for summary in plan.summaries:
        members = [lists[key] for key in summary.members]
        if summary.kind == SPLIT_MEAN:
            values = summarize_splits([dataclasses.asdict(m) for m in members])
            out.split_means[summary.name] = SplitMean(**values)
        elif summary.kind == HARMONIC_MEAN:
            out.harmonic_mean = harmonic_mean(*(m.top1 for m in members))
    return out


def split_key(key: str) -> tuple[str, str]:
    name, _, split = key.partition("/")
    return name, split


@dataclasses.dataclass
class Results:
    """A run's results: `header` (protocol, dataset, lists, WiSE-FT weight: what `report` groups
    runs by) and one `WeightsResults` per set of weights."""

    header: dict[str, Any]
    weights: dict[str, WeightsResults]

    @property
    def protocol(self) -> str:
        return self.header["protocol"]

    def to_json(self) -> dict:
        out = {**self.header, **_weights_json(self.weights[PLAIN])}
        if WISE_FT in self.weights:
            out[WISE_FT] = _weights_json(self.weights[WISE_FT])
        return out

    @classmethod
    def from_json(cls, metrics: dict) -> Results:
        header = {k: v for k, v in metrics.items() if k not in ("results", HARMONIC_MEAN, WISE_FT)}
        weights = {PLAIN: _weights_from_json(metrics)}
        if WISE_FT in metrics:
            weights[WISE_FT] = _weights_from_json(metrics[WISE_FT])
        return cls(header, weights)

    def flat(self) -> dict[str, float]:
        """The scalars as `dataset/top1`-style names, for logs (`wise_ft/...` for WiSE-FT)."""
        out = _flat(self.weights[PLAIN])
        if WISE_FT in self.weights:
            out.update({f"wise_ft/{k}": v for k, v in _flat(self.weights[WISE_FT]).items()})
        return out


def _weights_json(w: WeightsResults) -> dict:
    results: dict[str, dict] = {}
    for key, accuracy in w.lists.items():
        name, split = split_key(key)
        if split and name in w.split_means:
            results.setdefault(name, {"splits": {}})["splits"][split] = accuracy.to_json()
        else:
            results[key] = accuracy.to_json()
    for name, mean in w.split_means.items():
        results[name] = {**dataclasses.asdict(mean), "splits": results[name]["splits"]}
    out: dict[str, Any] = {"results": results}
    if w.harmonic_mean is not None:
        out[HARMONIC_MEAN] = w.harmonic_mean
    return out


def _weights_from_json(metrics: dict) -> WeightsResults:
    out = WeightsResults({})
    for name, result in metrics["results"].items():
        if "splits" in result:
            for split, r in result["splits"].items():
                out.lists[f"{name}/{split}"] = _accuracy(r)
            if all(f.name in result for f in dataclasses.fields(SplitMean)):
                fields = dataclasses.fields(SplitMean)
                out.split_means[name] = SplitMean(**{f.name: result[f.name] for f in fields})
        else:
            out.lists[name] = _accuracy(result)
    out.harmonic_mean = metrics.get(HARMONIC_MEAN)
    return out


def _accuracy(r: dict) -> Accuracy:
    return Accuracy(**{f.name: r.get(f.name) for f in dataclasses.fields(Accuracy)})


def _flat(w: WeightsResults) -> dict[str, float]:
    out = {
        f"{name}/{key}": value
        for name, result in _weights_json(w)["results"].items()
        for key, value in result.items()
        if isinstance(value, int | float)
    }
    if w.harmonic_mean is not None:
        out[HARMONIC_MEAN] = w.harmonic_mean
    return out
