"""A run's driver log, kept with its outputs: ``{output}/logs/{run_id}-driver.log``.

While a run executes, every log record of the driver (vidflow's and Ray Data's loggers) is
also written to a local file, which is copied (atomically) under the output URL when the run
ends or stops, and on :meth:`RunLog.flush`. The log names rows by ``job_id``; it never holds
configuration values (secrets stay out of it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

from pipeline import storage
from pipeline.storage import StorageOptions

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGERS = ("", "ray.data")  # the root logger, and Ray Data's (which does not propagate to it)


class RunLog:
    def __init__(self, output_url: str, run_id: str, options: StorageOptions | None = None):
        self.url = storage.join_url(output_url, "logs", f"{storage.safe_id(run_id)}-driver.log")
        self.options = options
        fd, self.path = tempfile.mkstemp(prefix="vidflow-run-", suffix=".log")
        os.close(fd)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.INFO)

    def __enter__(self) -> RunLog:
        root = logging.getLogger()
        self._root_level = root.level
        if root.getEffectiveLevel() > logging.INFO:  # the file keeps INFO even where the console shows less
            root.setLevel(logging.INFO)
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self.handler)
        return self

    def flush(self) -> str | None:
        """Copy the log so far under the output URL; returns its URL (None when the copy failed)."""
        self.handler.flush()
        try:
            return storage.upload_file(self.path, self.url, self.options)
        except Exception:  # noqa: BLE001 - a log copy must never end a run
            return None

    def __exit__(self, *exc) -> None:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(self.handler)
        logging.getLogger().setLevel(self._root_level)
        self.flush()
        self.handler.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
