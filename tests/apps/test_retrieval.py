"""`embed` and `search` on synthetic videos with tiny random TC-CLIP and ViFi-CLIP models: the
stage-2 score is the model's logit for the text (float64), the embedding folder resumes after a
kill, and bad input gets one line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from measures import stage_one_recall

from tcclip_jax import embed, search
from tcclip_jax.apps import collection, retrieval
from tcclip_jax.apps.inference import Predictor, view_config
from tcclip_jax.data import synthetic
from tcclip_jax.data.pipeline import load_test_views
from tcclip_jax.weights.checkpoint import save_model
from tests.commands.test_predict import random_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    paths = synthetic.generate(
        str(root), videos_per_class=2, val_per_class=0, num_frames=8, size=(32, 32), seed=2
    )
    return {"root": str(root / "videos"), "videos": sorted(paths["videos"]),
            "classes": paths["classes"]}  # fmt: skip


@pytest.fixture(scope="module")
def models(tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for seed, model in enumerate(("tc_clip", "vifi_clip")):
        config = tiny_config.replace(model=model)
        out[model] = {"dir": str(root / model), "config": config,
                      "params": random_params(config, seed)}  # fmt: skip
        save_model(out[model]["dir"], config, out[model]["params"], normalization="imagenet")
    return out


def embed_here(predictor: Predictor, videos, directory: str, clips: int = 2) -> None:
    """What `embed` does, in this process (for a float64 predictor)."""
    cfg = view_config(predictor.config, clips, 1, predictor.normalization)
    cfg.uint8_output = True
    meta = retrieval.store_meta(predictor, "unused", clips, 1)
    writer = retrieval.EmbeddingWriter(directory, meta, resume=False)
    for batch in collection.view_batches(videos, cfg, 0, 4):
        views = predictor.normalize(collection.stack_views(batch, 4))
        arrays = retrieval.embed_batch(predictor, views)
        writer.write(batch, {k: a[: len(batch)] for k, a in arrays.items()})
    writer.close()


@pytest.mark.parametrize("model", ["tc_clip", "vifi_clip"])
def test_search_scores_are_the_models_logits_in_float64(videos, models, tmp_path, model):
    """Every re-scored video's score is `Predictor.logits` of its views for the query (mean over
    views) to float64 precision; for ViFi-CLIP (no VP) so is the stage-1 score."""
    query = "a shape moving left"
    with jax.enable_x64(True):
        m = models[model]
        predictor = Predictor(m["config"], m["params"], dtype=jnp.float64)
        embed_here(predictor, videos["videos"], str(tmp_path / "emb"))
        index = retrieval.EmbeddingIndex.load(str(tmp_path / "emb"))
        assert index.videos == videos["videos"]
        assert index.video_embedding.dtype == np.float64
        n = len(index.videos)
        results = retrieval.search(predictor, index, query, top=n, rerank=n)
        cfg = view_config(predictor.config, 2, 1, predictor.normalization)
        for r in results:
            logits = predictor.logits(load_test_views(r["video"], cfg), [query])[:, 0]
            np.testing.assert_allclose(r["score"], logits.mean(), rtol=1e-12)
            if model == "vifi_clip":
                np.testing.assert_allclose(r["stage1"], logits.mean(), rtol=1e-12)
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True) and len(scores) == n

        recall = stage_one_recall(
            predictor, index, list(synthetic.CLASS_NAMES), k=5, pools=(5, 10, n)
        )
        print(f"{model}: recall of the exhaustive VP top-5 in stage 1's top N: {recall}")
        assert recall[n] == 1.0 and recall[5] <= recall[10] <= recall[n]
        if model == "vifi_clip":
            assert recall[5] == 1.0  # no VP: stage 1 is the exact ranking


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO,
        timeout=300,
    )  # fmt: skip


def test_embed_resumes_and_search_lists(videos, models, tmp_path, capsys):
    out = tmp_path / "emb"
    command = ["--checkpoint", models["tc_clip"]["dir"], "--video", videos["root"],
               "--output", str(out), "--batch-size", "4", "--workers", "0",
               "--labels", videos["classes"]]  # fmt: skip
    first = run("tcclip_jax.embed", *command)
    assert first.returncode == 0, first.stderr
    index = retrieval.EmbeddingIndex.load(str(out))
    assert index.videos == videos["videos"]
    config = models["tc_clip"]["config"]
    assert index.video_embedding.shape == (16, 2, config.embed_dim)
    context = index.context_tokens(np.arange(16))
    assert context.shape[:3] == (16, 2, config.context_tokens)
    with np.load(out / retrieval.CLASSES_FILE) as classes:
        assert classes["names"].tolist() == list(synthetic.CLASS_NAMES)
        assert classes["text_embedding"].shape == (8, config.embed_dim)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == "tc_clip" and meta["views"] == {"clips": 2, "crops": 1}

    # A kill: the last shard's index lines lost but one (cut in half), the shard left behind.
    lines = (out / "index.jsonl").read_text().splitlines(keepends=True)
    (out / "index.jsonl").write_text("".join(lines[:12]) + lines[12][:20])
    assert embed.main(command) == 2 and "pass --resume" in capsys.readouterr().err
    resumed = run("tcclip_jax.embed", *command, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "12 videos already done" in resumed.stderr
    after = retrieval.EmbeddingIndex.load(str(out))
    assert after.videos == videos["videos"]  # each once, in order
    np.testing.assert_allclose(after.video_embedding, index.video_embedding, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.context_tokens(np.arange(16)), context, rtol=1e-5, atol=1e-6)
    assert embed.main([*command, "--resume", "--clips", "1"]) == 2
    assert "other settings (views" in capsys.readouterr().err

    args = ["--index", str(out), "shape", "moving", "left", "--top", "3", "--json"]
    assert search.main(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["query"] == "shape moving left"
    assert [r["rank"] for r in document["results"]] == [1, 2, 3]
    assert all(r["video"] in videos["videos"] for r in document["results"])


def test_search_mistakes(tmp_path, capsys):
    assert search.main(["--index", str(tmp_path), "juggling"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an embedding folder" in err
    assert search.main(["--index", str(tmp_path), "x", "--top", "0"]) == 2
    assert "--top must be positive" in capsys.readouterr().err
