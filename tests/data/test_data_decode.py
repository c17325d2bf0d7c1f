"""Selective PyAV decoding gives exactly the frames of a full decode; bad files get clear errors."""

import os

import av
import numpy as np
import pytest
from data_helpers import frame_index, grey_frames, textured_frames
from PIL import Image

from tcclip_jax.data.readers import Entry, FrameFolderReader, VideoFileReader
from tcclip_jax.data.transforms import short_side_shape
from tcclip_jax.data.video_decode import VideoReadError, decode_frames, rgb_converter
from tcclip_jax.data.video_encode import encode_video

# (file name, codec, encoder options, keyframe interval): B-frames with timestamps (mp4, mkv),
# open GOPs, AVI without presentation timestamps (MPEG-4 part 2 with B-frames, H.264), VP9.
CASES = [
    ("bframes.mp4", "libx264", {"bf": "3"}, 8),
    ("bframes.mkv", "libx264", None, 10),
    ("open_gop.mp4", "libx264", {"x264-params": "open-gop=1:keyint=10:bframes=3"}, None),
    ("mpeg4_bframes.avi", "mpeg4", {"bf": "2"}, 12),
    ("h264.avi", "libx264", None, 8),
    ("vp9.webm", "libvpx-vp9", None, 10),
]


def full_decode(path):
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("name, codec, options, gop", CASES, ids=[c[0] for c in CASES])
def test_selected_frames_equal_full_decode(tmp_path, name, codec, options, gop):
    path = str(tmp_path / name)
    encode_video(path, textured_frames(36), codec=codec, options=options, gop_size=gop)
    reference = full_decode(path)
    rng = np.random.default_rng(0)
    for threads in (1, 0, 2):
        for _ in range(6):
            wanted = rng.integers(0, len(reference), size=rng.integers(1, 12))

            def pick(n, wanted=wanted):
                assert n == len(reference)
                return wanted

            got = decode_frames(path, pick, threads=threads)
            assert got.shape == (len(wanted), 48, 64, 3)
            for frame, i in zip(got, wanted, strict=True):
                np.testing.assert_array_equal(frame, reference[i])


def test_decoding_from_bytes_equals_decoding_the_file(tmp_path):
    path = str(tmp_path / "v.mp4")
    encode_video(path, textured_frames(20))
    with open(path, "rb") as f:
        blob = f.read()
    pick = lambda n: np.array([3, 19, 0, 3])  # noqa: E731
    np.testing.assert_array_equal(decode_frames(blob, pick), decode_frames(path, pick))


def test_resizing_while_decoding(tmp_path):
    path = str(tmp_path / "v.mp4")
    encode_video(path, textured_frames(10, height=48, width=64))
    pick = lambda n: np.array([2, 7])  # noqa: E731
    full = decode_frames(path, pick)
    small = decode_frames(path, pick, short_side=36)
    assert small.shape == (2, 36, 48, 3)  # 64 * 36 / 48 = 48
    reference = np.stack(
        [np.asarray(Image.fromarray(f).resize((48, 36), Image.BILINEAR)) for f in full]
    )
    assert np.abs(small.astype(int) - reference).mean() < 3  # swscale and PIL bilinear agree
    np.testing.assert_array_equal(decode_frames(path, pick, short_side=48), full)


