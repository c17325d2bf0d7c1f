"""Golden training step: the published code's float64 loss and gradients of every trainable
tensor (tests/fixtures/tcclip_small_train.npz, or the fixture named by $TCCLIP_TRAIN_GOLDEN),
through the user's path (the files -> the converter CLI), the trainer's `loss_and_grads` and the
exporter's released layout (tests/helpers/train_golden.py). The float64 step of a ViT-B-wide
model takes about a minute on 2 cores, computed once for the module's tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

import golden_recipe  # noqa: E402
import train_golden  # noqa: E402


@pytest.fixture(scope="module")
def fixture() -> dict:
    path = train_golden.fixture_path()
    f = golden_recipe.load_fixture(path)
    f["path"], f["grad_names"] = path, json.loads(str(f["grad_names"]))
    return f


@pytest.fixture(scope="module")
def ours(fixture, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("train_golden")
    ckpt = train_golden.convert_fixture(fixture, str(d))
    return train_golden.run_worker(ckpt, fixture["path"], "float64", str(d / "grads.npz"))


def test_direction_check_value():
    d = train_golden.direction(14, "logit_scale", 0, ())
    assert float(d) == pytest.approx(-0.9755498372053253, rel=1e-15)


def test_case_fields_become_converter_flags():
    case = {"model": "vifi_clip", "positional_embedding_type": "joint", "tome_r": 50, "batch": 2}
    assert train_golden.converter_flags(case) == [
        "--model", "vifi_clip", "--positional-embedding", "joint", "--merge-r", "50",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"does not know: \['dropout'\]"):
        train_golden.converter_flags({**case, "dropout": 0.1})


def test_loss(fixture, ours):
    assert abs(float(ours["loss"]) - float(fixture["loss"])) < 1e-10


def test_trainable_tensors_are_the_published_ones(fixture, ours):
    """Nothing trained that the published code freezes, nothing frozen that it trains."""
    assert set(ours) - {"loss"} == set(fixture["grad_names"])


def test_gradient_norms_and_projections(fixture, ours):
    got, want = train_golden.norms_and_projections(ours, fixture)
    bad = np.abs(got - want) > 1e-8 * np.abs(want) + 1e-12
    failures = [
        f"{fixture['grad_names'][i]} {('norm', 'proj 0', 'proj 1', 'proj 2')[j]}: "
        f"{got[i, j]!r} != {want[i, j]!r}"
        for i, j in zip(*np.nonzero(bad), strict=True)
    ]
    assert not failures, f"{len(failures)} of {bad.size} differ: " + "; ".join(failures[:5])


def test_small_gradients_in_full(fixture, ours):
    names = [k[len("grad__") :] for k in fixture if k.startswith("grad__")]
    assert names
    for name in names:
        np.testing.assert_allclose(ours[name], fixture["grad__" + name], rtol=0, atol=1e-10,
                                   err_msg=name)  # fmt: skip
