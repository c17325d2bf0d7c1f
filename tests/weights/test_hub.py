"""Hub model folders: an orbax model directory -> `python -m tcclip_jax.export --format hub` ->
`Predictor.from_pretrained` gives the same parameters bit for bit and the same logits, from the
folder and from a repo id in the Hugging Face cache (offline); damaged folders are refused in one
line naming the file; tools/push_to_hub.py refuses what it cannot upload."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from model_helpers import CLASSNAMES, random_params

pytest.importorskip("safetensors", reason="pip install 'tcclip-jax[hub]'")
pytest.importorskip("huggingface_hub", reason="pip install 'tcclip-jax[hub]'")

import push_to_hub  # noqa: E402
from huggingface_hub import constants, scan_cache_dir  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from tcclip_jax import export as export_cli  # noqa: E402
from tcclip_jax import predict as predict_cli  # noqa: E402
from tcclip_jax.apps.inference import Predictor, load_predictor  # noqa: E402
from tcclip_jax.models.params import flatten  # noqa: E402
from tcclip_jax.weights import hub  # noqa: E402
from tcclip_jax.weights.checkpoint import CheckpointError, save_model  # noqa: E402

METRICS = {
    "protocol": "fewshot",
    "wise_ft": None,
    "results": {"hmdb51": {"top1": 61.25, "top5": 88.5, "num_videos": 80}},
}
TRAINED = {
    "step": 120,
    "protocol": "fewshot",
    "model_variant": "tc_clip",
    "init_checkpoint": "/x/k400",
}


def _orbax(tmp_path, cfg, seed=0, info=None, metrics=None):
    """A training run's exported model: run/model (orbax), run/final_metrics.json."""
    run = tmp_path / "run"
    run.mkdir()
    params = random_params(cfg, seed)
    save_model(str(run / "model"), cfg, params, info=info, normalization="imagenet")
    if metrics is not None:
        (run / "final_metrics.json").write_text(json.dumps(metrics))
    return str(run / "model"), params


def _to_hub(checkpoint, output, capsys):
    argv = ["--checkpoint", checkpoint, "--format", "hub", "--output", output]
    assert export_cli.main(argv) == 0, capsys.readouterr().err
    return argv


def _assert_same_params(a, b):
    a, b = flatten(a), flatten(b)
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), k


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_round_trip_is_bit_for_bit_with_the_same_logits(tiny, tmp_path, capsys):
    cfg, _, clips, _, _ = tiny
    checkpoint, params = _orbax(tmp_path, cfg, info=TRAINED, metrics=METRICS)
    folder = str(tmp_path / "hub")
    argv = _to_hub(checkpoint, folder, capsys)
    assert sorted(os.listdir(folder)) == sorted(hub.FILES)
    config, loaded, normalization = hub.load_pretrained(folder)
    assert config == cfg and normalization == "imagenet"
    _assert_same_params(loaded, params)
    # Every command's --checkpoint: the folder gives the orbax directory's logits.
    want = Predictor.from_checkpoint(checkpoint).logits(clips, CLASSNAMES)
    predictor = load_predictor(folder)
    assert predictor.normalization == "imagenet"
    np.testing.assert_array_equal(predictor.logits(clips, CLASSNAMES), want)

    with open(os.path.join(folder, hub.CARD_FILE)) as f:
        card = f.read()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for line in ("license: apache-2.0", "library_name: tcclip_jax", "- tc-clip",
                 "pipeline_tag: video-classification"):  # fmt: skip
        assert line in front.splitlines()
    assert "the weights of step 120" in body and "- init checkpoint: `k400`" in body
    assert "/x/k400" not in card  # local paths are cut to their names
    assert "python -m tcclip_jax.export " + " ".join(argv) in body
    assert ["hmdb51", "80", "61.25", "88.50"] in [line.split() for line in body.splitlines()]
    with open(os.path.join(folder, hub.CONFIG_FILE)) as f:
        assert json.load(f)["provenance"] == TRAINED


@pytest.mark.parametrize("model", ["vifi_clip", "clip"])
def test_vifi_clip_and_clip_round_trip(tiny_config, tmp_path, capsys, model):
    cfg = tiny_config.replace(model=model)
    checkpoint, params = _orbax(tmp_path, cfg, seed=1)
    _to_hub(checkpoint, str(tmp_path / "hub"), capsys)
    config, loaded, _ = hub.load_pretrained(str(tmp_path / "hub"))
    assert config == cfg
    _assert_same_params(loaded, params)
    card = (tmp_path / "hub" / hub.CARD_FILE).read_text()
    assert "no provenance record" in card and "## Evaluation" not in card


def test_save_pretrained_of_a_predictor_reads_back(tiny, tmp_path):
    cfg, params, clips, _, _ = tiny
    predictor = Predictor(cfg, params, normalization="clip")
    predictor.save_pretrained(str(tmp_path / "hub"))
    again = Predictor.from_pretrained(str(tmp_path / "hub"))
    assert again.normalization == "clip"
    _assert_same_params(jax.device_get(again.params), jax.device_get(predictor.params))


