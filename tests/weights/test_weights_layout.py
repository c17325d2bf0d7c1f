"""The one layout table, both ways: every parameter of every model kind has exactly one entry,
every transform is exactly inverted, and our checkpoints exported to the released PyTorch formats
(tools/export_torch_weights.py) convert back to the same parameters, bit for bit, with the
released key set and shapes."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from tcclip_jax.models import ModelConfig
from tcclip_jax.models.params import FAST, expected_shapes, flatten, param_group, unflatten
from tcclip_jax.weights import layout
from tcclip_jax.weights.checkpoint import save_model
from tcclip_jax.weights.pytorch import PUBLISHED_FAST_PARTS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _variants(tiny: ModelConfig) -> dict[str, ModelConfig]:
    """Model kinds on small towers. OpenAI CLIP files do not record head counts (the converter
    takes width / 64, as CLIP does), so the widths are 128 with 2 heads."""
    tiny = tiny.replace(vision_width=128, text_width=128, embed_dim=128, text_heads=2)
    return {
        "tc_clip": tiny,
        "tc_clip_light": tiny.replace(vision_layers=3, tc_layers=(3,)),
        "tc_clip_joint": tiny.replace(positional_embedding="joint"),
        "vifi_clip": tiny.replace(model="vifi_clip"),
        "clip": tiny.replace(model="clip", context_length=77),
    }


def _random_params(cfg: ModelConfig, seed: int, dtype=np.float32) -> dict:
    rng = np.random.default_rng(seed)
    return unflatten(
        {k: rng.standard_normal(s).astype(dtype) for k, s in expected_shapes(cfg).items()}
    )


@pytest.mark.parametrize("variant", ["tc_clip", "tc_clip_light", "vifi_clip"])
def test_our_fast_group_is_the_published_codes(tiny_config, variant):
    """The parameters we train at `fast_lr_multiplier` x the rate are those whose released names
    the published optimiser puts in its 10x groups (what the bench's published run uses)."""
    table = layout.released_table(_variants(tiny_config)[variant])
    fast = [any(p in name for p in PUBLISHED_FAST_PARTS for name in e.torch) for e in table]
    ours = [all(param_group(path) == FAST for path in e.ours) for e in table]
    assert ours == fast
    assert any(fast) == (variant != "vifi_clip")


@pytest.mark.parametrize(
    "variant", ["tc_clip", "tc_clip_light", "tc_clip_joint", "vifi_clip", "clip"]
)
def test_tables_cover_every_parameter_once(tiny_config, variant):
    cfg = _variants(tiny_config)[variant]
    shapes = expected_shapes(cfg)
    released = layout.our_paths(layout.released_table(cfg))
    assert len(released) == len(set(released))
    assert set(released) == set(shapes) - {"token_embedding/embedding"}
    clip = layout.our_paths(layout.clip_table(cfg))
    assert len(clip) == len(set(clip))
    tc_only = {k for k in shapes if k.split("/")[0] in ("prompt_learner", "prompt_generation_layer")
               or k.endswith("local_global_bias_table")}  # fmt: skip
    assert set(clip) == set(shapes) - tc_only


@pytest.mark.parametrize("fused", [True, False])
def test_transforms_invert_exactly(tiny_config, fused):
    """ours -> torch -> ours and torch -> ours -> torch are the identity, in float64."""
    cfg = tiny_config
    table = layout.released_table(cfg, fused_vision=fused)
    flat = flatten(_random_params(cfg, 0, np.float64))
    sd = layout.to_torch(flat, table, "test")
    back = layout.to_ours(sd, table, "test")
    assert set(back) == set(flat) - {"token_embedding/embedding"}
    for k, v in back.items():
        np.testing.assert_array_equal(v, flat[k], err_msg=k)
    sd2 = layout.to_torch(back, table, "test")
    assert list(sd2) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(sd2[k], sd[k], err_msg=k)
    # The layouts are PyTorch's: fused q, k, v stacked, Linear weights [out, in], conv OIHW.
    attn = "visual/transformer/resblocks_0/attn"
    w = cfg.vision_width
    q = flat[f"{attn}/q_proj/kernel"].reshape(w, w)
    if fused:
        np.testing.assert_array_equal(
            sd["image_encoder.transformer.resblocks.0.attn.in_proj_weight"][:w], q.T
        )
    else:
        np.testing.assert_array_equal(
            sd["image_encoder.transformer.resblocks.0.attn.q_proj.weight"], q.T
        )
    out = sd["image_encoder.transformer.resblocks.0.attn.out_proj.weight"]
    np.testing.assert_array_equal(out, flat[f"{attn}/out_proj/kernel"].reshape(w, w).T)
    fc = flat["transformer/resblocks_0/mlp/c_fc/kernel"]
    np.testing.assert_array_equal(sd["text_encoder.transformer.resblocks.0.mlp.c_fc.weight"], fc.T)
    conv = sd["image_encoder.conv1.weight"]
    assert conv.shape == (w, 3, cfg.vision_patch_size, cfg.vision_patch_size)
    np.testing.assert_array_equal(conv[5, 1, 2, 3], flat["visual/conv1/kernel"][2, 3, 1, 5])


def _export_tool():
    path = os.path.join(REPO, "tools", "export_torch_weights.py")
    spec = importlib.util.spec_from_file_location("export_torch_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["tc_clip", "tc_clip_light", "vifi_clip", "clip"])
def test_export_then_convert_gives_identical_parameters(tiny_config, variant, tmp_path, capsys):
    pytest.importorskip("torch")
    from tcclip_jax.weights.convert import convert

    cfg = _variants(tiny_config)[variant]
    params = _random_params(cfg, 1)
    save_model(str(tmp_path / "ckpt"), cfg, params)
    pth, pt = str(tmp_path / "released.pth"), str(tmp_path / "clip.pt")
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--tcclip", pth, "--clip", pt]
    assert _export_tool().main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {pth}: released {cfg.model} checkpoint" in out
    options = dict(model=cfg.model, num_frames=cfg.num_frames, context_tokens=cfg.context_tokens,
                   tc_layers=cfg.tc_layers, context_length=cfg.context_length)  # fmt: skip
    cfg2, params2 = convert(pt, tcclip_path=pth, **options)
    assert cfg2 == cfg
    want, got = flatten(params), flatten(params2)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    if cfg.model == "vifi_clip":  # class-name buffers of released files are ignored
        import torch

        released = torch.load(pth, weights_only=True)
        released["model"]["module.prompt_learner.complete_text_embeddings"] = torch.zeros(3, 30, 8)
        torch.save(released, pth)
        _, params3 = convert(pt, tcclip_path=pth, **options)
        for k, v in flatten(params3).items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)
    if cfg.model == "clip":  # the CLIP state dict alone is the whole model
        _, params3 = convert(pt, **options)
        for k, v in flatten(params3).items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)
    # An existing file is never overwritten.
    assert _export_tool().main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: {pth} exists; choose a new file name"


