"""Turn a list of stages into a Ray Data plan, stream the results into the manifest.

The only module that imports Ray. Each stage becomes a ``map_batches`` over an actor pool
(``ActorPoolStrategy(min_size, max_size)``) with the stage's ``num_cpus``, ``num_gpus`` and
batch size. Rows travel between stages as two columns with a fixed schema (``row_json``,
``arrays``; see :func:`pipeline.stage.pack_row`), so blocks from rows that failed early and
rows that carry frames never disagree on a schema. The driver consumes the stream and writes
manifest parts as rows finish: a crash keeps what finished.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.stage import (
    STATUS_ERROR,
    Stage,
    mark_error,
    pack_row,
    run_stage,
    unpack_row,
)

log = logging.getLogger(__name__)

TRANSPORT_SCHEMA = pa.schema([pa.field("row_json", pa.large_string()), pa.field("arrays", pa.large_binary())])


def _to_table(rows: list[dict]) -> pa.Table:
    packed = [pack_row(r) for r in rows]
    return pa.table({"row_json": [p[0] for p in packed], "arrays": [p[1] for p in packed]},
                    schema=TRANSPORT_SCHEMA)


def _from_table(table: pa.Table) -> list[dict]:
    cols = table.to_pydict()
    return [unpack_row(j, b) for j, b in zip(cols["row_json"], cols["arrays"])]


class StageActor:
    """Ray Data callable class: builds the stage and runs ``setup()`` once per actor.

    A setup failure (a model that will not load) does not kill the job: every row the actor
    receives gets that error, so the run finishes and reports it.
    """

    def __init__(self, stage_cls: type[Stage], config, context):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.stage = stage_cls(config, context)
        self.setup_error: str | None = None
        try:
            self.stage.setup()
        except Exception as exc:  # noqa: BLE001
            from pipeline.stage import format_error

            self.setup_error = f"setup failed: {format_error(exc)}"
            log.exception("stage %s setup failed", self.stage.name)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = _from_table(batch)
        out = []
        for row in rows:
            if self.setup_error and row.get("status") != STATUS_ERROR and self.stage.applies_to(row):
                out.append(mark_error(row, self.stage.name, self.setup_error))
            else:
                out.append(run_stage(self.stage, row))
        return _to_table(out)


@dataclass
class StageSpec:
    """A stage class with its config, as the runner schedules it."""

    stage_cls: type[Stage]
    config: object

    def build(self, context) -> Stage:
        return self.stage_cls(self.config, context)


@dataclass
class RunResult:
    rows: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``) or start
    a local one with ``num_cpus``; turn Ray Data's progress bars on."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        else:
            # workers of a local cluster inherit this environment: let them import the project
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
            # address="local": always a fresh local instance, never a cluster that `ray start`
            # left on this machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.execution_options.preserve_order = False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def build_dataset(rows: list[dict], stages: list[StageSpec], context, rows_per_block: int = 1):
    """The lazy Ray Data plan: input rows -> one ``map_batches`` per stage."""
    import ray
    from ray.data import ActorPoolStrategy

    blocks = [_to_table(rows[i:i + rows_per_block]) for i in range(0, len(rows), rows_per_block)]
    ds = ray.data.from_arrow(blocks)
    for spec in stages:
        res = spec.build(context).resources
        ds = ds.map_batches(
            StageActor,
            fn_constructor_kwargs={"stage_cls": spec.stage_cls, "config": spec.config, "context": context},
            compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            batch_size=res.batch_size,
            batch_format="pyarrow",
        )
    return ds


def run(rows: list[dict], stages: list[StageSpec], context, on_rows: Callable[[list[dict]], None],
        *, flush_rows: int = 8, flush_seconds: float = 20.0, keep_arrays: Collection[str] = ()) -> RunResult:
    """Execute ``stages`` over ``rows`` on Ray; ``on_rows`` receives finished rows in chunks.

    Array values left in finished rows are dropped before ``on_rows`` sees them, except those
    named in ``keep_arrays`` (a job that writes arrays into its output, such as trajectory shards).
    """
    start = time.perf_counter()
    result = RunResult()
    if not rows:
        return result
    ds = build_dataset(rows, stages, context)
    pending: list[dict] = []
    last_flush = time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in _from_table(batch):
            for key in [k for k, v in row.items()
                        if hasattr(v, "shape") and hasattr(v, "dtype") and k not in keep_arrays]:
                del row[key]
            pending.append(row)
        if len(pending) >= flush_rows or time.monotonic() - last_flush >= flush_seconds:
            on_rows(pending)
            result.rows.extend(pending)
            pending, last_flush = [], time.monotonic()
    if pending:
        on_rows(pending)
        result.rows.extend(pending)
    result.wall_seconds = time.perf_counter() - start
    return result
