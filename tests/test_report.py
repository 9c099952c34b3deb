import json

from pipeline import report

ROWS = [
    {"job_id": "1", "video_id": "a", "method": "reencode", "status": "ok", "run_id": "r",
     "stage_seconds": json.dumps({"decode": 1.0, "encode": 2.0}), "output_uri": "/out/videos/a/1.mp4",
     "preview_uri": "/out/previews/a/1.gif", "outputs": "{}"},
    {"job_id": "2", "video_id": "b<script>", "method": "reencode", "status": "error", "run_id": "r",
     "error_stage": "decode", "error": "VideoDecodeError: empty file", "stage_seconds": {"decode": 0.5}},
    {"job_id": "3", "video_id": "c", "method": "x", "status": "error", "run_id": "old",
     "error_stage": "validate", "error": "UnknownMethodError: unknown method 'x'"},
    {"job_id": "4", "video_id": "d", "status": "skipped", "run_id": "r"},
]


def test_summary_counts_histograms_and_throughput():
    s = report.summarize(ROWS, wall_seconds=30.0, run_id="r")
    assert s["counts"] == {"ok": 1, "error": 2, "skipped": 1}
    assert s["failures_by_stage"] == {"decode": 1, "validate": 1}
    assert s["failures_by_type"] == {"VideoDecodeError": 1, "UnknownMethodError": 1}
    assert s["stage_seconds"]["decode"] == {"total": 1.5, "mean": 0.75, "rows": 2}
    assert s["videos_per_minute"] == 2.0  # 1 ok row in 0.5 min


def test_html_escapes_and_links_relative_previews():
    page = report.render_html(ROWS, report.summarize(ROWS, 1.0), "/out")
    assert "b&lt;script&gt;" in page and "<script>" not in page
    assert "src='previews/a/1.gif'" in page and "href='videos/a/1.mp4'" in page
    assert "VideoDecodeError: empty file" in page
