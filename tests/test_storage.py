import hashlib
import os

import pytest

from pipeline import storage


@pytest.mark.parametrize("raw", ["../../x", "/etc/passwd", "a/b", "..", "", "a b", "ok-id_1.2"])
def test_safe_id_is_one_harmless_component(raw):
    out = storage.safe_id(raw)
    assert out and "/" not in out and out not in (".", "..") and not out.startswith(".")
    assert out == storage.safe_id(raw)  # deterministic


def test_safe_id_keeps_clean_ids_and_separates_dirty_ones():
    assert storage.safe_id("clip_01") == "clip_01"
    assert storage.safe_id("a/b") != storage.safe_id("a_b")


@pytest.mark.parametrize("part", ["..", "../x", "a/../../b", "", "a\\b"])
def test_join_url_refuses_escapes(part):
    with pytest.raises(ValueError):
        storage.join_url("/out", part)


def test_join_url_builds_nested_keys():
    assert storage.join_url("s3://b/run/", "videos", "v1/x.mp4") == "s3://b/run/videos/v1/x.mp4"


def test_atomic_write_and_read_back_local(tmp_path):
    url = str(tmp_path / "d" / "f.bin")
    storage.write_bytes(url, b"abc")
    assert storage.read_bytes(url) == b"abc"
    storage.write_bytes(url, b"xyz")
    assert open(url, "rb").read() == b"xyz"
    assert [n for n in os.listdir(tmp_path / "d") if n.startswith(".tmp-")] == []


def test_memory_filesystem_round_trip_and_glob():
    storage.write_bytes("memory://bucket/in/a.mp4", b"1")
    storage.write_bytes("memory://bucket/in/sub/b.mp4", b"22")
    storage.write_bytes("memory://bucket/in/c.txt", b"3")
    found = storage.list_files("memory://bucket/in/**/*.mp4")
    assert found == ["memory://bucket/in/a.mp4", "memory://bucket/in/sub/b.mp4"]
    assert storage.read_bytes("memory://bucket/in/sub/b.mp4") == b"22"


def test_content_hash_and_local_copy(tmp_path):
    data = os.urandom(5000)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    assert storage.content_hash(str(path)) == hashlib.sha256(data).hexdigest()
    storage.write_bytes("memory://h/v.mp4", data)
    with storage.local_copy("memory://h/v.mp4") as (local, digest):
        assert open(local, "rb").read() == data and digest == hashlib.sha256(data).hexdigest()
    assert not os.path.exists(local)
    with pytest.raises(FileNotFoundError):
        with storage.local_copy("memory://h/missing.mp4"):
            pass


def test_check_writable(tmp_path):
    storage.check_writable(str(tmp_path / "out"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    with pytest.raises(OSError):
        storage.check_writable(str(ro))


def test_artifact_dir_is_keyed_by_content_and_config():
    a = storage.artifact_dir("/c", "atlas", "ab" * 32, "cfg1")
    assert a.startswith("/c/atlas/") and a != storage.artifact_dir("/c", "atlas", "ab" * 32, "cfg2")
