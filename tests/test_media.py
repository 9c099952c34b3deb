import numpy as np
import pytest

from pipeline import media


def _clip(t=12, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky: survives H.264
    return np.stack([np.roll(img, i, axis=1) for i in range(t)])


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("m") / "clip.mp4")
    media.encode(_clip(), path, fps=12.0, crf=10)
    return path


def test_round_trip_keeps_size_count_fps_and_pixels(clip_path):
    frames, fps, info = media.decode(clip_path)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(12.0) and info.num_frames == 12 and (info.width, info.height) == (64, 48)
    assert np.median(np.abs(frames.astype(int) - _clip().astype(int))) <= 3


def test_stride_max_frames_and_time_window(clip_path):
    frames, fps, _ = media.decode(clip_path, media.DecodeOptions(stride=2, max_frames=4))
    assert len(frames) == 4 and fps == pytest.approx(6.0)
    ref, _, _ = media.decode(clip_path)
    assert np.abs(frames[1].astype(int) - ref[2].astype(int)).mean() < 2
    window, _, _ = media.decode(clip_path, media.DecodeOptions(start_seconds=0.5, end_seconds=0.75))
    assert len(window) == 3  # frames at 0.5, 0.583, 0.667 s
    assert np.abs(window[0].astype(int) - ref[6].astype(int)).mean() < 2


@pytest.mark.parametrize("mode, size, expected", [
    ("fit", (32, 32), (24, 32)),
    ("crop", (32, 32), (32, 32)),
    ("pad", (32, 32), (32, 32)),
    ("stretch", (20, 40), (40, 20)),
])
def test_resize_modes(clip_path, mode, size, expected):
    frames, _, _ = media.decode(clip_path, media.DecodeOptions(width=size[0], height=size[1], resize=mode))
    assert frames.shape[1:3] == expected


def test_pad_puts_black_bars_top_and_bottom(clip_path):
    frames, _, _ = media.decode(clip_path, media.DecodeOptions(width=32, height=32, resize="pad"))
    assert frames[:, :4].max() == 0 and frames[:, -4:].max() == 0 and frames[:, 10:20].max() > 0


def test_target_size_math():
    assert media.target_size(1920, 1080, 512, None, "fit") == (512, 288, 512, 288)
    assert media.target_size(1920, 1080, 512, 512, "crop", 8) == (912, 512, 512, 512)
    with pytest.raises(ValueError):
        media.target_size(10, 10, 5, 5, "zoom")


def test_limits(clip_path):
    with pytest.raises(media.VideoTooLargeError, match="max_pixels"):
        media.decode(clip_path, media.DecodeOptions(max_pixels=1000))
    with pytest.raises(media.VideoTooLargeError, match="max_source_frames"):
        media.decode(clip_path, media.DecodeOptions(max_source_frames=5))


def test_bad_files(tmp_path, clip_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    data = open(clip_path, "rb").read()
    truncated = tmp_path / "trunc.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(media.VideoDecodeError, match="empty"):
        media.decode(str(empty))
    with pytest.raises(media.VideoDecodeError):
        media.decode(str(text))
    with pytest.raises(media.VideoDecodeError):
        media.decode(str(truncated))
    with pytest.raises(FileNotFoundError):
        media.decode(str(tmp_path / "nope.mp4"))


def test_encode_pads_odd_sizes_and_checks_input(tmp_path):
    frames = np.full((3, 15, 17, 3), 128, dtype=np.uint8)
    path = media.encode(frames, str(tmp_path / "odd.mp4"), fps=29.97)
    info = media.probe(path)
    assert (info.width, info.height) == (18, 16) and info.fps == pytest.approx(29.97, rel=1e-3)
    with pytest.raises(ValueError):
        media.encode(frames.astype(np.float32), str(tmp_path / "x.mp4"), 10)
    with pytest.raises(ValueError):
        media.encode(frames, str(tmp_path / "y.mp4"), 0)


def test_codecs_present():
    assert media.decoder_available("h264") and media.encoder_available("libx264")
    assert not media.decoder_available("no-such-codec")
