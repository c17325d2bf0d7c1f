"""Weight import: OpenAI CLIP parity (state dict and TorchScript archive) and bad-input errors."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tcclip_jax.models import VideoCLIP  # noqa: E402
from tcclip_jax.weights.checkpoint import load_model  # noqa: E402
from tcclip_jax.weights.convert import convert  # noqa: E402
from tcclip_jax.weights.pytorch import ConversionError, read_torch_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERT = os.path.join(REPO, "tools", "convert_torch_weights.py")


def _openai_clip_model_module():
    try:
        dist = importlib.metadata.distribution("openai-clip")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("openai-clip is not installed")
    spec = importlib.util.spec_from_file_location(
        "openai_clip_model", dist.locate_file("clip/model.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def openai_clip():
    """A small random-weight OpenAI CLIP (ViT), every parameter perturbed (LayerNorms too)."""
    cm = _openai_clip_model_module()
    torch.manual_seed(0)
    model = cm.CLIP(
        embed_dim=128,
        image_resolution=32,
        vision_layers=2,
        vision_width=128,
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,
        transformer_width=128,
        transformer_heads=2,
        transformer_layers=2,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    # The released archives carry these scalars in their state dict.
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    return model


def _inputs():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    tokens = np.zeros((4, 77), np.int64)
    for i, ids in enumerate([[320, 1125, 539], [], [5, 6, 7, 8, 9, 10], list(range(100, 170))]):
        tokens[i, 0] = 49406
        tokens[i, 1 : 1 + len(ids)] = ids
        tokens[i, 1 + len(ids)] = 49407
    return images, tokens


def _check_parity(model, ckpt_dir):
    cfg, params = load_model(ckpt_dir)
    assert cfg.model == "clip"
    assert (cfg.vision_layers, cfg.vision_width, cfg.vision_patch_size) == (2, 128, 8)
    images, tokens = _inputs()
    with torch.no_grad():
        ref_img = model.encode_image(torch.from_numpy(images)).numpy()
        ref_txt = model.encode_text(torch.from_numpy(tokens)).numpy()
    jm = VideoCLIP(cfg)
    img = jm.apply(
        {"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)), method="encode_image"
    )
    txt = jm.apply({"params": params}, jnp.asarray(tokens, jnp.int32), method="encode_text")
    np.testing.assert_allclose(np.asarray(img), ref_img, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(txt["text_features"]), ref_txt, atol=1e-5, rtol=0)


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, CONVERT, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_clip_state_dict_parity(openai_clip, tmp_path):
    path = tmp_path / "clip_sd.pt"
    torch.save(openai_clip.state_dict(), path)
    out = tmp_path / "ckpt"
    res = _run_cli("--clip", str(path), "--model", "clip", "--output", str(out))
    assert res.returncode == 0, res.stderr
    _check_parity(openai_clip, str(out))


def test_clip_torchscript_archive_parity(openai_clip, tmp_path):
    images, tokens = _inputs()
    traced = torch.jit.trace(openai_clip, (torch.from_numpy(images), torch.from_numpy(tokens)))
    path = tmp_path / "ViT-test.pt"
    traced.save(str(path))
    out = tmp_path / "ckpt"
    res = _run_cli("--clip", str(path), "--model", "clip", "--output", str(out))
    assert res.returncode == 0, res.stderr
    _check_parity(openai_clip, str(out))


def test_float16_release_converts_to_float32(openai_clip, tmp_path):
    path = tmp_path / "fp16.pt"
    torch.save({k: v.half() for k, v in openai_clip.state_dict().items()}, path)
    cfg, params = convert(str(path), model="clip")
    assert params["visual"]["conv1"]["kernel"].dtype == np.float32
    assert cfg.context_length == 77


def test_init_from_clip_follows_the_published_recipe(openai_clip, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save(openai_clip.state_dict(), path)
    cfg, params = convert(
        str(path), model="tc_clip", num_frames=4, context_tokens=4, positional_embedding="joint"
    )
    sd = {k: v.numpy() for k, v in openai_clip.state_dict().items()}
    # Prompt vectors: CLIP's embeddings of "a photo of a".
    np.testing.assert_array_equal(
        params["prompt_learner"]["ctx"], sd["token_embedding.weight"][[320, 1125, 539, 320]]
    )
    # VP: a copy of the last text block, ln_1_kv = ln_1.
    vp, last = params["prompt_generation_layer"], params["transformer"]["resblocks_1"]
    np.testing.assert_array_equal(vp["mlp"]["c_fc"]["kernel"], last["mlp"]["c_fc"]["kernel"])
    np.testing.assert_array_equal(vp["ln_1_kv"]["scale"], sd["transformer.resblocks.1.ln_1.weight"])
    # Joint positional embedding: CLIP's table repeated over T.
    pos = params["visual"]["positional_embedding"]
    assert pos.shape == (4, 17, 128)
    np.testing.assert_array_equal(pos[3], sd["visual.positional_embedding"])
    # Bias tables at every block after the first, small trunc-normal values.
    blocks = params["visual"]["transformer"]
    assert "local_global_bias_table" not in blocks["resblocks_0"]["attn"]
    table = blocks["resblocks_1"]["attn"]["local_global_bias_table"]
    assert table.shape == (2, 1, 2) and np.all(np.abs(table) <= 0.04) and np.any(table != 0)
    # In-projection split: q kernel = first third of in_proj_weight, transposed, per head.
    w = sd["visual.transformer.resblocks.0.attn.in_proj_weight"][:128]
    np.testing.assert_array_equal(
        blocks["resblocks_0"]["attn"]["q_proj"]["kernel"], w.T.reshape(128, 2, 64)
    )


# Bad input -----------------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    res = _run_cli("--clip", str(path), "--output", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "not a PyTorch checkpoint" in res.stderr and "junk.pt" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_architecture(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConversionError, match="unknown architecture: ResNet"):
        convert(str(path))
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConversionError, match="unknown architecture"):
        convert(str(path))


def test_missing_keys_are_listed(openai_clip, tmp_path):
    sd = dict(openai_clip.state_dict())
    del sd["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    with pytest.raises(
        ConversionError, match=r"missing key visual.transformer.resblocks.1.mlp.c_fc.bias"
    ):
        convert(str(path), model="clip")


def test_tcclip_checkpoint_shape_mismatch_names_key(openai_clip, tmp_path):
    clip_path = tmp_path / "clip.pt"
    torch.save(openai_clip.state_dict(), clip_path)
    cfg, params = convert(str(clip_path), model="tc_clip", num_frames=4, context_tokens=4)
    sd = _released_format(openai_clip, params)
    sd["module.image_encoder.positional_embedding"] = torch.zeros(4, 17, 128)  # a joint table
    ft_path = tmp_path / "tc.pth"
    torch.save({"model": sd}, ft_path)
    res = _run_cli(
        "--clip", str(clip_path), "--tcclip", str(ft_path), "--num-frames", "4",
        "--context-tokens", "4", "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert res.returncode == 2
    assert "shape mismatch for visual/positional_embedding" in res.stderr
    assert "expected [17, 128], got [4, 17, 128]" in res.stderr


def test_tcclip_checkpoint_roundtrip_ignores_class_buffers(openai_clip, tmp_path):
    clip_path = tmp_path / "clip.pt"
    torch.save(openai_clip.state_dict(), clip_path)
    _, params = convert(str(clip_path), model="tc_clip", num_frames=4, context_tokens=4, seed=3)
    sd = _released_format(openai_clip, params)
    sd["module.prompt_learner.token_prefix"] = torch.zeros(7, 1, 128)
    sd["module.prompt_learner.token_suffix"] = torch.zeros(7, 25, 128)
    ft_path = tmp_path / "tc.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 3}, ft_path)
    _, params2 = convert(
        str(clip_path), tcclip_path=str(ft_path), model="tc_clip", num_frames=4, context_tokens=4
    )
    import jax

    same = jax.tree.map(lambda a, b: np.array_equal(a, b), params, params2)
    assert all(jax.tree.leaves(same))
    del sd["module.prompt_learner.ctx"]
    torch.save({"model": sd}, ft_path)
    with pytest.raises(ConversionError, match="missing key prompt_learner.ctx"):
        convert(str(clip_path), tcclip_path=str(ft_path), num_frames=4, context_tokens=4)


def _released_format(openai_clip, params) -> dict:
    """A released-format TC-CLIP state dict (`module.` keys, q/k/v_proj in the vision tower)."""
    sd = {}
    for k, v in openai_clip.state_dict().items():
        if k in ("input_resolution", "context_length", "vocab_size", "token_embedding.weight"):
            continue
        if k.startswith("visual."):
            name = "module.image_encoder." + k[len("visual.") :]
            if name.endswith("in_proj_weight") or name.endswith("in_proj_bias"):
                kind = "weight" if name.endswith("weight") else "bias"
                for part, t in zip("qkv", torch.chunk(v, 3), strict=True):
                    sd[name.replace(f"in_proj_{kind}", f"{part}_proj.{kind}")] = t
                continue
            sd[name] = v
        elif k == "logit_scale":
            sd["module.logit_scale"] = v
        else:
            sd["module.text_encoder." + k] = v
    table = params["visual"]["transformer"]["resblocks_1"]["attn"]["local_global_bias_table"]
    sd["module.image_encoder.transformer.resblocks.1.attn.local_global_bias_table"] = (
        torch.from_numpy(np.asarray(table))
    )
    sd["module.prompt_learner.ctx"] = torch.from_numpy(np.asarray(params["prompt_learner"]["ctx"]))
    last = {
        k: v
        for k, v in openai_clip.state_dict().items()
        if k.startswith("transformer.resblocks.1.")
    }
    for k, v in last.items():
        sd[
            "module.text_encoder.prompt_generation_layer.0." + k[len("transformer.resblocks.1.") :]
        ] = v
    for part in ("weight", "bias"):
        sd[f"module.text_encoder.prompt_generation_layer.0.ln_1_kv.{part}"] = last[
            f"transformer.resblocks.1.ln_1.{part}"
        ]
    return sd


def test_read_torch_file_rejects_missing_and_empty(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        read_torch_file(str(tmp_path / "nope.pt"))
    path = tmp_path / "empty.pt"
    torch.save({}, path)
    with pytest.raises(ConversionError, match="holds no state dict"):
        read_torch_file(str(path))


# Archives that would run code, and the user's files ------------------------------------------

MARKER = "archive code ran"


class _Scripted(torch.nn.Module):
    """A module whose scripted __setstate__ (run by torch.jit.load) prints MARKER."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.ones(2, 2))

    def forward(self, x):
        return x @ self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("archive code ran")
        self.weight = state[0]
        self.training = state[1]


