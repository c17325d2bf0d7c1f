"""CLIP, ViFi-CLIP and TC-CLIP models (`tcclip_jax.models.video_clip`): shapes, parameter names
and gradients (the vision blocks alone: test_models_vision.py; config errors:
test_models_config.py).

Full-size architectures are checked with `jax.eval_shape` only (no compute); everything that runs
uses the tiny `tiny_config` of conftest.py. References are independent of the model code: the
OpenAI CLIP state dict shapes come from `clip/model.py` of openai-clip built on torch's meta
device, the released TC-CLIP names from the golden fixture's manifest.
"""

import functools
import importlib.metadata
import importlib.util
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from model_helpers import CLASSNAMES, cross_entropy_step, random_params

from tcclip_jax.models import ARCH_NAMES, ModelConfig, VideoCLIP, arch_config
from tcclip_jax.models.tokenizer import tokenize_prompts
from tcclip_jax.ops.token_merging import merge_schedule

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "tcclip_small.npz"
KINDS = ("tc_clip", "vifi_clip", "clip")
# No "a", "photo" or "of" in the names: those words only occur where prompt vectors replace them.

# OpenAI's `clip.model.CLIP` arguments of the released checkpoints (`build_model` reads them off
# the state dict), independent of `arch_config`.
OPENAI_ARCHS = {
    "ViT-B/32": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=32,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, vision_layers=12, vision_width=768, vision_patch_size=16,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, vision_layers=24, vision_width=1024, vision_patch_size=14,
                     transformer_width=768, transformer_heads=12, transformer_layers=12),
}  # fmt: skip
OPENAI_ARCHS["ViT-L/14-336"] = OPENAI_ARCHS["ViT-L/14"]


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


