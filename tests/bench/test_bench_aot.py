"""The ahead-of-time check compiles the trainer's step for a TPU topology on this CPU host (when
libtpu is installed): it fits, FSDP shards it, and every matmul has the model's precision."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tcclip_jax.bench import ahead_of_time
from tcclip_jax.ops import platform
from tcclip_jax.ops.token_merging import merge_to_k
from tcclip_jax.train.build import video_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason=f"needs libtpu: {ahead_of_time.INSTALL.format(version='<jax version>')}"
)


def demo_config(**changes):
    """configs/demo.py:ci (a tiny TC-CLIP in float32) with `changes` (dotted names)."""
    spec = importlib.util.spec_from_file_location("demo_config", f"{REPO}/configs/demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("ci")
    with config.unlocked():
        for name, value in changes.items():
            *parents, leaf = name.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


@pytest.fixture(scope="module")
def fsdp_step():
    """(builder, compiled step, the platforms its dense layers were traced for)."""
    config = demo_config(**{"sharding.fsdp": True, "sharding.fsdp_min_size": 0})
    devices = ahead_of_time.tpu_devices("v5e:2x2")
    builder = ahead_of_time.StepBuilder(config, devices, num_classes=4)
    platforms, traced_for = [], platform.traced_for
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(platform, "traced_for", lambda p: platforms.append(p) or traced_for(p))
        result = builder.compile(per_chip_batch=1)
    return builder, result, platforms


@needs_libtpu
def test_tiny_fsdp_step_compiles_for_tpu_and_fits(fsdp_step):
    builder, result, platforms = fsdp_step
    # Traced on this CPU host for the TPU: dense layers as written, not folded for XLA:CPU.
    assert platforms and set(platforms) == {"tpu"}
    _, figures = ahead_of_time.chip_figures(builder.devices)
    assert result.chips == 4 and builder.model.scan and builder.model.remat  # TPU defaults
    assert 0 < result.hbm_used < figures.hbm_bytes and result.fits(figures)
    assert result.census["all-gather"] > 0 and result.census["reduce-scatter"] > 0
    assert result.model_flops > 0 and result.roofline_seconds(figures) > 0
    # HBM traffic counted from the program's memory spaces, with XLA's own count beside it.
    assert result.hbm_traffic > 0 and result.hbm_bytes_accessed > 0
    report = ahead_of_time.describe(result, "TPU v5 lite", figures)
    assert (
        f"{result.hbm_traffic / 1e9:.1f} GB HBM traffic (compiled program, loops per trip; "
        f"XLA's bytes accessed {result.hbm_bytes_accessed / 1e9:.1f} GB)"
    ) in report
    # TC's seeds and context tokens are picked and merged without sorts, gathers or scatters
    # (TC's matching kernel, the default on TPUs): none left from the vision tower's files.
    places = {p for counts in result.sources.values() for p in counts}
    assert not any(p.startswith(("token_merging.py", "vision.py")) for p in places), places
    # TC's attention is its Pallas kernel (the TPU default), forward and backward, split over
    # the 4 chips inside the step's mesh (XLA refuses to partition a Mosaic kernel itself).
    assert "tc_attention_fwd" in result.hlo and "tc_attention_bwd" in result.hlo


@needs_libtpu
def test_float32_model_multiplies_at_highest_precision_in_the_tpu_program(fsdp_step):
    """A float32 model (the config's default precision) gets full float32 products on the TPU:
    no matmul of the compiled program runs as one bfloat16 pass."""
    _, result, _ = fsdp_step
    products = re.findall(r"= \S+ (?:convolution|dot)\(.*", result.hlo)
    assert len(products) > 20
    for line in products:
        assert "operand_precision={highest,highest}" in line, line[:200]


@needs_libtpu
def test_eval_step_compiles_for_tpu_with_the_test_views(fsdp_step):
    """The evaluator's own step (`evaluation.accuracy.eval_programs`) for the same slice: every
    test view of one video per chip, FSDP-sharded weights gathered where they are used."""
    builder, train, _ = fsdp_step
    result = builder.compile_eval(videos_per_chip=1)
    _, figures = ahead_of_time.chip_figures(builder.devices)
    data = builder.config.data
    assert result.name == "eval step"
    assert result.unit == f"videos of {data.test_clips * data.test_crops} views"
    assert result.fits(figures) and result.census["all-gather"] > 0
    assert result.census["reduce-scatter"] == 0  # no gradients
    # the frames of every view arrive as uint8, sharded over the 4 chips: 1 video each
    views = data.test_clips * data.test_crops
    size, frames = builder.model_config.image_resolution, builder.model_config.num_frames
    assert f"u8[1,{views},{frames},{size},{size},3]" in result.hlo
    # a forward pass: fewer FLOPs than the train step of as many clips per chip
    assert 0 < result.model_flops < train.model_flops * views
    assert "eval step: 1 x 1 videos of" in ahead_of_time.describe(result, "TPU v5 lite", figures)
    assert "tc_attention_fwd" in result.hlo and "tc_attention_bwd" not in result.hlo


@needs_libtpu
@pytest.mark.parametrize("name, chips", [("v4-8", 4), ("v5p-8", 4), ("v5e-8", 8), ("v5e:2x2", 4)])
def test_slices_have_a_device_per_chip(name, chips):
    """As JAX on a TPU VM sees them: a v4-8 or v5p-8 is 4 chips of two TensorCores, driven as
    one device each (megacore), so each device has the chip's HBM."""
    devices = ahead_of_time.tpu_devices(name)
    assert len(devices) == chips
    assert len({tuple(d.coords) for d in devices}) == chips


@pytest.mark.parametrize("platform_name, default", [("cpu", False), ("tpu", True), ("gpu", True)])
def test_remat_and_scan_default_to_on_except_on_cpu(platform_name, default):
    config = demo_config()
    model = video_model(config, ahead_of_time.model_config(config), platform_name)
    assert (model.remat, model.scan) == (default, default)
    forced = video_model(demo_config(remat=False, scan_blocks=True), model.config, platform_name)
    assert (forced.remat, forced.scan) == (False, True)


def test_without_libtpu_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ahead_of_time.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ahead_of_time.AotError, match=r'pip install "tcclip-jax\[tpu\]"'):
        ahead_of_time.tpu_devices("v5e:2x2")