def test_released_key_set_and_shapes(tmp_path):
    """ours -> .pth -> torch.load(weights_only=True): the released checkpoint's keys (in its
    order) and shapes, as listed by the golden fixture's `manifest_ft`; OpenAI CLIP's likewise."""
    torch = pytest.importorskip("torch")
    from tcclip_jax.weights.pytorch import openai_state_dict, released_state_dict, save_torch

    with np.load(os.path.join(REPO, "tests/fixtures/tcclip_small.npz")) as f:
        case = json.loads(str(f["case"]))
        manifest_ft, manifest_clip = (
            json.loads(str(f["manifest_ft"])),
            json.loads(str(f["manifest_clip"])),
        )
    cfg = ModelConfig(vision_layers=case["vision_layers"], text_layers=case["text_layers"],
                      num_frames=case["num_frames"])  # fmt: skip
    params = unflatten({k: np.zeros(s, np.float32) for k, s in expected_shapes(cfg).items()})
    save_torch(str(tmp_path / "ft.pth"), released_state_dict(cfg, params), wrap=True)
    loaded = torch.load(tmp_path / "ft.pth", weights_only=True)
    assert list(loaded) == ["model"]
    assert [[k, list(v.shape)] for k, v in loaded["model"].items()] == manifest_ft
    sd, left_out = openai_state_dict(cfg, params)
    save_torch(str(tmp_path / "clip.pt"), sd, wrap=False)
    loaded = torch.load(tmp_path / "clip.pt", weights_only=True)
    assert [[k, list(v.shape)] for k, v in loaded.items()] == manifest_clip
    assert {k.split("/")[0] for k in left_out} >= {"prompt_learner", "prompt_generation_layer"}


def test_export_errors(tiny_config, tmp_path, capsys):
    tool = _export_tool()
    with pytest.raises(SystemExit):
        tool.main(["--checkpoint", str(tmp_path)])
    assert "nothing to write" in capsys.readouterr().err
    joint = _variants(tiny_config)["tc_clip_joint"]
    save_model(str(tmp_path / "joint"), joint, _random_params(joint, 2))
    assert (
        tool.main(["--checkpoint", str(tmp_path / "joint"), "--clip", str(tmp_path / "c.pt")]) == 2
    )
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'joint'}: positional_embedding 'joint' ([4, 17, 128]) holds a table "
        "per frame; CLIP holds one"
    )
    assert not (tmp_path / "c.pt").exists()