def _cache_repo(cache, repo_id: str, folder: str, commit: str = "a" * 40) -> None:
    """The layout huggingface_hub gives a downloaded repo: blobs named by content hash,
    snapshots/<commit>/<file> linking to them, refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for i, name in enumerate(hub.FILES):
        blob = f"{i:064x}"
        shutil.copy(os.path.join(folder, name), repo / "blobs" / blob)
        os.symlink(f"../../blobs/{blob}", repo / "snapshots" / commit / name)


def test_a_repo_id_reads_from_the_cache_offline(tiny_config, tmp_path, capsys, monkeypatch):
    cfg = tiny_config
    checkpoint, params = _orbax(tmp_path, cfg)
    folder = str(tmp_path / "hub")
    _to_hub(checkpoint, folder, capsys)
    cache = tmp_path / "cache"
    _cache_repo(cache, "owner/tcclip-tiny", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    # huggingface_hub's own scan of the cache sees the repo, its revision and its files.
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == "owner/tcclip-tiny" and set(repo.refs) == {"main"}
    assert {f.file_name for r in repo.revisions for f in r.files} == set(hub.FILES)

    _, loaded, _ = hub.load_pretrained("owner/tcclip-tiny")
    # Records (predict --json, embedding folders) name it as given; a folder by its path.
    assert hub.source_name("owner/tcclip-tiny") == "owner/tcclip-tiny"
    assert hub.source_name(os.path.relpath(folder)) == folder
    _assert_same_params(loaded, params)
    predictor = load_predictor("owner/tcclip-tiny")  # what every --checkpoint reads
    assert predictor.config == cfg and predictor.normalization == "imagenet"

    with pytest.raises(CheckpointError) as e:
        hub.load_pretrained("owner/not-there")
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("owner/not-there: no such folder, and no such model on the Hugging")
    assert str(cache / "models--owner--not-there") in message and "HF_HUB_OFFLINE" in message


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_config):
    d = tmp_path_factory.mktemp("hub")
    save_model(str(d / "model"), tiny_config, random_params(tiny_config, 0), normalization="clip")
    assert export_cli.main(
        ["--checkpoint", str(d / "model"), "--format", "hub", "--output", str(d / "hub")]
    ) == 0  # fmt: skip
    return str(d / "hub")


def _damaged(folder, tmp_path, damage) -> str:
    out = str(tmp_path / "damaged")
    shutil.copytree(folder, out)
    damage(out)
    return out


def _drop(name):
    return lambda d: os.remove(os.path.join(d, name))


def _truncate(d):
    path = os.path.join(d, hub.WEIGHTS_FILE)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _without(key_part):
    def damage(d):
        path = os.path.join(d, hub.WEIGHTS_FILE)
        sd = load_file(path)
        (key,) = [k for k in sd if k.endswith(key_part)]
        del sd[key]
        save_file(sd, path)

    return damage


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_truncate, f"{hub.WEIGHTS_FILE}: not a safetensors file"),
        (_drop(hub.CONFIG_FILE), f"damaged: not a tcclip_jax model folder (no {hub.CONFIG_FILE})"),
        (_drop(hub.WEIGHTS_FILE), f"damaged: has a {hub.CONFIG_FILE} but no {hub.WEIGHTS_FILE}"),
        (_without("ln_post.bias"), f"{hub.WEIGHTS_FILE}: missing key image_encoder.ln_post.bias"),
        (_without("token_embedding.weight"), f"{hub.WEIGHTS_FILE}: missing key token_embedding"),
    ],
    ids=["corrupt", "no-config", "no-weights", "missing-tensor", "no-token-embedding"],
)
def test_damaged_folders_are_refused_in_one_line(folder, tmp_path, capsys, damage, expected):
    bad = _damaged(folder, tmp_path, damage)
    argv = ["--checkpoint", bad, "--video", "a.mp4", "--classes", "a", "b"]
    assert predict_cli.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {bad}") and expected in line, line


def test_push_to_hub_refuses_what_it_cannot_upload(folder, tmp_path, capsys):
    not_folder = tmp_path / "model.safetensors"
    not_folder.write_bytes(b"")
    assert push_to_hub.main([str(not_folder), "owner/name"]) == 2
    assert _error_line(capsys) == (
        f"error: {not_folder}: not a folder (write one with python -m tcclip_jax.export "
        "--format hub)"
    )
    partial = _damaged(folder, tmp_path, _drop(hub.CARD_FILE))
    assert push_to_hub.main([partial, "owner/name", "--private"]) == 2
    assert _error_line(capsys) == f"error: {partial}: not a Hub model folder (no {hub.CARD_FILE})"
    with pytest.raises(SystemExit) as e:  # the repo id is required
        push_to_hub.main([folder])
    assert e.value.code == 2
    args = push_to_hub.parse_args([folder, "owner/name", "--revision", "v1", "--private"])
    assert (args.folder, args.repo_id, args.revision, args.private) == (
        folder, "owner/name", "v1", True,
    )  # fmt: skip
