"""`python -m tcclip_jax.data.bench`'s slice table: the roofline steps it holds are docs/tpu.md's,
and what a host needs follows from them and the measured rates."""

from __future__ import annotations

import os
import re

import pytest

from tcclip_jax.data import bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTOCOL_ROWS = {"few-shot": "few-shot HMDB-51 K=16 (64)", "zero-shot": "zero-shot K-400 (256)"}


def _tpu_md_roofline(protocol_row: str, slice_name: str) -> float:
    with open(os.path.join(REPO, "docs", "tpu.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 8 and cells[0] == protocol_row and cells[1] == slice_name:
                return float(re.fullmatch(r"(\d+) ms", cells[6]).group(1)) / 1e3
    raise AssertionError(f"no row {protocol_row} / {slice_name} in docs/tpu.md")


@pytest.mark.parametrize("name", [n for n in bench.SLICES if n != "8xH100"])
def test_tpu_slices_take_docs_tpu_md_roofline_steps(name):
    sl = bench.SLICES[name]
    protocol = PROTOCOL_ROWS[sl.workload.split(" (")[0]]
    assert sl.step_s == _tpu_md_roofline(protocol, name.split()[0])
    assert f"({sl.clips} clips)" in sl.workload and protocol.endswith(f"({sl.clips})")


def test_what_a_host_needs():
    sl = bench.SLICES["v5e-8"]
    assert round(sl.clips_per_second_per_host) == 719  # 64 clips in 89 ms
    h100 = bench.SLICES["8xH100"]  # 64 clips of 1.659 TFLOP on 8 x 989 TFLOP/s
    assert h100.step_s == pytest.approx(64 * 1.659e12 / (8 * 989e12))
    table = bench.needs_table([sl, h100], per_worker=20.0, per_core=25.0, source="videos")
    rows = [r.split("|")[1:-1] for r in table.splitlines() if r.startswith("| v5e-8")]
    assert [c.strip() for c in rows[0][3:]] == ["719", "36", "29"]  # ceil(719/20), ceil(719/25)
    assert "| 8xH100" in table and "FLOPs at the bf16 peak" in table
