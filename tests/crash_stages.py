"""Test-only stages that misbehave on purpose (imported by Ray workers as ``tests.crash_stages``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from pipeline.config import Resources
from pipeline.stage import Stage


@dataclass(frozen=True)
class CrashConfig:
    resources: Resources = field(default_factory=lambda: Resources(num_cpus=0.5, row_timeout_s=4.0))


class CrashingStage(Stage):
    """Kills its worker on rows whose URI contains ``exit``, hangs on ``hang``, passes the rest."""

    name = "crashy"
    config_class = CrashConfig

    def process(self, row: dict) -> dict:
        uri = str(row.get("video_uri"))
        if "exit" in uri:
            os._exit(3)  # as a segfault or an OOM kill would: no exception, no cleanup
        if "hang" in uri:
            time.sleep(10_000)
        row["crashy"] = "passed"
        return row


class BrokenSetupStage(Stage):
    """A stage whose model never loads."""

    name = "broken"
    config_class = CrashConfig

    def setup(self) -> None:
        raise OSError("weights not found at /nowhere")

    def process(self, row: dict) -> dict:
        return row
