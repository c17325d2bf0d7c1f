"""Hugging Face CLIP in and out, with transformers as the independent oracle.

`transformers.CLIPModel`s are built offline from random `CLIPConfig`s (every parameter
perturbed; eager attention, SDPA in float64) at a small size and at ViT-B/16 widths, heads,
patches and resolution with 2 blocks per tower: blocks are renamed one by one and their count is
checked against config.json, so full depth adds time, not coverage (`--runslow` runs ViT-B/32 and
ViT-B/16 at full depth). After `save_pretrained` and conversion, our image and text embeddings and
one-frame logits must equal transformers'.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tcclip_jax.data.config import CLIP_MEAN  # noqa: E402
from tcclip_jax.models import ModelConfig, VideoCLIP  # noqa: E402
from tcclip_jax.models.config import ARCH_NAMES, check_arch  # noqa: E402
from tcclip_jax.models.params import expected_shapes  # noqa: E402
from tcclip_jax.models.tokenizer import _load_merges, get_tokenizer  # noqa: E402
from tcclip_jax.weights import hf  # noqa: E402
from tcclip_jax.weights.checkpoint import load_model, load_normalization, save_model  # noqa: E402
from tcclip_jax.weights.convert import convert  # noqa: E402
from tcclip_jax.weights.pytorch import ConversionError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ["juggling balls", "playing guitar", "ApplyEyeMakeup", "a"]

SMALL = dict(
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    vision=dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8,
    ),
    projection_dim=48,
)  # fmt: skip
B16 = dict(  # ViT-B/16 widths, heads, patches and resolution; 2 blocks per tower.
    text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8),
    vision=dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
        image_size=224, patch_size=16,
    ),
    projection_dim=512,
)  # fmt: skip


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_tool, export_tool = _tool("convert_torch_weights"), _tool("export_hf_weights")


def _attention(dtype) -> str:
    """Eager attention for float32 parity; in float64, SDPA: transformers' eager attention takes
    its softmax in float32 whatever the model's dtype (errors ~1e-7)."""
    return "sdpa" if dtype == torch.float64 else "eager"


def _hf_model(size: dict, eos_token_id: int, seed: int, dtype=torch.float32):
    config = transformers.CLIPConfig(
        text_config={**size["text"], "eos_token_id": eos_token_id},
        vision_config=size["vision"],
        projection_dim=size["projection_dim"],
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).to(dtype)
    model.set_attn_implementation(_attention(dtype))
    with torch.no_grad():
        for p in model.parameters():  # LayerNorms, biases, class embedding, logit scale too.
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{name: (CLIPModel, its save_pretrained directory)}. `*_legacy`: the same weights under a
    config with `eos_token_id=2`, as transformers loads that directory."""
    out = {}
    for name, size, dtype in (
        ("small", SMALL, torch.float32),
        ("small_f64", SMALL, torch.float64),
        ("b16", B16, torch.float32),
    ):
        model = _hf_model(size, 49407, seed=len(out), dtype=dtype)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, str(path))
        legacy = tmp_path_factory.mktemp(name + "_legacy")
        shutil.copy(path / "model.safetensors", legacy)
        config = json.loads((path / "config.json").read_text())
        config["text_config"]["eos_token_id"] = 2
        (legacy / "config.json").write_text(json.dumps(config))
        model = transformers.CLIPModel.from_pretrained(
            legacy, attn_implementation=_attention(dtype), dtype=dtype
        ).eval()
        assert model.text_model.eos_token_id == 2
        out[name + "_legacy"] = (model, str(legacy))
    return out


def _inputs(cfg: ModelConfig, dtype=np.float32):
    rng = np.random.default_rng(0)
    r = cfg.image_resolution
    images = rng.standard_normal((2, r, r, 3)).astype(dtype)  # NHWC
    tokens = get_tokenizer()(CLASSES, context_length=cfg.positional_table_length)
    # One row padded with EOT, as transformers' CLIPTokenizer pads: pooling must not move.
    tokens = np.concatenate([tokens, np.where(tokens[:1] == 0, 49407, tokens[:1])])
    return images, tokens


def _reference(model, images, tokens):
    """transformers' unnormalised image / text features and its logits."""
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    ids = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels).pooler_output.numpy()
        txt = model.get_text_features(input_ids=ids).pooler_output.numpy()
        logits = model(input_ids=ids, pixel_values=pixels).logits_per_image.numpy()
    return img, txt, logits


