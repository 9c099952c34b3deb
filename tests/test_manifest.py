import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import compaction, manifest, storage
from pipeline.dedupe import job_keys
from pipeline.manifest import ManifestError, ManifestStore, assign_job_ids, output_schema, read_input
from pipeline.resume import STATUS_CODE, scan_previous

ROWS = [
    {"video_uri": "s3://b/a.mp4", "prompt": "a cat", "params": json.dumps({"strength": 0.5}), "lang": "en"},
    {"video_uri": "s3://b/b.mp4", "method": "reencode", "prompt": None, "params": None, "lang": "de"},
]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_read_input_formats_agree(tmp_path, fmt):
    frame = pd.DataFrame(ROWS)
    path = str(tmp_path / f"m.{fmt}")
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    rows = read_input(path, method="reencode")
    assert [r["video_uri"] for r in rows] == ["s3://b/a.mp4", "s3://b/b.mp4"]
    assert rows[0]["method"] == "reencode" and rows[0]["lang"] == "en"
    assert json.loads(rows[0]["params"]) == {"strength": 0.5}
    assert rows[1]["prompt"] is None
    # the same row read from any format gets the same job id
    ids = [r["job_id"] for r in assign_job_ids(rows)]
    assert ids == [r["job_id"] for r in assign_job_ids(read_input(path, method="reencode"))]


def test_missing_column_and_missing_file(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame([{"url": "x"}]).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="video_uri"):
        read_input(str(path))
    with pytest.raises(ManifestError, match="not found"):
        read_input(str(tmp_path / "none.csv"))
    with pytest.raises(ManifestError, match="unsupported"):
        (tmp_path / "m.xlsx").write_text("x")
        read_input(str(tmp_path / "m.xlsx"))


def test_glob_input_lists_videos_with_fingerprints():
    storage.write_bytes("memory://glob/in/x/1.mp4", b"1")
    storage.write_bytes("memory://glob/in/2.MP4", b"22")
    storage.write_bytes("memory://glob/in/notes.txt", b"3")
    rows = read_input("memory://glob/in/**", method="reencode")
    assert sorted(r["video_uri"] for r in rows) == ["memory://glob/in/2.MP4", "memory://glob/in/x/1.mp4"]
    assert all(r["method"] == "reencode" and r["source_fingerprint"] for r in rows)


def test_job_ids_are_deterministic_and_duplicates_skipped():
    rows = assign_job_ids([dict(ROWS[0]), dict(ROWS[1]), dict(ROWS[0])])
    assert rows[0]["job_id"] == assign_job_ids([dict(ROWS[0])])[0]["job_id"]
    assert rows[0]["job_id"] != rows[1]["job_id"]
    assert rows[2]["job_id"] == rows[0]["job_id"] + "-dup1" and rows[2]["status"] == "skipped"
    changed = dict(ROWS[0], prompt="a dog")
    assert assign_job_ids([changed])[0]["job_id"] != rows[0]["job_id"]


def _row(job, status, when, attempt=1):
    return {"job_id": job, "video_id": job, "status": status, "attempt": attempt, "lang": "en",
            "finished_at": pd.Timestamp(when, tz="UTC").to_pydatetime(), "stage_seconds": {"decode": 0.5}}


def test_store_merges_latest_attempt_and_compacts(tmp_path):
    schema = output_schema(["lang"])
    store = ManifestStore(str(tmp_path), "r1", schema, lambda r: manifest.to_output_record(r, ["lang"]))
    store.write_part([_row("a", "error", "2026-01-01"), _row("b", "ok", "2026-01-01")])
    store2 = ManifestStore(str(tmp_path), "r2", schema, lambda r: manifest.to_output_record(r, ["lang"]))
    store2.write_part([_row("a", "ok", "2026-01-02", attempt=2) | {"run_id": "r2"}])
    prev = scan_previous(store2)
    status, attempt = prev.lookup(job_keys(["a", "b"]))
    assert status.tolist() == [STATUS_CODE["ok"]] * 2 and attempt.tolist() == [2, 1]
    compaction.compact(store2, job_keys(["a"]), "r2")
    assert sorted(store2.read()["job_id"]) == ["a", "b"]
    assert len(store2.part_urls()) == 1
    table = pq.read_table(store2.part_urls()[0])
    assert table.num_rows == 2 and json.loads(table.column("stage_seconds")[0].as_py()) == {"decode": 0.5}
    assert table.schema.field("finished_at").type == pa.timestamp("us", tz="UTC")


def test_torn_part_is_skipped(tmp_path):
    store = ManifestStore(str(tmp_path), "r", output_schema([]), lambda r: manifest.to_output_record(r, []))
    store.write_part([_row("a", "ok", "2026-01-01")])
    storage.write_bytes(storage.join_url(store.url, "part-crash-00001.parquet"), b"PAR1 torn")
    assert list(store.read()["job_id"]) == ["a"]
