"""Packed ArrayRecord datasets read back through tfds.data_source give the file path's clips."""

import importlib.util
import os

import numpy as np
import pytest
from data_helpers import frame_index, small_config, write_grey_dataset

from tcclip_jax.data import pipeline
from tcclip_jax.data.classes import AnnotationError

LENGTHS = [30, 12, 25, 40, 7, 18]
ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