def test_converter_keeps_pyav_pixels_across_frame_sizes():
    """The converter reuses one swscale context on its own thread; every frame, including
    after a change of frame size, gets PyAV's own `to_ndarray` conversion exactly."""
    rng = np.random.default_rng(0)
    frames = []
    for height, width in [(48, 64), (48, 64), (90, 120), (48, 64), (240, 320)]:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frames.append(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    for short_side in (None, 36, 16, 224):
        to_rgb = rgb_converter(short_side)
        for frame in frames:
            h, w = (frame.height, frame.width)
            if short_side is not None:
                h, w = short_side_shape(h, w, short_side)
            expected = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
            np.testing.assert_array_equal(to_rgb(frame), expected)


def test_grey_coded_frames_decode_to_their_index(tmp_path):
    path = str(tmp_path / "g.mp4")
    encode_video(path, grey_frames(30))
    got = decode_frames(path, lambda n: np.arange(n)[::-1])
    assert [frame_index(f) for f in got] == list(range(29, -1, -1))


def entry(path):
    return Entry(os.path.basename(path), 0, "list.txt:7")


def test_missing_and_empty_files_name_the_file_and_list_line(tmp_path):
    reader = VideoFileReader(str(tmp_path))
    with pytest.raises(
        VideoReadError, match=r"nope.mp4: no such video file \(listed at list.txt:7\)"
    ):
        reader.read(entry("nope.mp4"), np.arange)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match=r"empty.mp4: empty file \(listed at list.txt:7\)"):
        reader.read(entry("empty.mp4"), np.arange)


def test_garbage_and_truncated_files_are_reported(tmp_path):
    reader = VideoFileReader(str(tmp_path))
    # Seeded: about 1 in 150 random draws probes as a lyrics (.lrc) file.
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(VideoReadError, match=r"junk.mp4: cannot open as a video.*list.txt:7"):
        reader.read(entry("junk.mp4"), np.arange)
    # A file FFmpeg can open that holds no video (here lyrics text) says so.
    (tmp_path / "words.mp4").write_bytes(b"[00:01.00]la la la\n" * 20)
    with pytest.raises(VideoReadError, match=r"words.mp4: no video stream \(listed at list.txt:7"):
        reader.read(entry("words.mp4"), np.arange)
    encode_video(str(tmp_path / "whole.mkv"), textured_frames(30))
    data = (tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    # A truncated file keeps its readable frames; sampling sees only those.
    frames = reader.read(entry("cut.mkv"), np.arange)
    assert 0 < len(frames) < 30
    np.testing.assert_array_equal(frames, np.stack(full_decode(str(tmp_path / "cut.mkv"))))


def test_unknown_codec_is_reported(tmp_path):
    encode_video(str(tmp_path / "v.mp4"), textured_frames(10))
    data = (tmp_path / "v.mp4").read_bytes()
    assert b"avc1" in data  # the H.264 sample entry's codec tag (and a brand in ftyp)
    (tmp_path / "odd.mp4").write_bytes(data.replace(b"avc1", b"zzz9"))
    with pytest.raises(VideoReadError, match=r"odd.mp4: cannot decode codec.*list.txt:7"):
        VideoFileReader(str(tmp_path)).read(entry("odd.mp4"), np.arange)


def test_frame_folder_reader(tmp_path):
    folder = tmp_path / "vid"
    folder.mkdir()
    for i, frame in enumerate(grey_frames(12)):
        av.VideoFrame.from_ndarray(frame, format="rgb24").to_image().save(folder / f"im{i:03d}.png")
    (folder / "notes.txt").write_text("not a frame")
    reader = FrameFolderReader(str(tmp_path), "im{:03d}.png", start_index=0)
    seen = []
    got = reader.read(Entry("vid", 0, "f.txt:1"), lambda n: seen.append(n) or np.array([11, 0, 5]))
    assert seen == [12]
    assert [frame_index(f) for f in got] == [11, 0, 5]
    with pytest.raises(VideoReadError, match=r"gone: no such frame folder \(listed at f.txt:2\)"):
        reader.read(Entry("gone", 0, "f.txt:2"), np.arange)
    (folder / "im005.png").write_bytes(b"broken")
    with pytest.raises(VideoReadError, match=r"im005.png: cannot read frame.*f.txt:1"):
        reader.read(Entry("vid", 0, "f.txt:1"), np.arange)
    with pytest.raises(ValueError, match="exactly one"):
        FrameFolderReader(str(tmp_path), "frame.jpg")
