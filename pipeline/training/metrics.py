"""Metric rows of a training run, kept as CSV and JSON Lines at the output URL (rank 0 writes).

Rows are kept in memory (one per ``log_every`` steps: 4k rows for a 40k-step run at 10) and the
two files are rewritten atomically after each row, so an object store always holds a whole file.
A resumed run reads the rows back and drops those past its checkpoint's step.
"""

from __future__ import annotations

import csv
import io
import json

from pipeline import storage


class MetricsWriter:
    """Appends metric dicts (each with a ``step``) to ``{prefix}.csv`` and ``{prefix}.jsonl``."""

    def __init__(self, prefix_url: str, resume_step: int | None = None, options=None):
        self.csv_url, self.jsonl_url = prefix_url + ".csv", prefix_url + ".jsonl"
        self.options = options
        self.rows: list[dict] = []
        if resume_step is not None and storage.exists(self.jsonl_url, options):
            text = storage.read_bytes(self.jsonl_url, options).decode()
            self.rows = [r for r in map(json.loads, filter(None, text.splitlines())) if r["step"] <= resume_step]

    def append(self, row: dict) -> None:
        self.rows.append(row)
        storage.write_bytes(self.jsonl_url, "".join(json.dumps(r) + "\n" for r in self.rows).encode(), self.options)
        storage.write_bytes(self.csv_url, rows_to_csv(self.rows).encode(), self.options)


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text with the union of the rows' keys as columns (first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