@functools.cache
def _forward(cfg: ModelConfig, dtype):
    model = VideoCLIP(cfg, dtype)

    @jax.jit
    def forward(params, images, tokens):
        variables = {"params": jax.tree.map(lambda p: p.astype(dtype), params)}
        img = model.apply(variables, images, method="encode_image")
        txt = model.apply(variables, tokens, method="encode_text")["text_features"]
        logits, _ = model.apply(variables, images[:, None], tokens)  # one-frame clips
        return img, txt, logits

    return forward


def _ours(cfg, params, images, tokens, dtype=jnp.float32):
    out = _forward(cfg, dtype)(params, jnp.asarray(images), jnp.asarray(tokens, jnp.int32))
    return tuple(np.asarray(x) for x in out)


def _assert_close(ours, ref, atol):
    for name, a, b in zip(("image", "text", "logits"), ours, ref, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=name)


@functools.cache
def _clip(path: str) -> tuple[ModelConfig, dict]:
    """`convert(path, model="clip")`, once per directory (callers only read the result)."""
    return convert(path, model="clip")


def _flat(params):
    return flax.traverse_util.flatten_dict(params, sep="/")


def _assert_same_params(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


# transformers -> ours --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "small_legacy", "b16", "b16_legacy"])
def test_hf_clip_matches_transformers_float32(hf_dirs, name):
    model, path = hf_dirs[name]
    cfg, params = _clip(path)
    width, heads = (
        model.config.vision_config.hidden_size,
        model.config.vision_config.num_attention_heads,
    )
    assert (cfg.vision_width, cfg.vision_heads) == (width, heads)
    assert cfg.context_length == 77
    images, tokens = _inputs(cfg)
    _assert_close(_ours(cfg, params, images, tokens), _reference(model, images, tokens), 1e-5)


@pytest.mark.parametrize("name", ["small_f64", "small_f64_legacy"])
def test_hf_clip_matches_transformers_float64(hf_dirs, name):
    model, path = hf_dirs[name]
    cfg, params = _clip(path)
    assert params["visual"]["proj"].dtype == np.float64
    images, tokens = _inputs(cfg, np.float64)
    with jax.enable_x64(True):
        ours = _ours(cfg, params, images, tokens, jnp.float64)
    _assert_close(ours, _reference(model, images, tokens), 1e-10)


def test_every_model_kind(hf_dirs, tmp_path, capsys):
    """vifi_clip: CLIP's towers and forward pass, with the parameters of the clip conversion
    (which equals transformers above). tc_clip: initialised from CLIP; its text tower (prompt
    vectors = embeddings of "a photo of a") gives transformers' hidden states at the input of
    the last block for "a photo of a {name}." prompts; its vision tower is CLIP's."""
    _, path = hf_dirs["small"]
    out = str(tmp_path / "v")
    assert convert_tool.main(["--clip", path, "--model", "vifi_clip", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: vifi_clip") and "clip normalisation" in printed
    assert load_normalization(out) == "clip"  # CLIP's weights expect CLIP's statistics
    with open(os.path.join(out, "preprocessing.json")) as f:
        assert json.load(f)["mean"] == list(CLIP_MEAN)
    told = str(tmp_path / "told")
    args = ["--clip", path, "--model", "clip", "--normalization", "imagenet", "--output", told]
    assert convert_tool.main(args) == 0
    assert load_normalization(told) == "imagenet"
    cfg, params = load_model(out)
    assert cfg == _clip(path)[0].replace(model="vifi_clip")
    _assert_same_params(params, _clip(path)[1])

    model, path = hf_dirs["b16"]  # TC-CLIP needs projection_dim == the text width.
    cfg, params = convert(path, model="tc_clip", num_frames=4, context_tokens=4)
    assert cfg.context_length == 30
    tokens = get_tokenizer()([f"a photo of a {c}." for c in CLASSES], context_length=30)
    hidden = VideoCLIP(cfg).apply({"params": params}, jnp.asarray(tokens), method="encode_text")
    with torch.no_grad():
        ref = model.text_model(
            input_ids=torch.from_numpy(tokens.astype(np.int64)), output_hidden_states=True
        ).hidden_states[cfg.text_layers - 1]
    np.testing.assert_allclose(np.asarray(hidden["hidden"]), ref.numpy(), rtol=0, atol=1e-5)
    # The vision tower is CLIP's: same parameters as the clip conversion, plus TC's bias tables.
    _, clip = _clip(path)
    tc = _flat(params)
    for k, v in _flat(clip).items():
        np.testing.assert_array_equal(tc[k], v, err_msg=k)
    assert sorted(set(tc) - set(_flat(clip))) == sorted(
        [k for k in tc if k.startswith(("prompt_learner/", "prompt_generation_layer/"))]
        + ["visual/transformer/resblocks_1/attn/local_global_bias_table"]
    )


def test_torch_bin_sharded_and_bfloat16_files(hf_dirs, tmp_path):
    model, path = hf_dirs["small"]
    _, want = _clip(path)
    # pytorch_model.bin, with the position_ids buffers older transformers versions saved.
    legacy = tmp_path / "bin"
    legacy.mkdir()
    shutil.copy(os.path.join(path, "config.json"), legacy)
    sd = dict(model.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    torch.save(sd, legacy / "pytorch_model.bin")
    _assert_same_params(convert(str(legacy), model="clip")[1], want)
    sd["vision_model.embeddings.position_ids"] = torch.arange(17).flip(0)[None]
    torch.save(sd, legacy / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"vision_model.embeddings.position_ids is not 0, 1"):
        convert(str(legacy), model="clip")
    # Sharded safetensors with an index.
    model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _assert_same_params(convert(str(tmp_path / "sharded"), model="clip")[1], want)
    # bfloat16 (NumPy has none): read through JAX, widened to float32.
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model.to(torch.float32)
    _, got = convert(str(tmp_path / "bf16"), model="clip")
    expect = jax.tree.map(
        lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)), want
    )
    _assert_same_params(got, expect)


def test_safetensors_need_no_torch(hf_dirs, tmp_path, monkeypatch):
    """With `import torch` failing, model.safetensors converts (bfloat16 too); a
    pytorch_model.bin gets one line saying torch is needed."""
    model, path = hf_dirs["small"]
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model.to(torch.float32)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(os.path.join(path, "config.json"), bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises
    _assert_same_params(convert(path, model="clip")[1], _clip(path)[1])
    convert(str(tmp_path / "bf16"), model="clip")
    _one_line_error(bin_dir, r"pytorch_model.bin: reading a pytorch_model.bin needs torch")


def test_model_id_from_the_local_cache_only(hf_dirs, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    _, path = hf_dirs["small"]
    snapshot = tmp_path / "models--tcclip--tiny-clip" / "snapshots" / ("0" * 40)
    shutil.copytree(path, snapshot)
    (tmp_path / "models--tcclip--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--tcclip--tiny-clip" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    _assert_same_params(convert("tcclip/tiny-clip", model="clip")[1], _clip(path)[1])
    # A model that is not there: one line saying where it looked, and nothing fetched.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    args = ["--clip", "openai/clip-vit-base-patch16", "--output", str(tmp_path / "out")]
    assert convert_tool.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: openai/clip-vit-base-patch16: no such file or directory, and no such model in the "
        f"local Hugging Face cache (looked in {tmp_path / 'empty'}/models--openai--clip-vit-base-"
        "patch16; nothing is downloaded)"
    ]
    assert not (tmp_path / "empty").exists() and not (tmp_path / "out").exists()


# Sizes -----------------------------------------------------------------------------------------

# OpenAI's sizes as config.json files: the published values that differ from transformers'
# defaults, written here (nothing is downloaded); B/32 in the legacy `*_config_dict` form.
HUB_CONFIGS = {
    "ViT-B/32": {
        "model_type": "clip", "projection_dim": 512,
        "text_config_dict": {"eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1},
        "vision_config_dict": {"patch_size": 32},
    },
    "ViT-B/16": {
        "model_type": "clip", "projection_dim": 512,
        "text_config": {"eos_token_id": 2, "hidden_size": 512, "intermediate_size": 2048},
        "vision_config": {"patch_size": 16, "hidden_size": 768, "intermediate_size": 3072},
    },
    "ViT-L/14": {
        "model_type": "clip", "projection_dim": 768,
        "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
        "vision_config": {
            "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
            "num_hidden_layers": 24, "patch_size": 14,
        },
    },
}  # fmt: skip
HUB_CONFIGS["ViT-L/14-336"] = json.loads(json.dumps(HUB_CONFIGS["ViT-L/14"]))
HUB_CONFIGS["ViT-L/14-336"]["vision_config"]["image_size"] = 336


@pytest.mark.parametrize("name", sorted(HUB_CONFIGS))
def test_openai_sizes(name, tmp_path):
    """Each size's config.json, with transformers' CLIPModel key set and shapes (built on the meta
    device, no memory), gives OpenAI's architecture; any other --arch is refused by field."""
    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIGS[name]))
    config, text, vision = hf.read_hf_config(str(tmp_path))
    hf_cfg = transformers.CLIPConfig.from_pretrained(str(tmp_path))
    assert hf_cfg.text_config.eos_token_id == text["eos_token_id"]
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in transformers.CLIPModel(hf_cfg).state_dict().items()}
    zeros = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # no memory
    sd = hf.hf_to_openai(zeros, name)
    arch = hf.hf_architecture(config, text, vision, sd, name)
    cfg = ModelConfig(model="clip", **arch)
    check_arch(cfg, name, "src")
    for other in ARCH_NAMES:
        if other != name:
            with pytest.raises(ValueError, match=rf"^src: architecture {other} has \w+ \d+, these"):
                check_arch(cfg, other, "src")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B/32", "ViT-B/16"])
def test_full_depth_through_the_tool(name, tmp_path, capsys):
    """OpenAI's sizes at full depth (random weights), through the tool with --arch."""
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(HUB_CONFIGS[name]))
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig.from_pretrained(tmp_path / "hf"))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval().save_pretrained(tmp_path / "hf")
    args = ["--clip", str(tmp_path / "hf"), "--arch", name, "--model", "clip", "--output"]
    assert convert_tool.main([*args, str(tmp_path / "ckpt")]) == 0, capsys.readouterr().err
    cfg, params = load_model(str(tmp_path / "ckpt"))
    images, tokens = _inputs(cfg)
    _assert_close(_ours(cfg, params, images, tokens), _reference(model, images, tokens), 1e-5)