def test_census_counts_async_and_fused_collectives():
    hlo = "\n".join(
        [
            "  %ag = f32[8]{0} all-gather-start(f32[2]{0} %p), dimensions={0}",
            "  %d = f32[8]{0} all-gather-done(%ag)",
            "  ROOT %s = (f32[4]{0}, s32[4]{0}) sort(f32[4]{0} %a, s32[4]{0} %b)",
            "  %w = (s32[], f32[2]{0:T(256)}) while((s32[], f32[2]) %t), body=%b",
            "  %f = f32[4,8]{1,0} fusion(f32[4,32]{1,0} %g), calls=%all-reduce-scatter.1",
        ]
    )
    counts = ahead_of_time.census(hlo)
    assert counts["all-gather"] == counts["reduce-scatter"] == counts["sort"] == 1
    assert (counts["while"], counts["scatter"], counts["all-reduce"]) == (1, 0, 0)


@pytest.mark.parametrize("form, merged", [("gather", True), ("dense", False)])
def test_op_sources_name_where_sorts_gathers_and_scatters_come_from(form, merged):
    """Read from the stack frames XLA records in the compiled HLO (here for the CPU)."""
    x = jnp.ones((2, 40, 8))
    loss = lambda xx: merge_to_k(xx, 6, 9, form=form)[0].sum()
    hlo = jax.jit(jax.value_and_grad(loss)).lower(x).compile().as_text()
    sources = ahead_of_time.op_sources(hlo)
    assert set(sources) == {"sort", "gather", "scatter"}
    counts = ahead_of_time.census(hlo)
    for op, places in sources.items():
        assert sum(places.values()) == counts[op], op
    if merged:
        assert sources["sort"] == {"token_merging.py:_match_one": counts["sort"]} != {}
        assert "token_merging.py:_match_one" in ahead_of_time.origins(sources)
    else:
        assert ahead_of_time.origins(sources) == "none"


HAVE_CUDA_PLUGIN = importlib.util.find_spec("jax_plugins.xla_cuda13") is not None


@pytest.mark.skipif(not HAVE_CUDA_PLUGIN, reason='needs pip install "tcclip-jax[cuda-aot]"')
def test_the_command_compiles_for_nvidia_gpus_without_one():
    """`--gpu h100:2`: the demo's bfloat16 step for two H100s of one host, compiled by XLA's GPU
    compiler on this CPU host; cuDNN's attention cannot be traced without a GPU, so the
    explicit attention is used and the log says so."""
    res = subprocess.run(
        [
            sys.executable, "-m", "tcclip_jax.aot", "--config", "configs/demo.py:ci",
            "--classes", "4", "--gpu", "h100:2", "--config.dtype=bfloat16", "--noeval",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "h100:2: 2 x NVIDIA H100 80GB HBM3" in out
    assert "attention explicit, TC summarisation dense" in out
    assert "cuDNN attention is not available here" in res.stderr
    assert re.search(r"total \d+\.\d+ of 75 GiB HBM: fits", out), out
    assert "HBM traffic not reported by this compiler" in out
    assert "sort, gather, scatter by origin:" in out and "token_merging.py" not in out


def test_unknown_gpu_is_one_line():
    res = subprocess.run(
        [sys.executable, "-m", "tcclip_jax.aot", "--config", "configs/demo.py:ci", "--gpu", "v100"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: --gpu v100: unknown GPU 'v100'; known: a100, h100, h200, b200"
    )


@needs_libtpu
def test_a_32_chip_slice_compiles_the_eval_step_at_a_rounded_up_batch(capsys):
    """v5e:4x8 (32 chips) with `config.eval.batch_size` 8: the evaluator's batch, rounded up to
    one video per chip (`specs.eval_batch_size`), is what the check compiles."""
    config = demo_config(batch_size=32, **{"eval.batch_size": 8})
    ahead_of_time.run(config, "v5e:4x8", num_classes=4, evaluation=True)
    out = capsys.readouterr().out
    assert "config.eval.batch_size 8 rounded up to 32 videos per evaluation step" in out
    assert re.search(r"eval step: 1 x 1 videos of \d views", out), out