@functools.cache
def abstract_model(cfg: ModelConfig, batch: int = 2, classes: int = 3):
    """(logits, video outputs, params) of `VideoCLIP(cfg)` as shapes only: no compute."""
    res = cfg.image_resolution
    clips = jax.ShapeDtypeStruct((batch, cfg.num_frames, res, res, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((classes, cfg.context_length), jnp.int32)
    init = lambda c, t: VideoCLIP(cfg).init_with_output(jax.random.key(0), c, t)
    (logits, video), variables = jax.eval_shape(init, clips, tokens)
    return logits, video, variables["params"]


@functools.cache
def openai_clip_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """State dict shapes of OpenAI's own CLIP module (built on the meta device: no memory)."""
    torch = pytest.importorskip("torch")
    try:
        path = importlib.metadata.distribution("openai-clip").locate_file("clip/model.py")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("openai-clip is not installed")
    spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with torch.device("meta"):
        model = module.CLIP(
            image_resolution=arch_config(arch).image_resolution,
            context_length=77,
            vocab_size=49408,
            **OPENAI_ARCHS[arch],
        )
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def to_flax_shapes(
    shapes: dict[str, tuple[int, ...]], vision_heads: int, text_heads: int
) -> dict[str, tuple[int, ...]]:
    """PyTorch CLIP / released TC-CLIP names and shapes -> the Flax tree's names and shapes.

    Fused `in_proj` splits into per-head q, k, v kernels [W, heads, head_dim]; linear weights
    transpose; the conv kernel becomes [p, p, 3, W]; LayerNorm weight is `scale`.
    """
    out = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        for old, new in (
            ("module.image_encoder.", "visual."),
            ("module.text_encoder.prompt_generation_layer.0.", "prompt_generation_layer."),
            ("module.text_encoder.", ""),
            ("module.", ""),
        ):
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        path = re.sub(r"resblocks\.(\d+)\.", r"resblocks_\1.", name).replace(".", "/")
        heads = vision_heads if path.startswith("visual/") else text_heads
        parent, _, leaf = path.rpartition("/")
        if leaf == "in_proj_weight":  # [3W, W]
            for p in "qkv":
                out[f"{parent}/{p}_proj/kernel"] = (shape[1], heads, shape[1] // heads)
        elif leaf == "in_proj_bias":  # [3W]
            for p in "qkv":
                out[f"{parent}/{p}_proj/bias"] = (heads, shape[0] // 3 // heads)
        elif re.search(r"/[qkv]_proj/weight$", path):  # released TC-CLIP vision blocks.
            out[f"{parent}/kernel"] = (shape[1], heads, shape[0] // heads)
        elif re.search(r"/[qkv]_proj/bias$", path):
            out[path] = (heads, shape[0] // heads)
        elif path.endswith("out_proj/weight"):
            out[path.replace("/weight", "/kernel")] = (heads, shape[1] // heads, shape[0])
        elif path == "visual/conv1/weight":
            out["visual/conv1/kernel"] = (shape[2], shape[3], shape[1], shape[0])
        elif re.search(r"ln_\w+/weight$", path):
            out[path.replace("/weight", "/scale")] = shape
        elif path.endswith("/weight") and "/mlp/" in path:
            out[path.replace("/weight", "/kernel")] = shape[::-1]
        elif path == "token_embedding/weight":
            out["token_embedding/embedding"] = shape
        else:
            out[path] = shape
    return out


def tc_extras(cfg: ModelConfig, clip_shapes: dict[str, tuple[int, ...]]) -> dict:
    """What TC-CLIP adds to CLIP: bias tables, prompt vectors, VP (a copy of a text block)."""
    table = (cfg.vision_heads, 1, 2)
    extras = {
        f"visual/transformer/resblocks_{i - 1}/attn/local_global_bias_table": table
        for i in cfg.context_layers
    }
    extras["prompt_learner/ctx"] = (cfg.prompt_length, cfg.text_width)
    block = "transformer/resblocks_0/"
    for name, shape in clip_shapes.items():
        if name.startswith(block):
            extras["prompt_generation_layer/" + name[len(block) :]] = shape
    extras["prompt_generation_layer/ln_1_kv/scale"] = (cfg.text_width,)
    extras["prompt_generation_layer/ln_1_kv/bias"] = (cfg.text_width,)
    return extras


# Full-size architectures, shapes only -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "arch",
    # ViT-L/14 at 336 px traces for ~10 s; ViT-L/14 runs the same code at 224 px.
    [pytest.param(a, marks=pytest.mark.slow) if a.endswith("-336") else a for a in ARCH_NAMES],
)
def test_output_shapes(arch, kind):
    cfg = arch_config(arch, model=kind, num_frames=16)
    logits, video, _ = abstract_model(cfg)
    b, t, e = 2, 16, cfg.embed_dim
    assert (logits.shape, logits.dtype) == ((b, 3), jnp.float32)
    assert video["video_embedding"].shape == (b, e)
    assert video["frame_embeddings"].shape == (b, t, e)
    if kind == "tc_clip":
        n_s = int(cfg.num_patches * 0.3)
        n_blocks = len(cfg.summary_layers)
        assert video["context_embeddings"].shape == (b, 96, e)
        assert video["seed_index"].shape == (b, n_blocks, t, n_s)
        assert video["assignment"].shape == (b, n_blocks, t, n_s)
    else:
        assert not {"context_embeddings", "seed_index", "assignment"} & set(video)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_parameters_match_openai_clip(arch):
    openai = openai_clip_shapes(arch)
    arch_args = OPENAI_ARCHS[arch]  # OpenAI's vision heads are width // 64.
    want = to_flax_shapes(openai, arch_args["vision_width"] // 64, arch_args["transformer_heads"])
    for kind in ("clip", "vifi_clip"):
        _, _, params = abstract_model(arch_config(arch, model=kind, num_frames=16))
        assert flat_shapes(params) == want
    cfg = arch_config(arch, num_frames=16)
    _, _, params = abstract_model(cfg)
    assert flat_shapes(params) == {**want, **tc_extras(cfg, want)}
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
    clip_count = sum(int(np.prod(s)) for s in openai.values())
    _, _, clip_params = abstract_model(arch_config(arch, model="clip", num_frames=16))
    assert count(clip_params) == clip_count
    if arch == "ViT-L/14":
        assert clip_count == 427_616_513  # OpenAI's CLIP ViT-L/14, text tower included.
        # TC-CLIP adds VP (one text block), 4 prompt vectors and 23 bias tables.
        assert count(params) - clip_count == 12 * 768**2 + 15 * 768 + 4 * 768 + 23 * 16 * 2


def test_parameters_match_released_tcclip_checkpoint():
    """The golden case (ViT-B/16 widths, 3 blocks) against the released checkpoint's manifest."""
    fixture = np.load(FIXTURE)
    case = json.loads(str(fixture["case"]))
    clip = dict(json.loads(str(fixture["manifest_clip"])))
    released = dict(json.loads(str(fixture["manifest_ft"])))
    released["token_embedding.weight"] = clip["token_embedding.weight"]  # not in the checkpoint.
    cfg = arch_config(
        "ViT-B/16",
        vision_layers=case["vision_layers"],
        text_layers=case["text_layers"],
        num_frames=case["num_frames"],
    )
    _, _, params = abstract_model(cfg)
    assert flat_shapes(params) == to_flax_shapes(released, cfg.vision_heads, cfg.text_heads)


def test_light_variant_layout_full_size():
    """TC-CLIP§: context at blocks 4, 8, 12, summarised in 3, 7, 11 and in 12 for VP."""
    cfg = arch_config("ViT-B/16", tc_layers=(4, 8, 12), num_frames=16)
    assert cfg.summary_layers == (3, 7, 11, 12)
    _, video, params = abstract_model(cfg)
    blocks = params["visual"]["transformer"]
    with_bias = {
        i for i in range(12) if "local_global_bias_table" in blocks[f"resblocks_{i}"]["attn"]
    }
    assert with_bias == {3, 7, 11}
    assert video["seed_index"].shape == (2, 4, 16, 58)


def test_joint_positional_embedding_shape():
    cfg = arch_config("ViT-B/16", positional_embedding="joint", num_frames=8)
    _, _, params = abstract_model(cfg)
    assert params["visual"]["positional_embedding"].shape == (8, 197, 768)


# Input errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, size, match",
    [
        (5, 32, "joint positional embedding was built for 4 frames, got 5"),
        (4, 48, "clips are 48x48, the model expects 32x32"),
    ],
)
def test_bad_clips_raise(tiny_config, frames, size, match):
    cfg = tiny_config.replace(positional_embedding="joint")
    _, _, params = abstract_model(cfg)
    clips = jax.ShapeDtypeStruct((2, frames, size, size, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((3, cfg.context_length), jnp.int32)
    apply = lambda p, c, t: VideoCLIP(cfg).apply({"params": p}, c, t)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(apply, params, clips, tokens)


# The tiny TC-CLIP, run for real -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny):
    """The float32 step on the tiny batch: ((loss, (logits, video)), grads), and the step."""
    cfg, params, clips, tokens, labels = tiny
    step = cross_entropy_step(VideoCLIP(cfg))
    return step(params, clips, tokens, labels), step


def norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in jax.tree.leaves(tree))))


def test_gradients_are_finite_and_reach_tc_parameters(tiny, tiny_run):
    cfg, _, _, tokens, _ = tiny
    (loss, (logits, _)), grads = tiny_run[0]
    assert logits.shape == (3, 3) and np.isfinite(float(loss))
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        assert np.isfinite(np.asarray(g)).all(), path
    assert norm(grads["prompt_learner"]["ctx"]) > 0
    assert norm(grads["prompt_generation_layer"]) > 0
    blocks = grads["visual"]["transformer"]
    for i in cfg.context_layers:
        assert norm(blocks[f"resblocks_{i - 1}"]["attn"]["local_global_bias_table"]) > 0
    for tower in ("visual", "transformer", "ln_final", "text_projection", "logit_scale"):
        assert norm(grads[tower]) > 0, tower

    # Token embedding: rows of the class names, SOT, "." and EOT learn something; the rows of
    # "a photo of a" (replaced by prompt vectors), of padding (after EOT, unseen under the
    # causal mask) and of unused ids get exactly zero.
    tokens = np.asarray(tokens)
    eot = tokens.argmax(axis=1)
    seen = {int(t) for row, e in zip(tokens, eot, strict=True) for t in (row[0], *row[5 : e + 1])}
    replaced = set(tokens[:, 1:5].ravel().tolist())
    assert not seen & replaced
    row_norms = np.linalg.norm(np.asarray(grads["token_embedding"]["embedding"]), axis=1)
    assert set(np.flatnonzero(row_norms).tolist()) == seen


def test_vision_gradient_ignores_the_video_conditioned_prompts(tiny, tiny_run):
    """VP reads the context tokens under stop-gradient: the vision tower's gradient is that of
    the video embedding alone, with every class embedding held constant."""
    cfg, params, clips, tokens, labels = tiny
    (_, (logits, _)), grads = tiny_run[0]
    model = VideoCLIP(cfg)

    def loss(visual):
        variables = {"params": {**params, "visual": visual}}
        video = model.apply(variables, clips, method="encode_video")
        text = model.apply(variables, tokens, method="encode_text")
        classes = model.apply(
            variables, text, jax.lax.stop_gradient(video), method="text_embeddings"
        )
        cos = jnp.einsum("BE,BCE->BC", video["video_embedding"], jax.lax.stop_gradient(classes))
        split_logits = jnp.exp(params["logit_scale"]) * cos
        log_probs = jax.nn.log_softmax(split_logits)
        return -jnp.mean(log_probs[jnp.arange(len(labels)), labels]), split_logits

    want, split_logits = jax.jit(jax.grad(loss, has_aux=True))(params["visual"])
    np.testing.assert_allclose(split_logits, logits, rtol=1e-5, atol=1e-5)
    flat_want = traverse_util.flatten_dict(want, sep="/")
    for path, g in traverse_util.flatten_dict(grads["visual"], sep="/").items():
        np.testing.assert_allclose(g, flat_want[path], rtol=1e-4, atol=1e-6, err_msg=path)


@pytest.mark.parametrize(
    "changes, scanned",
    [
        # Two blocks: no run of two alike (remat: plain nn.remat, which the second case also
        # runs on its unscanned blocks 3 and 6).
        pytest.param({}, False, marks=pytest.mark.slow),
        # Runs [1, 2] (plain blocks) and [4, 5] (context blocks, after the first summary
        # block 3) scanned; VP reads block 6, the last (one text layer: it is not scanned).
        (
            {"vision_layers": 6, "text_layers": 1, "vp_context_layer": 6, "tc_layers": (4, 5, 6)},
            True,
        ),  # fmt: skip
        ({"model": "vifi_clip", "vision_layers": 3}, True),  # blocks 1..2.
    ],
)
def test_scanned_and_remat_blocks_give_same_logits_intermediates_and_grads(tiny, changes, scanned):
    """In float64, so that only the order of floating-point operations may differ: the scanned
    vision blocks, with or without rematerialisation, against the unrolled stack (computed once
    for both; its summarising blocks run one FFN over frame and context tokens, `shared_ffn`,
    the others one per token set)."""
    cfg, _, clips, tokens, labels = tiny
    cfg = cfg.replace(**changes)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), random_params(cfg, 1))
        clips = jnp.asarray(clips, jnp.float64)
        model = VideoCLIP(cfg, jnp.float64)
        (_, (logits, video)), grads = cross_entropy_step(model)(params, clips, tokens, labels)
    for options in ({"remat": True}, {"scan": True}):
        with jax.enable_x64(True):
            variant = VideoCLIP(cfg, jnp.float64, **options)
            apply = lambda p, m=variant: m.apply({"params": p}, clips, tokens)
            assert ("scan[" in str(jax.make_jaxpr(apply)(params))) == scanned, options
            if not scanned and "scan" in options:
                continue  # nothing to scan: the very program of the unrolled stack
            (_, (logits_remat, video_remat)), grads_remat = cross_entropy_step(variant)(
                params, clips, tokens, labels
            )
        np.testing.assert_allclose(logits_remat, logits, rtol=1e-12, atol=1e-12)
        assert video_remat.keys() == video.keys()
        for key in ("seed_index", "assignment"):
            if key in video:
                np.testing.assert_array_equal(video_remat[key], video[key])
        np.testing.assert_allclose(video_remat["cls_attention"], video["cls_attention"], atol=1e-14)
        assert jax.tree.structure(grads_remat) == jax.tree.structure(grads)
        flat_remat = traverse_util.flatten_dict(grads_remat, sep="/")
        for path, g in traverse_util.flatten_dict(grads, sep="/").items():
            np.testing.assert_allclose(flat_remat[path], g, rtol=1e-9, atol=1e-12, err_msg=path)


def test_remat_keeps_fewer_activations(tiny_config):
    """The scanned, rematerialised vision stack needs less memory for a gradient step when
    activations dominate (as they do at 16 frames x 197 tokens)."""
    cfg = tiny_config.replace(
        vision_layers=6, text_layers=1, num_frames=8, image_resolution=64, context_tokens=16
    )
    clips = jnp.zeros((4, 8, 64, 64, 3))
    tokens = jnp.asarray(tokenize_prompts(CLASSNAMES, context_length=cfg.context_length))
    labels = jnp.array([0, 1, 2, 0])

    def temp_bytes(remat: bool) -> int:
        model = VideoCLIP(cfg, remat=remat)
        params = jax.eval_shape(model.init, jax.random.key(0), clips, tokens)["params"]
        step = cross_entropy_step(model).lower(params, clips, tokens, labels).compile()
        return step.memory_analysis().temp_size_in_bytes

    plain, remat = temp_bytes(False), temp_bytes(True)
    assert remat < 0.6 * plain, (remat, plain)


def test_bfloat16_compute_is_close_to_float32(tiny, tiny_run):
    cfg, params, clips, tokens, _ = tiny
    (_, (logits, video)), _ = tiny_run[0]
    model = VideoCLIP(cfg, dtype=jnp.bfloat16)
    abstract = jax.eval_shape(model.init, jax.random.key(0), clips, tokens)["params"]
    assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
    logits_bf16, video_bf16 = jax.jit(model.apply)({"params": params}, clips, tokens)
    assert logits_bf16.dtype == jnp.float32
    cos = jnp.sum(video_bf16["video_embedding"].astype(jnp.float32) * video["video_embedding"], -1)
    assert float(cos.min()) > 0.99
    # Logits are 100 x cosines: bfloat16's 8-bit mantissa gives errors of a few 0.1.
    np.testing.assert_allclose(logits_bf16, logits, atol=1.0)


def test_seeds_are_top_head_averaged_cls_attention(tiny, tiny_run):
    cfg = tiny[0]
    (_, (_, video)), _ = tiny_run[0]
    check_seed_selection(cfg, video)


def check_seed_selection(cfg: ModelConfig, video: dict) -> None:
    """Seeds of every summarising block are its top-n_s CLS attention, in descending order."""
    attention = np.asarray(video["cls_attention"])  # [B, L, T, P]
    seeds = np.asarray(video["seed_index"])  # [B, n_summary, T, n_s]
    assert attention.shape[1] == cfg.vision_layers
    assert seeds.shape[1] == len(cfg.summary_layers)
    for j, layer in enumerate(cfg.summary_layers):
        scores = attention[:, layer - 1]
        want = np.argsort(-scores, axis=-1, kind="stable")[..., : cfg.seeds_per_frame]
        np.testing.assert_array_equal(seeds[:, j], want, err_msg=f"block {layer}")
        picked = np.take_along_axis(scores, seeds[:, j], axis=-1)
        assert (np.diff(picked, axis=-1) < 0).all()


def test_video_outputs_do_not_depend_on_batch_composition(tiny, tiny_run):
    cfg, params, clips, tokens, labels = tiny
    ((_, (logits, video)), _), step = tiny_run
    other = jnp.asarray(np.random.default_rng(1).standard_normal(clips.shape[1:]), jnp.float32)
    shuffled = jnp.stack([clips[2], other, clips[0]])
    (_, (logits2, video2)), _ = step(params, shuffled, tokens, labels)
    for a, b in ((0, 2), (2, 0)):
        np.testing.assert_allclose(logits2[a], logits[b], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            video2["context_embeddings"][a], video["context_embeddings"][b], atol=1e-5
        )
        np.testing.assert_array_equal(video2["seed_index"][a], video["seed_index"][b])


def test_light_variant_tiny(tiny_config, tiny):
    """TC-CLIP§ on 3 blocks with context at block 2: bias table at block 2 only; seeds are
    selected in block 1 (for block 2) and block 3 (for VP)."""
    cfg = tiny_config.replace(vision_layers=3, text_layers=3, tc_layers=(2,))
    assert cfg.context_layers == (2,)
    assert cfg.summary_layers == (1, 3)
    _, _, clips, tokens, _ = tiny
    model = VideoCLIP(cfg)
    params = random_params(cfg, 1)
    blocks = params["visual"]["transformer"]
    with_bias = ["local_global_bias_table" in blocks[f"resblocks_{i}"]["attn"] for i in range(3)]
    assert with_bias == [False, True, False]
    run = lambda p: model.apply({"params": p}, clips, tokens, return_attention=True)
    _, video = jax.jit(run)(params)
    check_seed_selection(cfg, video)


def test_first_block_never_has_a_bias_table(tiny):
    _, params, *_ = tiny
    blocks = params["visual"]["transformer"]
    assert "local_global_bias_table" not in blocks["resblocks_0"]["attn"]
    assert blocks["resblocks_1"]["attn"]["local_global_bias_table"].shape == (2, 1, 2)


# ViFi-CLIP --------------------------------------------------------------------------------


def test_vifi_clip_is_frame_averaged_clip(tiny_config, tiny):
    cfg = tiny_config.replace(model="vifi_clip")
    _, _, clips, tokens, _ = tiny
    model = VideoCLIP(cfg)
    variables = {"params": random_params(cfg, 2)}
    run = jax.jit(lambda c: model.apply(variables, c, tokens))
    logits, video = run(clips)

    def encode(images):
        image = model.apply(variables, images, method="encode_image")
        return image, model.apply(variables, tokens, method="encode_text")["text_embedding"]

    frames, text = jax.jit(encode)(clips.reshape(-1, *clips.shape[2:]))
    mean = np.asarray(frames).reshape(*clips.shape[:2], -1).mean(axis=1)
    want = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(video["video_embedding"], want, rtol=1e-5, atol=1e-6)
    scale = np.exp(float(variables["params"]["logit_scale"]))
    np.testing.assert_allclose(logits, scale * want @ np.asarray(text).T, rtol=1e-4, atol=1e-4)

    other = jnp.asarray(np.random.default_rng(3).standard_normal(clips.shape[1:]), jnp.float32)
    logits2, _ = run(jnp.stack([clips[2], other, clips[0]]))
    np.testing.assert_allclose(logits2[0], logits[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits2[2], logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "dtype, setting, want",
    [
        (jnp.float32, None, "HIGHEST"),  # float32 runs multiply as the published float32 code.
        (jnp.bfloat16, None, "DEFAULT"),  # bfloat16 keeps the fast path.
        (jnp.float32, "default", "DEFAULT"),
        (jnp.bfloat16, "high", "HIGH"),
    ],
)
def test_every_matmul_of_the_train_step_has_the_config_precision(tiny, dtype, setting, want):
    """Forward and backward, every product: attention, dense layers, the CLS row that selects
    seeds, VP and the logits; but the bipartite similarity of each matching step, which decides
    merges and carries no gradient: always at the highest precision."""
    cfg, params, clips, tokens, labels = tiny
    model = VideoCLIP(cfg.replace(matmul_precision=setting), dtype)
    jaxpr = str(jax.make_jaxpr(cross_entropy_step(model))(params, clips, tokens, labels))
    precisions = re.findall(r"precision=(None|\(Precision\.\w+, Precision\.\w+\))", jaxpr)
    count = jaxpr.count("dot_general[")
    assert count > 50
    highest = "(Precision.HIGHEST, Precision.HIGHEST)"
    seeds = cfg.num_frames * cfg.seeds_per_frame
    steps = len(merge_schedule(seeds, cfg.context_tokens, cfg.merge_r))
    similarities = steps * len(cfg.summary_layers)  # forward only: no gradient flows there
    if want == "DEFAULT":  # the jaxpr omits a default precision.
        assert precisions == [highest] * similarities
    else:
        assert len(precisions) == count
        chosen = f"(Precision.{want}, Precision.{want})"
        assert precisions.count(chosen) == count - (0 if want == "HIGHEST" else similarities)
        assert set(precisions) == {chosen, highest}
