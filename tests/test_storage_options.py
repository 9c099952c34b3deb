"""Free-form fsspec storage options per protocol and URL prefix; secrets never reach an output file."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from jobs import common, edit_videos
from jobs.edit_videos import EditJobConfig
from pipeline import storage
from pipeline.config import ConfigError, config_hash, from_dict, is_secret_key, redact
from pipeline.storage import StorageOptions


def test_fixed_fields_still_work():
    opts = StorageOptions(endpoint_url="http://127.0.0.1:9", region="us-east-1", key="k", secret="s")
    assert opts.for_protocol("s3") == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9",
                                                         "region_name": "us-east-1"}, "key": "k", "secret": "s"}
    assert opts.for_protocol("s3a") == opts.for_protocol("s3")
    assert StorageOptions(anon=True).for_protocol("gcs") == {"token": "anon"}
    assert opts.for_protocol("file") == {}


def test_protocol_and_prefix_options_merge_over_the_fixed_fields():
    opts = from_dict(StorageOptions, {
        "region": "eu-west-1", "key": "k",
        "options": {"s3": {"profile": "research", "client_kwargs": {"region_name": "us-east-2"},
                           "config_kwargs": {"retries": {"max_attempts": 10}}},
                    "gcs": {"project": "p"}},
        "prefixes": {"s3://pays/": {"requester_pays": True},
                     "s3://pays/public/": {"anon": True, "key": None},
                     "s3://other/": {"default_block_size": 1 << 20}}})
    base = opts.for_protocol("s3", "s3://bucket/x.mp4")
    assert base == {"client_kwargs": {"region_name": "us-east-2"}, "key": "k", "profile": "research",
                    "config_kwargs": {"retries": {"max_attempts": 10}}}
    pays = opts.for_protocol("s3", "s3://pays/a/x.mp4")
    assert pays == {**base, "requester_pays": True}
    public = opts.for_protocol("s3", "s3://pays/public/x.mp4")  # the longer prefix is merged last
    assert public["anon"] is True and public["requester_pays"] is True and public["key"] is None
    assert "requester_pays" not in opts.for_protocol("s3", "s3://paysx/y")
    assert opts.for_protocol("gs", "gs://b/x") == {"project": "p"}  # gs and gcs share options
    web = StorageOptions(options={"http": {"client_kwargs": {"trust_env": True}}})
    assert web.for_protocol("https") == web.for_protocol("http") == {"client_kwargs": {"trust_env": True}}


def test_get_fs_passes_prefix_options_to_fsspec(monkeypatch):
    calls = []
    monkeypatch.setattr(storage, "url_to_fs", lambda url, **kw: calls.append((url, kw)) or (None, url))
    opts = StorageOptions(key="k", prefixes={"s3://pays/": {"requester_pays": True}})
    storage.get_fs("s3://pays/a.mp4", opts)
    storage.get_fs("s3://free/a.mp4", opts)
    assert calls == [("s3://pays/a.mp4", {"key": "k", "requester_pays": True}), ("s3://free/a.mp4", {"key": "k"})]


def test_repr_masks_secrets():
    text = repr(StorageOptions(key="AKIA-REPR", secret="s3cr3t-repr", options={"s3": {"token": "tok-repr"}},
                               region="us-east-1"))
    assert "AKIA-REPR" not in text and "s3cr3t-repr" not in text and "tok-repr" not in text
    assert "region='us-east-1'" in text and "key='***'" in text


def test_a_prefix_must_be_a_url():
    with pytest.raises(ConfigError, match="URL prefix"):
        from_dict(StorageOptions, {"prefixes": {"bucket/": {"anon": True}}})


def test_secret_keys_are_recognised_and_masked():
    for name in ("key", "secret", "token", "session_token", "password", "credentials", "aws_secret_access_key",
                 "aws_access_key_id", "client-secret"):
        assert is_secret_key(name), name
    for name in ("tokenizer", "num_keyframes", "keep_array", "profile", "anon", "endpoint_url"):
        assert not is_secret_key(name), name
    data = {"storage": {"key": "A", "secret": None, "options": {"s3": {"client_kwargs": {"aws_session_token": "T"}}}}}
    assert redact(data) == {"storage": {"key": "***", "secret": None,
                                        "options": {"s3": {"client_kwargs": {"aws_session_token": "***"}}}}}


def test_config_hash_does_not_depend_on_credentials():
    a = from_dict(EditJobConfig, {"storage": {"key": "one", "options": {"s3": {"token": "x"}}}})
    b = from_dict(EditJobConfig, {"storage": {"key": "two", "options": {"s3": {"token": "y"}}}})
    c = from_dict(EditJobConfig, {"storage": {"key": "two", "options": {"s3": {"profile": "other"}}}})
    assert config_hash(a) == config_hash(b) != config_hash(c)


SECRETS = ("AKIAVIDFLOWSECRET1", "vidflow-secret-value-2", "vidflow-session-token-3", "vidflow-password-4")


@pytest.mark.slow
def test_secrets_in_config_appear_in_no_output_file(ray_local, sample_dir, tmp_path, caplog, capsys, monkeypatch):
    """A real run (reencode on the sample) with credentials in every kind of storage field, and a model
    cache URL (the staging call is recorded): no file under the output, and no log line, holds a secret."""
    staged = []
    monkeypatch.setattr(common.model_staging, "stage_model_cache",
                        lambda url, options=None: staged.append((url, options)) or [])
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "run": {"model_cache_url": str(tmp_path / "models"), "flush_rows": 2},
        "storage": {"key": SECRETS[0], "secret": SECRETS[1],
                    "options": {"s3": {"session_token": SECRETS[2]}, "gs": {"token": SECRETS[1]}},
                    "prefixes": {"s3://private-bucket/": {"client_kwargs": {"password": SECRETS[3]}}}},
        "decode": {"max_frames": 8}, "encode": {"preset": "ultrafast"}}))
    out = str(tmp_path / "out")
    manifest = os.path.join(sample_dir, "manifest.csv")
    assert edit_videos.main(["--manifest", manifest, "--output", out, "--config", str(config),
                             "--method", "reencode", "--limit", "2"]) == 0
    frame = pd.read_parquet(os.path.join(out, "manifest"))
    assert len(frame) == 2 and (frame.status == "ok").all()
    assert staged and staged[0][0] == str(tmp_path / "models") and staged[0][1].key == SECRETS[0]
    files = [os.path.join(d, f) for d, _, names in os.walk(out) for f in names]
    assert any(f.endswith("summary.json") for f in files) and any(f.endswith(".parquet") for f in files)
    captured = capsys.readouterr()
    texts = {path: open(path, "rb").read() for path in files}
    texts["<log>"] = caplog.text.encode()
    texts["<stdout/stderr>"] = (captured.out + captured.err).encode()
    for where, data in texts.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} leaked into {where}"
    assert frame.config_hash.iloc[0] == config_hash(from_dict(EditJobConfig, {
        **json.loads(config.read_text()), "run": {"model_cache_url": str(tmp_path / "models"), "flush_rows": 2,
                                                  "method": "reencode"}}))
