"""The driver killed part-way then rerun; and a job submitted with `ray job submit`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pandas as pd

from tests.servers import free_port, wait_http

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _many_rows(sample_dir: str, path: str, n: int) -> int:
    src = pd.read_csv(os.path.join(sample_dir, "manifest.csv"))
    rows = []
    for i in range(n):
        row = src.iloc[i % len(src)].to_dict()
        row["video_id"] = f"clip{i:02d}"
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return n


def _parts_rows(out: str) -> int:
    folder = os.path.join(out, "manifest")
    if not os.path.isdir(folder):
        return 0
    total = 0
    for name in os.listdir(folder):
        if name.endswith(".parquet") and not name.startswith(".tmp-"):
            total += len(pd.read_parquet(os.path.join(folder, name)))
    return total


def _start_job(sample_dir: str, tmp_path, rows: int, parts_before: int, stderr=subprocess.DEVNULL):
    """The edit job over ``rows`` rows in its own process and local Ray, once ``parts_before`` rows are
    in the manifest; returns (process, job args, output URL)."""
    manifest_path = str(tmp_path / "m.csv")
    _many_rows(sample_dir, manifest_path, rows)
    out = str(tmp_path / "out")
    args = ["--manifest", manifest_path, "--output", out, "--set", "run.flush_rows=1",
            "--set", "decode.max_frames=24", "--set", "encode.preset=medium"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.edit_videos", *args, "--set", "run.num_cpus=2"],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)
    deadline = time.monotonic() + 240
    while _parts_rows(out) < parts_before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    return proc, args, out


def test_sigkill_of_driver_then_rerun_completes_the_set(ray_local, sample_dir, tmp_path):
    from jobs import edit_videos

    n = 16
    proc, args, out = _start_job(sample_dir, tmp_path, n, parts_before=2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(30)
    done_before = _parts_rows(out)
    assert 2 <= done_before < n
    assert edit_videos.main(args) == 0
    frame = pd.read_parquet(os.path.join(out, "manifest"))
    assert len(frame) == n and frame.job_id.is_unique and (frame.status == "ok").all()
    assert sorted(frame.video_id) == [f"clip{i:02d}" for i in range(n)]
    assert frame.run_id.nunique() == 2  # rows finished before the kill were kept, not redone
    assert len(os.listdir(os.path.join(out, "videos"))) == n


def test_ray_job_submit_to_a_local_cluster(sample_dir, tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port, dash = free_port(), free_port()
    # a short private temp dir names every process of this cluster, so only they are stopped
    # (`ray stop` would stop every Ray on the machine, the test session's own included)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
                    f"--temp-dir={temp_dir}",
                    # other local clusters (the test session's own Ray) hold the default agent ports
                    f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                    f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=180)
    try:
        address = f"http://127.0.0.1:{dash}"
        wait_http(address + "/api/version", timeout=120)
        out = str(tmp_path / "out")
        manifest_path = os.path.join(sample_dir, "manifest.csv")
        cmd = [ray_bin, "job", "submit", "--address", address, "--working-dir", ROOT,
             "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "*.egg-info"]}), "--",
             "python", "-m", "jobs.edit_videos", "--manifest", manifest_path, "--output", out,
             "--set", "decode.max_frames=8", "--set", "encode.preset=ultrafast"]
        for _ in range(20):  # the job agent comes up a little after the dashboard
            result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
            if "No available agent" not in result.stderr:
                break
            time.sleep(3)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "succeeded" in result.stdout
        frame = pd.read_parquet(os.path.join(out, "manifest"))
        assert len(frame) == 3 and (frame.status == "ok").all()
        assert os.path.exists(os.path.join(out, "report.html"))
    finally:
        subprocess.run(["pkill", "-9", "-f", temp_dir], capture_output=True, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_lost_cluster_is_exit_3_with_a_message_and_a_rerun_resumes(ray_local, sample_dir, tmp_path):
    import psutil

    from jobs import edit_videos

    n = 12
    proc, args, out = _start_job(sample_dir, tmp_path, n, parts_before=1, stderr=subprocess.PIPE)
    # another process stops every Ray on the machine: here, the job's own local Ray only
    for child in psutil.Process(proc.pid).children(recursive=True):
        if any(name in " ".join(child.cmdline()) for name in ("gcs_server", "raylet")):
            child.kill()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err[-2000:]
    assert "the run stopped" in err and "a rerun with the same --output resumes" in err
    assert json.load(open(os.path.join(out, "summary.json")))["interrupted"]
    assert edit_videos.main(args) == 0
    frame = pd.read_parquet(os.path.join(out, "manifest"))
    assert len(frame) == n and frame.job_id.is_unique and (frame.status == "ok").all()
