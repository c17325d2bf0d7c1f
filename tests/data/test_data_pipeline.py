"""grain pipelines on tiny grey-coded videos, whose decoded frames reveal the sampled indices."""

import os
import re
import shutil
import zlib

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from data_helpers import frame_index, no_augmentation, small_config, write_grey_dataset

from tcclip_jax.data import pipeline, sampling, transforms
from tcclip_jax.data.classes import AnnotationError
from tcclip_jax.data.config import normalization_stats
from tcclip_jax.data.video_decode import VideoReadError, decode_frames

LENGTHS = [40, 36, 20, 12, 33, 25, 40, 30, 3, 16]  # video k has label k; 3 and 12 are short


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("grey"))
    write_grey_dataset(root, LENGTHS)
    return root


def indices(clip):
    return [frame_index(f) for f in clip]


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_train_clips_take_the_released_frame_indices(root):
    cfg = no_augmentation(small_config(root))
    it = pipeline.create_train_iterator(cfg, batch_size=4, seed=3)
    batches = take(it, 5)
    it.close()
    labels = np.concatenate([b["label"] for b in batches])
    clips = np.concatenate([b["video"] for b in batches])
    assert clips.shape == (20, 4, 32, 32, 3) and clips.dtype == np.uint8
    assert labels.dtype == np.int32
    # Every epoch is a fresh permutation of all videos.
    assert sorted(labels[:10]) == list(range(10)) and sorted(labels[10:]) == list(range(10))
    assert list(labels[:10]) != list(labels[10:])
    for position, (label, clip) in enumerate(zip(labels, clips, strict=True)):
        rng = np.random.default_rng((3, position // 10, label))
        expected = sampling.train_indices(LENGTHS[label], 4, rng)
        assert indices(clip) == list(expected), (position, label)


def test_float_output_is_the_normalised_uint8_output(root):
    cfg = small_config(root)
    it = pipeline.create_train_iterator(cfg, batch_size=3, seed=0)
    raw = next(it)
    it.close()
    cfg.uint8_output = False
    it = pipeline.create_train_iterator(cfg, batch_size=3, seed=0)
    normalised = next(it)
    it.close()
    assert normalised["video"].dtype == np.float32
    expected = transforms.normalize(raw["video"], *normalization_stats(cfg.normalization))
    np.testing.assert_array_equal(normalised["video"], expected)


def test_restored_state_reproduces_the_next_batches(root):
    cfg = small_config(root)
    it = pipeline.create_train_iterator(cfg, batch_size=3, seed=5)
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    it.close()
    fresh = pipeline.create_train_iterator(cfg, batch_size=3, seed=5)
    fresh.set_state(state)
    assert_same_batches(take(fresh, 3), expected)
    fresh.close()


def test_worker_processes_and_orbax_checkpoint_resume_exactly(root, tmp_path):
    cfg = small_config(root, num_workers=2)
    it = pipeline.create_train_iterator(cfg, batch_size=2, seed=1)
    first = take(it, 3)
    assert len(set(np.concatenate([b["label"] for b in first]).tolist())) == 6  # all epoch 0
    manager = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    manager.save(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
    expected = take(it, 3)
    it.close()
    fresh = pipeline.create_train_iterator(cfg, batch_size=2, seed=1)
    manager.restore(0, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_same_batches(take(fresh, 3), expected)
    fresh.close()
    manager.close()


def test_processes_read_disjoint_shards_covering_each_epoch(root):
    cfg = no_augmentation(small_config(root))
    seen, clips = [], {}
    for p in range(3):
        it = pipeline.create_train_iterator(
            cfg, batch_size=1, seed=9, process_index=p, process_count=3
        )
        for b in take(it, len(range(p, 10, 3))):  # this process's part of epoch 0
            seen.append(int(b["label"][0]))
            clips[seen[-1]] = b["video"][0]
        it.close()
    assert sorted(seen) == list(range(10))
    # A clip depends on (seed, epoch, video) only, not on how many processes share the work.
    it = pipeline.create_train_iterator(cfg, batch_size=10, seed=9)
    single = next(it)
    it.close()
    for label, clip in zip(single["label"], single["video"], strict=True):
        np.testing.assert_array_equal(clip, clips[int(label)])
    with pytest.raises(ValueError, match="process_index 3 not in"):
        pipeline.create_train_iterator(cfg, batch_size=1, seed=0, process_index=3, process_count=3)


@pytest.fixture(scope="module")
def bad_list(root):
    """The grey videos plus a missing and a corrupt one (labels 0 and 1)."""
    with open(os.path.join(root, "videos", "junk.mp4"), "wb") as f:
        f.write(b"\x00not a video" * 100)
    path = os.path.join(root, "with_bad.txt")
    with open(os.path.join(root, "train.txt")) as f:
        lines = f.readlines()
    lines[3:3] = ["videos/missing.mp4 0\n", "videos/junk.mp4 1\n"]
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def test_training_skips_unreadable_videos_and_counts_them(root, bad_list):
    cfg = small_config(root, train_list=bad_list, max_bad_videos=10)
    it = pipeline.create_train_iterator(cfg, batch_size=4, seed=0)
    batches = take(it, 3)  # 12 good clips: all of epoch 0 read, so both bad ones were met
    state = it.get_state()
    it.close()
    assert all(b["video"].shape[0] == 4 for b in batches)
    messages = [m for _, m in it.skipped]
    assert any(
        "missing.mp4: no such video file (listed at" in m and "with_bad.txt:4" in m
        for m in messages
    )
    assert any("junk.mp4: cannot open as a video" in m and "with_bad.txt:5" in m for m in messages)
    assert state["skipped"] == it.skipped
    fresh = pipeline.create_train_iterator(cfg, batch_size=4, seed=0)
    fresh.set_state(state)
    assert fresh.skipped == it.skipped
    fresh.close()


def test_training_stops_past_the_bad_video_limit(root, bad_list):
    cfg = small_config(root, train_list=bad_list, max_bad_videos=1)
    it = pipeline.create_train_iterator(cfg, batch_size=4, seed=0)
    with pytest.raises(
        VideoReadError, match="2 unreadable training videos, more than max_bad_videos=1"
    ) as e:
        take(it, 4)
    it.close()
    assert "missing.mp4" in str(e.value) and "junk.mp4" in str(e.value)


def test_eval_batches_are_padded_sharded_and_sample_evenly(root):
    cfg = small_config(root, test_clips=2, test_crops=1, test_clip_sampling="uniform")
    seen = []
    for p in range(3):
        ds = pipeline.create_eval_dataset(cfg, batch_size=3, process_index=p, process_count=3)
        batches = list(ds)
        assert len(batches) == 2  # ceil(ceil(10 / 3) / 3) for every process
        for b in batches:
            assert b["video"].shape == (3, 2, 4, 32, 32, 3)
            assert b["valid"].dtype == bool and b["index"].dtype == np.int32
            for video, index, label, valid in zip(
                b["video"], b["index"], b["label"], b["valid"], strict=True
            ):
                if not valid:
                    assert index == -1 and label == -1 and not video.any()
                    continue
                seen.append(int(index))
                assert label == index  # video k has label k
                views = sampling.view_indices(LENGTHS[index], 4, 2, "uniform")
                assert [indices(v) for v in video] == views.tolist()
    assert sorted(seen) == list(range(10))


def _views_by_index(cfg, batch_size: int, process_count: int) -> dict[int, np.ndarray]:
    views = {}
    for p in range(process_count):
        ds = pipeline.create_eval_dataset(
            cfg, batch_size=batch_size, process_index=p, process_count=process_count
        )
        for b in ds:
            views.update({int(i): v for i, v in zip(b["index"], b["video"], strict=True) if i >= 0})
    return views


def test_eval_views_take_random_offsets_seeded_per_video(root):
    """The default test views: the published random temporal offsets, drawn from an rng seeded
    by the video's file name, so every list, batch and process layout sees the same views."""
    cfg = small_config(root, test_clips=2, test_crops=3)
    assert cfg.test_clip_sampling == "tsn_random"
    views = _views_by_index(cfg, batch_size=4, process_count=1)
    assert views[0].shape == (6, 4, 32, 32, 3)
    again = _views_by_index(cfg, batch_size=3, process_count=3)
    assert views.keys() == again.keys() == set(range(10))
    for index, video in views.items():
        np.testing.assert_array_equal(again[index], video)
        seed = zlib.crc32(f"v{index:02d}".encode())  # the file name without extension
        expected = sampling.view_indices(
            LENGTHS[index], 4, 2, "tsn_random", np.random.default_rng(seed)
        )
        assert [indices(v) for v in video[::3]] == expected.tolist()  # clip-major, crop 0
    offsets = [indices(v) for i in range(10) for v in views[i][::3]]
    uniform = [
        v.tolist() for i in range(10) for v in sampling.view_indices(LENGTHS[i], 4, 2, "uniform")
    ]
    assert offsets != uniform


def test_an_unreadable_eval_video_is_a_named_row_of_zeros(root, bad_list):
    cfg = small_config(root)
    batches = list(pipeline.create_eval_dataset(cfg, batch_size=4, annotation_file=bad_list))
    unreadable = [u for b in batches for u in b["unreadable"]]
    assert [p for p, _ in unreadable] == [3, 4]  # list positions (lines 4 and 5)
    assert re.search(r"missing.mp4: no such video file \(listed at .*with_bad.txt:4\)",
                     unreadable[0][1])  # fmt: skip
    assert re.search(r"junk.mp4: .*\(listed at .*with_bad.txt:5\)", unreadable[1][1])
    rows = {int(i): v for b in batches for i, v in zip(b["index"], b["video"], strict=True)}
    assert not rows[3].any() and not rows[4].any() and rows[2].any()
    assert all(b["valid"][list(b["index"]).index(p)] for b in batches for p, _ in b["unreadable"])


def test_load_test_views_matches_evaluation(root):
    cfg = small_config(root, uint8_output=False)  # random offsets seeded by the file name
    views = pipeline.load_test_views(os.path.join(root, "videos", "v04.mp4"), cfg)
    batch = next(iter(pipeline.create_eval_dataset(cfg, batch_size=5)))
    assert views.shape == (2, 4, 32, 32, 3) and views.dtype == np.float32
    np.testing.assert_array_equal(views, batch["video"][4])


def test_frame_folders_give_the_same_clips_as_videos(root, tmp_path):
    frames_root = str(tmp_path)
    for k in range(len(LENGTHS)):
        folder = os.path.join(frames_root, "videos", f"v{k:02d}.mp4")
        os.makedirs(folder)
        all_frames = decode_frames(os.path.join(root, "videos", f"v{k:02d}.mp4"), np.arange)
        for i, frame in enumerate(all_frames):
            transforms.Image.fromarray(frame).save(os.path.join(folder, f"img_{i + 1:05d}.png"))
    shutil.copy(os.path.join(root, "train.txt"), frames_root)
    shutil.copy(os.path.join(root, "classes.csv"), frames_root)
    # At the frames' own size (short side 32) both paths skip resizing (they resize differently:
    # swscale while decoding videos, PIL for images), so the clips must be equal.
    video_cfg = small_config(root, resize_size=32)
    frames_cfg = small_config(
        frames_root, resize_size=32, format="frames", frame_template="img_{:05d}.png"
    )
    a = pipeline.create_train_iterator(video_cfg, batch_size=4, seed=2)
    b = pipeline.create_train_iterator(frames_cfg, batch_size=4, seed=2)
    assert_same_batches(take(a, 3), take(b, 3))
    a.close()
    b.close()
    assert_same_batches(
        list(pipeline.create_eval_dataset(video_cfg, batch_size=4)),
        list(pipeline.create_eval_dataset(frames_cfg, batch_size=4)),
    )


def test_annotation_override_and_config_errors(root):
    cfg = small_config(root)
    it = pipeline.create_train_iterator(
        cfg, batch_size=2, seed=0, annotations=[("videos/v07.mp4", 7)]
    )
    assert next(it)["label"].tolist() == [7, 7]
    it.close()
    with pytest.raises(
        AnnotationError, match=r"annotations\[0\]: label 12 is outside the class list"
    ):
        pipeline.create_train_iterator(
            cfg, batch_size=2, seed=0, annotations=[("videos/v07.mp4", 12)]
        )
    with pytest.raises(AnnotationError, match="data root '/nonexistent' is not a directory"):
        pipeline.create_train_iterator(small_config("/nonexistent"), batch_size=2, seed=0)
    with pytest.raises(ValueError, match="test_crops must be 1 or 3, got 2"):
        pipeline.create_eval_dataset(small_config(root, test_crops=2), batch_size=2)
    with pytest.raises(ValueError, match="data format must be one of"):
        pipeline.create_eval_dataset(small_config(root, format="webdataset"), batch_size=2)
    assert pipeline.num_examples(cfg) == 10


def test_clips_per_epoch_reads_the_first_videos_of_each_epochs_shuffle(root):
    """The published trainer's dropped tail (train.optim.StepPlan.clips_per_epoch): epoch e
    reads the first 8 of its own shuffle of the 10 videos, with epoch e's augmentation."""
    cfg = no_augmentation(small_config(root))
    full = pipeline.create_train_iterator(cfg, batch_size=4, seed=3)
    every = np.concatenate([b["label"] for b in take(full, 5)])
    full.close()
    it = pipeline.create_train_iterator(cfg, batch_size=4, seed=3, clips_per_epoch=8)
    batches = take(it, 4)
    it.close()
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, np.concatenate([every[:8], every[10:18]]))
    clips = np.concatenate([b["video"] for b in batches])
    for position, (label, clip) in enumerate(zip(labels, clips, strict=True)):
        rng = np.random.default_rng((3, position // 8, label))
        assert indices(clip) == list(sampling.train_indices(LENGTHS[label], 4, rng)), position