def test_defaults_are_transformers_defaults():
    text, vision = transformers.CLIPTextConfig(), transformers.CLIPVisionConfig()
    assert {k: getattr(text, k) for k in hf.TEXT_DEFAULTS} == hf.TEXT_DEFAULTS
    assert {k: getattr(vision, k) for k in hf.VISION_DEFAULTS} == hf.VISION_DEFAULTS
    config = transformers.CLIPConfig()
    assert config.projection_dim == hf.PROJECTION_DIM_DEFAULT
    assert config.logit_scale_init_value == hf.LOGIT_SCALE_INIT


# ours -> transformers ---------------------------------------------------------------------------


def _random_params(cfg: ModelConfig, seed: int) -> dict:
    """Random parameters of our model, none at a trivial value (LayerNorm scales 1 + noise)."""
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in expected_shapes(cfg).items():
        x = rng.normal(0.0, 0.1, shape)
        if path.endswith("/scale"):
            x += 1.0
        elif path == "logit_scale":
            x += np.log(1 / 0.07)
        params[path] = x.astype(np.float32)
    return flax.traverse_util.unflatten_dict(params, sep="/")


def test_ours_to_hf_to_ours_and_transformers(hf_dirs, tmp_path, capsys):
    cfg = _clip(hf_dirs["small"][1])[0]  # only its shapes (4 vision heads of 16, 2 text of 32)
    params = _random_params(cfg, 0)
    save_model(str(tmp_path / "ckpt"), cfg, params)
    out = tmp_path / "hf"
    assert export_tool.main(["--checkpoint", str(tmp_path / "ckpt"), "--output", str(out)]) == 0
    assert "left out" not in capsys.readouterr().out
    cfg2, params2 = convert(str(out), model="clip")
    assert cfg2 == cfg
    _assert_same_params(params2, params)
    model = transformers.CLIPModel.from_pretrained(str(out), attn_implementation="eager").eval()
    assert model.text_projection.weight.dtype == torch.float32
    images, tokens = _inputs(cfg)
    _assert_close(_ours(cfg, params, images, tokens), _reference(model, images, tokens), 1e-5)
    # The directory is not overwritten.
    assert export_tool.main(["--checkpoint", str(tmp_path / "ckpt"), "--output", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_ours_to_hf_float64(hf_dirs, tmp_path):
    cfg = _clip(hf_dirs["small"][1])[0]
    params = jax.tree.map(lambda a: a.astype(np.float64), _random_params(cfg, 1))
    hf.export_hf(str(tmp_path / "hf"), cfg, params)
    _assert_same_params(convert(str(tmp_path / "hf"), model="clip")[1], params)
    model = transformers.CLIPModel.from_pretrained(
        str(tmp_path / "hf"), attn_implementation=_attention(torch.float64), dtype=torch.float64
    ).eval()
    images, tokens = _inputs(cfg, np.float64)
    with jax.enable_x64(True):
        ours = _ours(cfg, params, images, tokens, jnp.float64)
    _assert_close(ours, _reference(model, images, tokens), 1e-10)


def test_tc_clip_towers_round_trip(tiny_config, tmp_path, capsys):
    """A TC-CLIP checkpoint exports its CLIP towers; prompt vectors, VP and the bias tables are
    listed as left out, and come back identical in a CLIP conversion of the export."""
    cfg = tiny_config
    params = _random_params(cfg, 2)
    save_model(str(tmp_path / "ckpt"), cfg, params)
    assert (
        export_tool.main(["--checkpoint", str(tmp_path / "ckpt"), "--output", str(tmp_path / "hf")])
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == (
        "left out (no place in a CLIPModel): prompt_generation_layer, prompt_learner, "
        "local_global_bias_table x1"
    )
    cfg2, clip = convert(str(tmp_path / "hf"), model="clip", num_frames=4, context_tokens=4)
    assert cfg2 == cfg.replace(model="clip", context_length=77)
    tc = _flat(params)
    for k, v in _flat(clip).items():
        np.testing.assert_array_equal(v, tc[k], err_msg=k)
    # A joint positional embedding (one table per frame) has no CLIPModel equivalent.
    joint = cfg.replace(positional_embedding="joint")
    params = _random_params(joint, 3)
    save_model(str(tmp_path / "joint"), joint, params)
    assert (
        export_tool.main(["--checkpoint", str(tmp_path / "joint"), "--output", str(tmp_path / "j")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {tmp_path / 'joint'}: positional_embedding 'joint' ([4, 17, 64]) holds a table "
        "per frame; CLIP holds one"
    ]
    assert not (tmp_path / "j").exists()


# Bad input -------------------------------------------------------------------------------------


def _one_line_error(path, match, **options):
    with pytest.raises(ConversionError, match=match) as e:
        convert(str(path), **options)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_not_clip_models(hf_dirs, tmp_path):
    bert = tmp_path / "bert"
    transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(bert)
    _one_line_error(bert, r"config.json: model_type 'bert' is not a CLIP model \(expected 'clip'")
    vision = tmp_path / "vision"
    clip_model, path = hf_dirs["small"]
    transformers.CLIPVisionModelWithProjection(clip_model.config.vision_config).save_pretrained(
        vision
    )
    _one_line_error(vision, r"model_type 'clip_vision_model' is a vision-only CLIP checkpoint")
    # The same weights under a CLIPModel config.json.
    shutil.copy(os.path.join(path, "config.json"), vision)
    _one_line_error(vision, r"vision: no text_model\.\* keys: a vision-only checkpoint")
    (tmp_path / "empty").mkdir()
    _one_line_error(
        tmp_path / "empty", r"empty: not a Hugging Face model directory \(no config.json\)"
    )
    shutil.copy(os.path.join(path, "config.json"), tmp_path / "empty")
    _one_line_error(tmp_path / "empty", r"holds no model.safetensors or pytorch_model.bin")
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"garbage!")
    _one_line_error(tmp_path / "empty", r"model.safetensors: not a safetensors file")


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"vision_config": {"num_hidden_layers": 3}},
         "vision_config.num_hidden_layers is 3, but the weights have 2 "
         "(vision_model.encoder.layers.*)"),
        ({"vision_config": {"patch_size": 16}},
         "vision_config.patch_size is 16, but the weights have 8 "
         "(vision_model.embeddings.patch_embedding.weight)"),
        ({"text_config": {"hidden_size": 32, "intermediate_size": 128}},
         "text_config.hidden_size is 32, but the weights have 64"),
        ({"projection_dim": 64},
         "projection_dim is 64, but the weights have 48 (text_projection.weight)"),
        ({"text_config": {"hidden_act": "gelu"}}, "text_config.hidden_act is 'gelu'"),
        ({"vision_config": {"intermediate_size": 100}}, "vision_config.intermediate_size is 100"),
        ({"text_config": {"eos_token_id": 7}}, "text_config.eos_token_id is 7"),
        ({"vision_config": {"image_size": [32, 64]}}, "vision_config.image_size is [32, 64]"),
    ],
)  # fmt: skip
def test_config_and_weights_disagree(hf_dirs, tmp_path, edit, message):
    _, path = hf_dirs["small"]
    shutil.copytree(path, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for k, v in edit.items():
        if isinstance(v, dict):
            config[k].update(v)
        else:
            config[k] = v
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    _one_line_error(tmp_path / "m", "config.json: " + re.escape(message), model="clip")


def test_missing_and_unexpected_keys(hf_dirs, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = hf_dirs["small"]
    shutil.copytree(path, tmp_path / "m")
    file = tmp_path / "m" / "model.safetensors"
    sd = load_file(file)
    del sd["vision_model.encoder.layers.1.self_attn.v_proj.bias"]
    sd["vision_model.encoder.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(sd, file, metadata={"format": "pt"})
    _one_line_error(
        tmp_path / "m", r"m: missing key vision_model.encoder.layers.1.self_attn.v_proj.bias$"
    )
    sd["vision_model.encoder.layers.1.self_attn.v_proj.bias"] = np.zeros(64, np.float32)
    save_file(sd, file, metadata={"format": "pt"})
    _one_line_error(
        tmp_path / "m",
        r"unexpected keys for a CLIPModel: \['vision_model.encoder.layers.0.extra.weight'\]",
    )


def test_mismatched_arch_through_the_tool(hf_dirs, tmp_path, capsys):
    _, path = hf_dirs["b16"]
    for arch, field in (("ViT-B/32", "vision_patch_size 32, these weights 16"),
                        ("ViT-B/16", "vision_layers 12, these weights 2")):  # fmt: skip
        args = ["--clip", path, "--arch", arch, "--model", "clip", "--output", str(tmp_path / "o")]
        assert convert_tool.main(args) == 2
        want = f"error: {path}: architecture {arch} has {field}"
        assert capsys.readouterr().err.splitlines() == [want]
        assert not (tmp_path / "o").exists()


# Tokenizer: transformers.CLIPTokenizer vs ours (= OpenAI's) -----------------------------------


def test_transformers_tokenizer_differences():
    """transformers' CLIPTokenizer (5.x, tokenizers-backed) from our vocabulary and merges: the
    same ids as ours on plain class names; different where OpenAI's ftfy and HTML unescaping
    change the text, and on a case-folded contraction; EOT padding instead of 0."""
    ours = get_tokenizer()
    theirs = transformers.CLIPTokenizer(vocab=dict(ours._encoder), merges=_load_merges())
    plain = ["ApplyEyeMakeup", "apply eye makeup", "Playing Daf", "climb stairs", "YoYo",
             "a photo of a sword exercise.", "Pommel Horse", "brush_hair", "K-pop"]  # fmt: skip
    for text in plain:
        assert theirs(text)["input_ids"] == [ours.sot_token, *ours.encode(text), ours.eot_token]
    differ = {
        "fish &amp; chips": "fish & chips",  # HTML unescaping
        "&lt;b&gt;bold": "<b>bold",
        "\u201ccurly\u201d quotes": '"curly" quotes',  # ftfy uncurls quotes
        "caf\u00c3\u00a9": "caf\u00e9",  # ftfy repairs mojibake
        "\ufb01sh": "fish",  # ftfy expands ligatures
        "\uff21\uff22": "ab",  # ftfy narrows full-width characters
        "x\x00y": "xy",  # ftfy drops control characters
    }
    for raw, fixed in differ.items():
        assert ours.encode(raw) == ours.encode(fixed)
        assert theirs(raw)["input_ids"] != theirs(fixed)["input_ids"]
        assert theirs(raw)["input_ids"][1:-1] != ours.encode(raw)
        assert theirs(fixed)["input_ids"][1:-1] == ours.encode(fixed)  # only the cleaning differs
    # OpenAI's pattern is case-insensitive: `'\u017f` (long s) is one piece like `'s`.
    assert theirs("it'\u017f")["input_ids"][1:-1] != ours.encode("it'\u017f")
    # Padding: EOT (plus an attention mask) against clip.tokenize's zeros; the ids before agree.
    padded = theirs(["a photo of a cat."], padding="max_length", max_length=12)["input_ids"][0]
    zeros = ours(["a photo of a cat."], context_length=12)[0]
    n = int(zeros.argmax()) + 1
    assert padded[:n] == list(zeros[:n]) and set(padded[n:]) == {ours.eot_token}
    assert set(zeros[n:]) == {0}
    # Truncation to 77 agrees (SOT, 75 ids, EOT).
    long = " ".join(["word"] * 100)
    assert theirs(long, truncation=True, max_length=77)["input_ids"] == list(
        ours(long, truncate=True)[0]
    )
