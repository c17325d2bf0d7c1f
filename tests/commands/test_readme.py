"""The README's commands work as written: its Python examples run, every module and tool it
names exists and answers --help. (.ci/run also runs the README's demo command.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(REPO, "README.md")) as f:
    README = f.read()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _needs_download(block: str) -> bool:
    """Blocks that need released weights or datasets a fresh clone does not have."""
    return any(s in block for s in ("ckpt/", "/data/", "runs/fs", "ViT-B-16.pt"))


@pytest.mark.parametrize("block", [b for b in _blocks("python") if not _needs_download(b)])
def test_python_examples_run(block, tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]


def _commands() -> set[tuple[str, str]]:
    cmds = set()
    for block in _blocks("bash"):
        for m in re.finditer(r"python (-m (tcclip_jax[\w.]*)|(tools/\w+\.py))", block):
            cmds.add(("module", m.group(2)) if m.group(2) else ("script", m.group(3)))
    return cmds


def test_readme_names_the_main_commands():
    names = {n for _, n in _commands()}
    for required in ("tcclip_jax.train", "tcclip_jax.evaluate", "tcclip_jax.predict",
                     "tools/convert_torch_weights.py"):  # fmt: skip
        assert required in names
    assert "python -m pytest" in README


@pytest.mark.parametrize("kind, name", sorted(_commands()))
def test_readme_commands_answer_help(kind, name):
    argv = ["-m", name] if kind == "module" else [os.path.join(REPO, name)]
    res = subprocess.run(
        [sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    out = res.stdout + res.stderr
    # absl's --help exits with status 1 after printing the flags; argparse with 0.
    assert res.returncode in (0, 1) and "Traceback" not in out, out[-3000:]
    # argparse prints "usage"; absl the module's docstring, then where the full list of flags is.
    assert "usage" in out.lower() or "--workdir" in out or "--helpfull" in out
