"""The golden training step, as a user would meet it: from a fixture made by shared/golden's
training recipe, write the user's files (OpenAI-format CLIP, released-format TC-CLIP / ViFi-CLIP),
convert them with the converter CLI, compute the batch loss and the gradient of every trainable
tensor with the trainer's own `train.step.loss_and_grads`, and lay the gradients out as the
released checkpoint with the exporter (`weights.pytorch.released_state_dict`).

Used by tests/train/test_train_golden.py (float64), and as a script that measures the gradient error
of a training precision against float64, per tensor group:

  python tests/helpers/train_golden.py --dtype bfloat16 float32 [--fixture F.npz]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib

import golden_recipe
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = "tests/fixtures/tcclip_small_train.npz"
ENV = "TCCLIP_TRAIN_GOLDEN"  # another fixture made by the same recipe.
# Deeper fixtures run rematerialised (`VideoCLIP(remat=True)`: gradients equal the unrolled
# stack's, tests/models/test_models_video_clip.py): the unrolled float64 step of the full-depth
# fixture (12 + 12 blocks, 16 frames, batch 2) needs 21 GB (XLA's memory analysis: 18.8 GB of
# temporaries), the rematerialised one 8.6 GB peak.
REMAT_FROM_BLOCKS = 5

# Converter flags for the fields of a fixture's `case` (our names and the published config's).
_FLAGS = {
    "model": "--model",
    "num_frames": "--num-frames",
    "positional_embedding": "--positional-embedding",
    "positional_embedding_type": "--positional-embedding",
    "context_tokens": "--context-tokens",
    "context_token_k": "--context-tokens",
    "k": "--context-tokens",
    "seed_ratio": "--seed-ratio",
    "seed_token_a": "--seed-ratio",
    "alpha": "--seed-ratio",
    "merge_r": "--merge-r",
    "tome_r": "--merge-r",
    "r": "--merge-r",
    "context_length": "--context-length",
}
# Fields that describe the data, the seeds, the run (training-run fixtures) or what the weights
# already say.
_OTHER = {
    "batch", "clip_seed", "ft_seed", "video_seed", "proj_seed", "classnames", "labels",
    "label_smoothing", "vision_layers", "text_layers", "accumulation_steps", "micro_per_epoch",
    "epochs", "warmup_epochs", "lr", "lr_min", "weight_decay", "betas", "eps",
    "labels_per_micro",
}  # fmt: skip


def fixture_path() -> str:
    return os.environ.get(ENV) or os.path.join(REPO, FIXTURE)


def converter_flags(case: dict) -> list[str]:
    unknown = sorted(set(case) - set(_FLAGS) - _OTHER)
    if unknown:
        raise ValueError(f"fixture case has fields this check does not know: {unknown}")
    flags = []
    for field, flag in _FLAGS.items():
        if field in case:
            flags += [flag, str(case[field])]
    return flags


def direction(proj_seed: int, key: str, j: int, shape) -> np.ndarray:
    """Direction j of the released tensor `module.{key}` (shared/golden/README.md)."""
    rng = np.random.default_rng([proj_seed, zlib.crc32(key.encode()), j])
    return np.asarray(rng.standard_normal(shape))


def convert_fixture(fixture: dict, directory: str) -> str:
    """The user's files in `directory`, converted by the CLI; returns the checkpoint directory."""
    clip_path = os.path.join(directory, "clip.pt")
    tcclip_path = os.path.join(directory, "finetuned.pth")
    golden_recipe.write_torch_files(fixture, clip_path, tcclip_path)
    out = os.path.join(directory, "converted")
    res = subprocess.run(
        [
            sys.executable, "tools/convert_torch_weights.py", "--clip", clip_path,
            "--tcclip", tcclip_path, *converter_flags(fixture["case"]), "--output", out,
        ],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    if res.returncode:
        raise RuntimeError(res.stderr)
    return out


def remat_for(fixture: dict) -> bool:
    """Whether the step of `fixture` runs rematerialised (see REMAT_FROM_BLOCKS)."""
    return fixture["case"].get("vision_layers", 0) >= REMAT_FROM_BLOCKS


def compute(checkpoint: str, fixture: dict, dtype_name: str, remat: bool = False) -> dict:
    """{"loss": float, "module.*": gradient in the released layout} for compute `dtype_name`
    (float32 master weights; float64: everything float64), the vision blocks rematerialised with
    `remat`. Call with x64 set for float64."""
    import jax
    import jax.numpy as jnp

    from tcclip_jax.models import VideoCLIP
    from tcclip_jax.models.params import split_frozen
    from tcclip_jax.models.prompts import prompt_tokens
    from tcclip_jax.train.losses import smooth_labels
    from tcclip_jax.train.step import loss_and_grads
    from tcclip_jax.weights.checkpoint import load_model
    from tcclip_jax.weights.pytorch import released_state_dict

    dtype = jnp.dtype(dtype_name)
    master = jnp.float64 if dtype == jnp.float64 else jnp.float32
    case = fixture["case"]
    cfg, params = load_model(checkpoint)
    params = jax.tree.map(lambda p: jnp.asarray(p, master), params)
    res = cfg.image_resolution
    shape = (case["batch"], case["num_frames"], 3, res, res)
    clips = golden_recipe.clips(case["video_seed"], shape).transpose(0, 1, 3, 4, 2)
    tokens = prompt_tokens(cfg, case["classnames"])
    targets = smooth_labels(
        jnp.asarray(case["labels"]), len(case["classnames"]), case["label_smoothing"], master
    )
    model = VideoCLIP(cfg, dtype=dtype, remat=remat)
    trainable, frozen = split_frozen(params)
    step = jax.jit(lambda t, f, c, y, k: loss_and_grads(model, t, f, c, y, k))
    loss, grads = step(trainable, frozen, jnp.asarray(clips, master), targets, tokens)
    out = {k: np.asarray(v, np.float64) for k, v in released_state_dict(cfg, grads).items()}
    out["loss"] = np.float64(loss)
    return out


def _worker(args) -> None:
    if args.dtype[0] == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    fixture = golden_recipe.load_fixture(args.fixture)
    out = compute(args.checkpoint, fixture, args.dtype[0], remat_for(fixture))
    np.savez(args.output, **out)


def run_worker(checkpoint: str, fixture: str, dtype: str, output: str) -> dict:
    """`compute` in a fresh process (x64 is process-wide); returns its arrays."""
    res = subprocess.run(
        [
            sys.executable, os.path.abspath(__file__), "--worker", "--checkpoint", checkpoint,
            "--fixture", fixture, "--dtype", dtype, "--output", output,
        ],
        capture_output=True, text=True, cwd=REPO, timeout=1200,
    )  # fmt: skip
    if res.returncode:
        raise RuntimeError(res.stderr[-4000:])
    with np.load(output) as d:
        return {k: d[k] for k in d.files}


def norms_and_projections(grads: dict, fixture: dict) -> tuple[np.ndarray, np.ndarray]:
    """[P, 4]: each gradient's norm and its 3 projections, ours and the fixture's (grad_names
    order; `fixture["grad_names"]` parsed)."""
    seed, ours = fixture["case"]["proj_seed"], []
    for name in fixture["grad_names"]:
        g, key = grads[name], name.removeprefix("module.")
        ours.append([np.linalg.norm(g)] + [
            np.sum(g * direction(seed, key, j, g.shape)) for j in range(3)
        ])  # fmt: skip
    return np.array(ours), np.concatenate([fixture["grad_norm"][:, None], fixture["grad_proj"]], 1)


def deviation(grads: dict, fixture: dict) -> dict:
    """Largest deviations from the fixture: loss and full gradients (absolute), norms and
    projections (relative; absolute where the fixture's is below 1e-12: k_proj biases, whose
    gradient is zero but for rounding, as softmax ignores a constant shift of the keys)."""
    ours, want = norms_and_projections(grads, fixture)
    rel = np.abs(ours - want) / np.where(np.abs(want) > 1e-12, np.abs(want), 1.0)
    full = [np.abs(grads[k[6:]] - fixture[k]).max() for k in fixture if k.startswith("grad__")]
    return {
        "loss": float(abs(grads["loss"] - fixture["loss"])),
        "norm_rel": float(rel[:, 0].max()),
        "proj_rel": float(rel[:, 1:].max()),
        "full_abs": float(max(full, default=0.0)),
    }


def group(name: str) -> str:
    """The tensor group of a released gradient name, for the precision report."""
    if "prompt_learner" in name or "prompt_generation_layer" in name:
        return "prompt/VP"
    return "vision" if ".image_encoder." in name else "text"


def _report(args) -> None:
    fixture = golden_recipe.load_fixture(args.fixture)
    with tempfile.TemporaryDirectory() as d:
        ckpt = convert_fixture(fixture, d)
        ref = run_worker(ckpt, args.fixture, "float64", os.path.join(d, "float64.npz"))
        runs = {
            t: run_worker(ckpt, args.fixture, t, os.path.join(d, f"{t}.npz")) for t in args.dtype
        }
    names = fixture["grad_names"] = json.loads(str(fixture["grad_names"]))
    print(f"float64 against the fixture: {json.dumps(deviation(ref, fixture))}")
    print(
        f"fixture {args.fixture}: float64 loss {ref['loss']:.15f} (fixture {fixture['loss']:.15f})"
    )
    print("relative gradient error against float64: ||g - g64|| / ||g64|| per group; worst tensor")
    for dtype, got in runs.items():
        print(f"{dtype} compute (float32 master weights): loss {got['loss']:.6f}, "
              f"relative error {abs(got['loss'] - ref['loss']) / ref['loss']:.2e}")  # fmt: skip
        for g in ("vision", "text", "prompt/VP"):
            members = [n for n in names if group(n) == g]
            if not members:
                continue
            diff = sum(np.sum((got[n] - ref[n]) ** 2) for n in members) ** 0.5
            norm = sum(np.sum(ref[n] ** 2) for n in members) ** 0.5
            # Tensors whose float64 gradient is zero but for rounding (k_proj biases: softmax
            # ignores a constant key shift) have no meaningful relative error.
            rel = {
                n: np.linalg.norm(got[n] - ref[n]) / np.linalg.norm(ref[n])
                for n in members
                if np.linalg.norm(ref[n]) > 1e-9 * norm
            }
            worst = max(rel, key=rel.get)
            print(f"  {g:10s} {diff / norm:.2e}   worst {rel[worst]:.2e} ({worst})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fixture", default=fixture_path())
    p.add_argument("--dtype", nargs="+", default=["bfloat16"], help="compute dtypes to measure")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
    else:
        _report(args)


if __name__ == "__main__":
    main()
