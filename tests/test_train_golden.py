"""Golden training step: the published code's float64 loss and gradients of every trainable
tensor (tests/fixtures/tcclip_small_train.npz, or the fixture named by $TCCLIP_TRAIN_GOLDEN),
through the user's path (the files -> the converter CLI), the trainer's `loss_and_grads` and the
exporter's released layout (tests/train_golden.py)."""

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
    seed, bad = fixture["case"]["proj_seed"], []
    for i, name in enumerate(fixture["grad_names"]):
        g = ours[name]
        key = name.removeprefix("module.")
        got = [np.linalg.norm(g)] + [
            np.sum(g * train_golden.direction(seed, key, j, g.shape)) for j in range(3)
        ]
        want = [fixture["grad_norm"][i], *fixture["grad_proj"][i]]
        for what, a, b in zip(("norm", "proj 0", "proj 1", "proj 2"), got, want, strict=True):
            if not abs(a - b) <= 1e-8 * abs(b) + 1e-12:
                bad.append(f"{name} {what}: {a!r} != {b!r}")
    assert not bad, f"{len(bad)} of {4 * len(fixture['grad_names'])} differ: " + "; ".join(bad[:5])


def test_small_gradients_in_full(fixture, ours):
    names = [k[len("grad__") :] for k in fixture if k.startswith("grad__")]
    assert names
    for name in names:
        np.testing.assert_allclose(ours[name], fixture["grad__" + name], rtol=0, atol=1e-10,
                                   err_msg=name)  # fmt: skip
