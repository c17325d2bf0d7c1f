"""Packed ArrayRecord datasets read back through tfds.data_source give the file path's clips."""

import glob
import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from data_helpers import frame_index, small_config, write_grey_dataset

from tcclip_jax.data import pipeline
from tcclip_jax.data.classes import AnnotationError

LENGTHS = [30, 12, 25, 40, 7, 18]
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_tool():
    path = os.path.join(ROOT_DIR, "tools", "build_tfds_dataset.py")
    spec = importlib.util.spec_from_file_location("build_tfds_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The grey dataset, packed with both storages by the command-line tool."""
    root = str(tmp_path_factory.mktemp("videos"))
    train = write_grey_dataset(root, LENGTHS)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tool = load_tool()
    for storage in ("frames", "video"):
        argv = [
            f"--name=grey_{storage}", f"--root={root}", f"--split=train={train}",
            f"--split=val={train}", f"--data-dir={data_dir}", f"--storage={storage}",
            "--resize-size=36",
        ]  # fmt: skip
        assert tool.main(argv) == 0
    return root, data_dir


def tfds_config(root, data_dir, storage, **overrides):
    return small_config(
        root,
        format="tfds",
        tfds_name=f"tcclip_videos/grey_{storage}",
        tfds_dir=data_dir,
        **overrides,
    )


def batches(it, n):
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def test_video_storage_gives_identical_clips(packed):
    root, data_dir = packed
    files = batches(pipeline.create_train_iterator(small_config(root), batch_size=4, seed=4), 3)
    packed_ = batches(
        pipeline.create_train_iterator(tfds_config(root, data_dir, "video"), batch_size=4, seed=4),
        3,
    )
    for a, b in zip(files, packed_, strict=True):
        np.testing.assert_array_equal(a["video"], b["video"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_jpeg_frame_storage_gives_the_same_clips_up_to_jpeg_loss(packed):
    root, data_dir = packed
    files = batches(pipeline.create_train_iterator(small_config(root), batch_size=6, seed=8), 2)
    cfg = tfds_config(root, data_dir, "frames")
    packed_ = batches(pipeline.create_train_iterator(cfg, batch_size=6, seed=8), 2)
    for a, b in zip(files, packed_, strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
        diff = np.abs(a["video"].astype(int) - b["video"])
        assert diff.mean() < 1.0 and diff.max() <= 6
        frames_a, frames_b = a["video"].reshape(-1, 32, 32, 3), b["video"].reshape(-1, 32, 32, 3)
        assert [frame_index(f) for f in frames_a] == [frame_index(f) for f in frames_b]
    evaluated = list(pipeline.create_eval_dataset(cfg, batch_size=4))
    reference = list(pipeline.create_eval_dataset(small_config(root), batch_size=4))
    for a, b in zip(reference, evaluated, strict=True):
        np.testing.assert_array_equal(a["index"], b["index"])
        for va, vb in zip(
            a["video"].reshape(-1, 32, 32, 3), b["video"].reshape(-1, 32, 32, 3), strict=True
        ):
            assert frame_index(va) == frame_index(vb)


def test_packed_dataset_knows_its_annotation_list(packed):
    root, data_dir = packed
    cfg = tfds_config(root, data_dir, "frames")
    assert pipeline.num_examples(cfg, "val") == len(LENGTHS)
    few = [("videos/v03.mp4", 3), ("videos/v01.mp4", 1)]
    it = pipeline.create_train_iterator(cfg, batch_size=4, seed=0, annotations=few)
    assert sorted(next(it)["label"].tolist()) == [1, 1, 3, 3]
    it.close()
    with pytest.raises(
        AnnotationError,
        match=r"videos/nope.mp4 \(listed at annotations\[0\]\) is not in tfds dataset",
    ):
        pipeline.create_train_iterator(
            cfg, batch_size=1, seed=0, annotations=[("videos/nope.mp4", 0)]
        ).__next__()
    with pytest.raises(AnnotationError, match="cannot open tfds dataset 'tcclip_videos/absent'"):
        pipeline.num_examples(
            small_config(root, format="tfds", tfds_name="tcclip_videos/absent", tfds_dir=data_dir)
        )


def test_packing_stops_at_or_lists_unreadable_videos(tmp_path):
    root = str(tmp_path)
    train = write_grey_dataset(root, [10, 12])
    with open(train, "a") as f:
        f.write("videos/missing.mp4 1\n")
    tool = load_tool()
    argv = [f"--root={root}", f"--split=train={train}", f"--data-dir={tmp_path / 'tfds'}"]
    assert tool.main(["--name=strict", *argv]) == 1
    assert tool.main(["--name=lenient", "--skip-unreadable", *argv]) == 0
    cfg = small_config(
        root, format="tfds", tfds_name="tcclip_videos/lenient", tfds_dir=str(tmp_path / "tfds")
    )
    assert pipeline.num_examples(cfg) == 2
    metadata = pipeline.make_reader(cfg, "train").source.dataset_info.metadata
    (skipped,) = metadata["splits"]["train"]["skipped"]
    assert "missing.mp4: no such video file" in skipped


def test_an_interrupted_build_leaves_nothing_readers_accept_and_reruns(tmp_path):
    """Ctrl-C (to the process group, as a terminal sends it) and SIGKILL during packing: no
    dataset that readers would open, no traceback from the worker processes; the same command
    then builds it whole."""
    root = str(tmp_path / "videos")
    train = write_grey_dataset(root, [40] * 240)
    data_dir = tmp_path / "tfds"
    command = [sys.executable, os.path.join(ROOT_DIR, "tools", "build_tfds_dataset.py"),
               "--name=g", f"--root={root}", f"--split=train={train}", f"--data-dir={data_dir}",
               "--workers=2", "--resize-size=36"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT_DIR}
    cfg = small_config(root, format="tfds", tfds_name="tcclip_videos/g", tfds_dir=str(data_dir))
    partial = str(data_dir / "tcclip_videos" / "g" / "incomplete*")
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        deadline = time.time() + 120
        while not glob.glob(partial) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)  # the workers are up and packing (the whole build takes seconds)
        assert proc.poll() is None, "finished before the interruption"
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        if sig == signal.SIGINT:
            assert proc.returncode == 130, err[-3000:]
            assert "Traceback" not in err, err[-3000:]
            assert err.strip().splitlines()[-1] == "error: interrupted"
            assert not glob.glob(partial)  # removed on the way out
        else:
            assert glob.glob(partial)  # left behind, under a name no reader opens
        with pytest.raises(AnnotationError, match="cannot open tfds dataset 'tcclip_videos/g'"):
            pipeline.num_examples(cfg)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pipeline.num_examples(cfg) == 240


def test_build_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    root = str(tmp_path)
    train = write_grey_dataset(root, [10])
    command = [sys.executable, os.path.join(ROOT_DIR, "tools", "build_tfds_dataset.py"),
               "--name=g", f"--root={root}", f"--data-dir={tmp_path / 'tfds'}"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT_DIR}
    run = lambda *a: subprocess.run([*command, *a], env=env, capture_output=True, text=True)  # noqa: E731
    proc = run(f"--split=train={train}", f"--split=train={train}")
    assert (proc.returncode, proc.stderr) == (2, "error: a split name is given twice\n")
    proc = run(f"--split=train={tmp_path / 'nope.txt'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: annotation list {tmp_path / 'nope.txt'} does not exist"
    )
    proc = run(f"--split=train={tmp_path / 'nope.txt'}", "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr
