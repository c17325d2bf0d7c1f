"""Times the demo's training command in a same-run A/B comparison, so a regression is a ratio.

  python -m tcclip_jax.bench.demo --epochs 6 --against 30c7782     # this checkout vs a commit
  python -m tcclip_jax.bench.demo --epochs 6 --env TCCLIP_MALLOC=1  # vs the same with a setting
  python -m tcclip_jax.bench.demo --epochs 0 --rounds 1 --full       # the whole demo, with evals

Runs `python -m tcclip_jax.train --config configs/demo.py` (A: this checkout) and the same command
in a temporary git worktree of `--against` or with `--env` set (B), alternately, `--rounds`
times each, on one synthetic dataset generated beforehand (generation is not timed). Every
run is a fresh process; wall, user and system time, voluntary context switches and peak
memory come from the kernel's accounting of that process (`os.wait4`). Prints each run, then
the ratios of the best runs (B / A: above 1, A is faster). Without `--full` the runs skip
validation (`eval.every_epochs=0`); the final test and the export are always included.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from tcclip_jax.runtime import cli
from tcclip_jax.runtime.errors import RunError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Run:
    wall: float
    user: float
    system: float
    voluntary_switches: int
    max_rss_mib: float

    def line(self) -> str:
        return (
            f"wall {self.wall:7.1f} s  user {self.user:7.1f} s  sys {self.system:6.1f} s  "
            f"voluntary switches {self.voluntary_switches / 1e6:5.2f} M  "
            f"max RSS {self.max_rss_mib:6.0f} MiB"
        )


def timed(command: Sequence[str], cwd: str, env: dict[str, str], log: str) -> Run:
    """Run `command` to the end (its output to `log`); its own resource usage."""
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise RunError(f"{' '.join(command)} exited {proc.returncode}:\n{tail}")
    return Run(wall, usage.ru_utime, usage.ru_stime, usage.ru_nvcsw, usage.ru_maxrss / 1024)


def demo_command(repo: str, workdir: str, data_root: str, epochs: int, full: bool) -> list[str]:
    command = [
        sys.executable, "-m", "tcclip_jax.train", "--config", os.path.join(repo, "configs/demo.py"),
        "--workdir", workdir, f"--config.data.root={data_root}", "--config.progress_bar=False",
    ]  # fmt: skip
    if epochs:
        command.append(f"--config.num_epochs={epochs}")
    if not full:
        command.append("--config.eval.every_epochs=0")
    return command


def _environment(repo: str, extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": repo}
    env.setdefault("JAX_PLATFORMS", "cpu")
    return {**env, **extra}


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--env {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


def _worktree(revision: str, directory: str) -> str:
    path = os.path.join(directory, "against")
    res = subprocess.run(
        ["git", "-C", REPO, "worktree", "add", "--detach", path, revision],
        capture_output=True, text=True,
    )  # fmt: skip
    if res.returncode:
        raise UserError(f"--against {revision}: {res.stderr.strip().splitlines()[-1]}")
    return path


def compare(args: argparse.Namespace) -> None:
    extra = _parse_env(args.env)
    if not args.against and not extra:
        raise UserError("say what to compare against: --against REVISION and/or --env NAME=VALUE")
    scratch = tempfile.mkdtemp(prefix="tcclip_bench_demo_")
    other = None
    try:
        other = _worktree(args.against, scratch) if args.against else REPO
        data = os.path.join(scratch, "data")
        # The dataset, generated once by this checkout's demo (a dry run prepares the data).
        timed(
            demo_command(REPO, os.path.join(scratch, "prepare"), data, 0, False) + ["--dry_run"],
            REPO, _environment(REPO, {}), os.path.join(scratch, "prepare.log"),
        )  # fmt: skip
        sides = {
            "A": (REPO, _environment(REPO, {})),
            "B": (other, _environment(other, extra)),
        }
        runs: dict[str, list[Run]] = {"A": [], "B": []}
        what_b = " ".join([f"at {args.against}"] * bool(args.against) + args.env)
        print(f"A: this checkout; B: {what_b}; {args.epochs or 'all'} epochs", flush=True)
        for r in range(args.rounds):
            for side, (repo, env) in sides.items():
                workdir = os.path.join(scratch, f"{side}{r}")
                command = demo_command(repo, workdir, data, args.epochs, args.full)
                run = timed(command, repo, env, workdir + ".log")
                runs[side].append(run)
                shutil.rmtree(workdir, ignore_errors=True)
                print(f"round {r + 1} {side}: {run.line()}", flush=True)
        a = min(runs["A"], key=lambda run: run.wall)
        b = min(runs["B"], key=lambda run: run.wall)
        print(
            f"B / A (best runs): wall x{b.wall / a.wall:.2f}, CPU time "
            f"x{(b.user + b.system) / (a.user + a.system):.2f}, voluntary switches "
            f"x{b.voluntary_switches / max(a.voluntary_switches, 1):.2f}",
            flush=True,
        )
    finally:
        if other not in (None, REPO):
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", other],
                           capture_output=True)  # fmt: skip
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m tcclip_jax.bench.demo", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--epochs", type=int, default=6, help="epochs per run; 0: the config's (80)")
    p.add_argument("--against", help="a git revision to run as B (in a temporary worktree)")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE set for B's runs")
    p.add_argument("--rounds", type=int, default=2, help="alternations of A and B")
    p.add_argument("--full", action="store_true", help="keep the config's validation epochs")
    p.add_argument("--debug", action="store_true", help=cli.DEBUG_HELP)
    args = p.parse_args(argv)
    sys.exit(cli.guarded(lambda: compare(args), args.debug))


if __name__ == "__main__":
    main()
