import json

from pipeline import report
from pipeline.run_stats import RunStats, small_record

ROWS = [
    {"job_id": "1", "video_id": "a", "method": "reencode", "status": "ok", "run_id": "r",
     "stage_seconds": json.dumps({"decode": 1.0, "encode": 2.0}), "output_uri": "/out/videos/a/1.mp4",
     "preview_uri": "/out/previews/a/1.webp", "outputs": "{}"},
    {"job_id": "2", "video_id": "b<script>", "method": "reencode", "status": "error", "run_id": "r",
     "error_stage": "decode", "error": "VideoDecodeError: empty file", "stage_seconds": {"decode": 0.5}},
    {"job_id": "3", "video_id": "c", "method": "x", "status": "error", "run_id": "r",
     "error_stage": "validate", "error": "UnknownMethodError: unknown method 'x'"},
    {"job_id": "4", "video_id": "d", "status": "skipped", "run_id": "r"},
]


def _stats() -> RunStats:
    stats = RunStats()
    for row in ROWS:
        stats.add(small_record(row))
    return stats


def test_summary_counts_histograms_and_throughput():
    s = _stats().summary(30.0, run_id="r")
    assert s["counts"] == {"ok": 1, "error": 2, "skipped": 1}
    assert s["failures_by_stage"] == {"decode": 1, "validate": 1}
    assert s["failures_by_type"] == {"VideoDecodeError": 1, "UnknownMethodError": 1}
    assert s["stage_seconds"]["decode"]["rows"] == 2 and s["stage_seconds"]["decode"]["total"] == 1.5
    assert 0.45 < s["stage_seconds"]["decode"]["p50"] < 0.55  # the lower of the two, within a histogram bin
    assert s["videos_per_minute"] == 2.0  # 1 ok row in 0.5 min


def test_html_escapes_and_links_relative_previews(tmp_path):
    stats = _stats()
    page = report.render_html(stats.summary(1.0), stats.examples, stats.sample, "/out")
    assert "b&lt;script&gt;" in page and "<script>" not in page
    assert "src='previews/a/1.webp'" in page and "href='videos/a/1.mp4'" in page
    assert "VideoDecodeError: empty file" in page
    summary_url, report_url = report.write_report(stats.summary(1.0), stats.examples, stats.sample, str(tmp_path))
    assert json.load(open(summary_url))["counts"]["error"] == 2 and open(report_url).read().startswith("<!doctype")


def test_labels_name_the_window_of_a_windowed_atlas_output():
    from pipeline.report import label

    assert label("atlas_fg_atlas") == "foreground atlas"
    assert label("atlas_fg_atlas_w000") == "foreground atlas, window 1"
    assert label("atlas_bg_atlas_w012") == "background atlas, window 13"
    assert label("some_output") == "some output"