def test_torchscript_setstate_never_runs(tmp_path, capfd):
    path = tmp_path / "scripted.pt"
    torch.jit.script(_Scripted()).save(str(path))
    torch.jit.load(str(path))  # what the converter must not do: it runs the archive's code
    assert MARKER in capfd.readouterr().out
    res = _run_cli("--clip", str(path), "--output", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert MARKER not in res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert re.fullmatch(
        rf"error: {re.escape(str(path))}: __torch__\.[\w.]*_Scripted is pickled with a custom "
        r"state \(tuple\); only plain modules can be read as data",
        line,
    ), line
    assert not (tmp_path / "out").exists()


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_torchscript_pickle_global_is_refused(openai_clip, tmp_path):
    images, tokens = _inputs()
    traced = torch.jit.trace(openai_clip, (torch.from_numpy(images), torch.from_numpy(tokens)))
    genuine, path = tmp_path / "genuine.pt", tmp_path / "exploit.pt"
    traced.save(str(genuine))
    pwned = tmp_path / "pwned"
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/data.pkl"):
                data = pickle.dumps(_Exploit(pwned), protocol=2)
            dst.writestr(name, data)
    res = _run_cli("--clip", str(path), "--output", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {path}: data.pkl names {os.system.__module__}.system, which is not tensor data; "
        "refusing to load it"
    ]
    assert not pwned.exists()
    assert read_torch_file(str(genuine)).keys() == traced.state_dict().keys()


def test_convert_overwrites_only_when_told(openai_clip, tmp_path):
    path = tmp_path / "clip_sd.pt"
    torch.save(openai_clip.state_dict(), path)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "info.json").write_text("the user's own")
    res = _run_cli("--clip", str(path), "--model", "clip", "--output", str(out))
    assert res.returncode == 2 and (out / "info.json").read_text() == "the user's own"
    res = _run_cli("--clip", str(path), "--model", "clip", "--output", str(out), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "info.json").read_text())["clip"] == str(path)
    load_model(str(out))
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "clip_sd.pt"]  # no temporary folder left
