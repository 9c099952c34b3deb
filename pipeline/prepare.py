"""Cheap per-row work on blocks of input rows: the first step of every run's plan.

:func:`prepare_rows` runs in Ray tasks over blocks of hundreds to thousands of input rows
(never in the driver): it maps columns (a job's ``row_mapper``, e.g. WebVid's), gives each
row its deterministic ``job_id``, claims it in the run-wide registry so an exact repeat
becomes ``{job_id}-dupN`` / ``skipped``, drops rows an earlier run finished (the done-set
from :mod:`pipeline.resume`), stamps ``attempt``/``run_id``/``config_hash``, decides whether
the row gets previews (the first ``preview_first`` rows and one in ``preview_every`` after),
and runs the job's check stages (validation) with the stage contract's error capture.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.dedupe import job_keys
from pipeline.manifest import as_text, make_job_id
from pipeline.resume import DONE_CODES, STATUS_NAMES, PreviousOutput
from pipeline.stage import STATUS_PENDING, STATUS_SKIPPED, Stage, mark_error, run_stage
from pipeline.stage_log import row_context

PREVIEW_KEY = "make_previews"  # row key: whether stages write previews for this row
PREVIOUS_STATUS_KEY = "_previous_status"  # row key: the job's status in the output before this run


@dataclass
class PrepSpec:
    """What a job's preparation does to each input row."""

    run_id: str
    config_hash: str
    method: str | None = None  # the method of rows that name none
    row_mapper: Callable[[dict], dict] | None = None  # column mapping (e.g. WebVid -> vidflow)
    checks: Sequence[Stage] = field(default_factory=tuple)  # cheap stages run here (validation)
    preview_first: int = 20  # rows (in claim order) that always get previews
    preview_every: int = 50  # after those, one row in this many (0: no more)


BAD_INPUT_KEY = "_bad_input"  # row key: why an input line could not be read (the row becomes an error)


def rows_from_table(table: pa.Table) -> list[dict]:
    """Rows of an input block with every value as text or None (``params`` objects as JSON). The
    CSV reader's columns for malformed records (``BAD_INPUT_KEY``, ``input_line``) stay only on
    the rows they describe."""
    if BAD_INPUT_KEY in table.column_names and table.column(BAD_INPUT_KEY).null_count == table.num_rows:
        table = table.drop_columns([BAD_INPUT_KEY, "input_line"])  # the usual block: no malformed record
    rows = [{str(k): as_text(v) for k, v in rec.items()} for rec in table.to_pylist()]
    if BAD_INPUT_KEY in table.column_names:
        for row in rows:
            if row.get(BAD_INPUT_KEY) is None:
                row.pop(BAD_INPUT_KEY, None)
                row.pop("input_line", None)
    return rows


def rows_from_jsonl(lines: Sequence[str]) -> list[dict]:
    """Rows of JSONL text lines (blank lines skipped). A line that is not a JSON object becomes a row
    holding the line (``input_line``) and the reason, which :func:`prepare_rows` records as its error."""
    rows = []
    for line in lines:
        if not line or not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"a JSONL line must be an object, got {type(value).__name__}")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            rows.append({"input_line": line.strip()[:500],
                         BAD_INPUT_KEY: f"ManifestLineError: {exc} (line {line.strip()[:80]!r})"})
            continue
        rows.append({str(k): as_text(v) for k, v in value.items()})
    return rows


def wants_previews(seq: int, first: int, every: int) -> bool:
    """Whether the row claimed ``seq``-th in a run gets previews."""
    return seq < first or (every > 0 and (seq - first) % every == 0)


def prepare_rows(raw: list[dict], spec: PrepSpec, previous: PreviousOutput,
                 claim: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[list[dict], int]:
    """Prepare one block of input rows (see the module docstring).

    ``claim`` is :meth:`pipeline.dedupe.InputRegistry.claim` (through Ray in a run). Returns the
    rows still to run or record (pending, failed checks, duplicates) and the count of rows
    dropped because an earlier run finished them.
    """
    rows = []
    for row in raw:
        if spec.method and not row.get("method"):
            row["method"] = spec.method
        if spec.row_mapper is not None:
            row = spec.row_mapper(row)
        rows.append(row)
    base = [make_job_id(r) for r in rows]
    prior, seq = claim(job_keys(base))
    ids = [b if int(p) == 0 else f"{b}-dup{int(p)}" for b, p in zip(base, prior)]
    status, attempts = previous.lookup(job_keys(ids))
    out, done = [], 0
    for row, job_id, b, p, s, code, attempt in zip(rows, ids, base, prior, seq, status, attempts):
        if int(code) in DONE_CODES:
            done += 1
            continue
        row["job_id"] = job_id
        row["status"] = STATUS_PENDING
        row["attempt"] = int(attempt) + 1
        row["run_id"] = spec.run_id
        row["config_hash"] = spec.config_hash
        row[PREVIEW_KEY] = wants_previews(int(s), spec.preview_first, spec.preview_every)
        row[PREVIOUS_STATUS_KEY] = STATUS_NAMES[int(code)] if int(code) else None
        if int(p):
            row["status"] = STATUS_SKIPPED
            row["error"] = f"duplicate of input row with job_id {b}"
        bad = row.pop(BAD_INPUT_KEY, None)
        if bad:
            row = mark_error(row, "input", bad)
        for stage in spec.checks:
            with row_context(stage.name, job_id):
                row = run_stage(stage, row)
        out.append(row)
    return out, done
