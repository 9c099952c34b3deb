"""The streaming plan: input -> prepare -> stages -> sink, on Ray Data; the driver keeps counters.

The engine's Ray side (with :mod:`pipeline.input_source`). The plan of every job:

1. the input, read by Ray Data (:mod:`pipeline.input_source`);
2. ``prepare``: tasks over blocks of ``run.prepare_block_rows`` rows (:mod:`pipeline.prepare`):
   column mapping, job ids, duplicates (a run-wide :class:`~pipeline.dedupe.InputRegistry`
   actor), the resume done-set, validation;
3. a streaming repartition to one row per block, so heavy stages take one row per call;
4. one ``map_batches`` per stage: an actor pool (``compute: actors``: a stage that loads a
   model once) or short tasks (``compute: tasks``: light stages that hold no CPU while idle),
   every row guarded by the run's :class:`~pipeline.row_guard.RowLedger` (crashes, hangs);
5. ``sink`` tasks that hand finished rows to :class:`~pipeline.writers.PartWriter` actors
   (manifest parts / shards written by workers, within ``run.flush_seconds``) and return one
   small status record per row, which is all the driver ever receives.

Rows travel as two columns with a fixed schema (``row_json``, ``arrays``; see
:func:`pipeline.stage.pack_row`), so blocks never disagree on a schema.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from pipeline import stage_log
from pipeline.dedupe import InputRegistry, job_key
from pipeline.input_source import InputInfo, open_dataset
from pipeline.prepare import PrepSpec, prepare_rows, rows_from_jsonl, rows_from_table
from pipeline.progress import InputCount, ProgressTicker
from pipeline.resume import PreviousOutput
from pipeline.row_guard import RowLedger, guarded_run
from pipeline.run_stats import small_record
from pipeline.stage import STATUS_OK, STATUS_PENDING, Stage, format_error, mark_error, pack_row, unpack_row
from pipeline.writers import PartWriter

log = logging.getLogger(__name__)

TRANSPORT_SCHEMA = pa.schema([pa.field("row_json", pa.large_string()), pa.field("arrays", pa.large_binary())])
RECORD_SCHEMA = pa.schema([pa.field("record", pa.large_string())])
LIGHT_CPUS = 0.25  # CPUs of the prepare and sink tasks


def to_table(rows: list[dict]) -> pa.Table:
    packed = [pack_row(r) for r in rows]
    return pa.table({"row_json": [p[0] for p in packed], "arrays": [p[1] for p in packed]}, schema=TRANSPORT_SCHEMA)


def from_table(table: pa.Table) -> list[dict]:
    cols = table.to_pydict()
    return [unpack_row(j, b) for j, b in zip(cols["row_json"], cols["arrays"])]


@dataclass
class StageSpec:
    """A stage class with its config, as the runner schedules it."""

    stage_cls: type[Stage]
    config: object

    def build(self, context) -> Stage:
        return self.stage_cls(self.config, context)


@dataclass(frozen=True)
class Guard:
    """How rows are protected from crashing or hanging workers (from ``run:`` config)."""

    max_row_attempts: int = 2
    setup_attempts: int = 2
    max_actor_restarts: int = 16


class _Ledger:
    """The ledger actor seen through synchronous calls (``end`` does not wait)."""

    def __init__(self, handle):
        self.handle = handle

    def begin(self, stage, job_id):
        import ray

        return ray.get(self.handle.begin.remote(stage, job_id))

    def fail(self, stage, job_id, reason):
        import ray

        ray.get(self.handle.fail.remote(stage, job_id, reason))

    def end(self, stage, job_id):
        self.handle.end.remote(stage, job_id)


def _process_batch(stage: Stage, batch: pa.Table, ledger, guard: Guard, setup_error: str | None,
                   log_sink=None) -> pa.Table:
    out = []
    try:
        for row in from_table(batch):
            with stage_log.row_context(stage.name, row.get("job_id")):
                if setup_error and row.get("status") == STATUS_PENDING and stage.applies_to(row):
                    out.append(mark_error(row, stage.name, setup_error))
                else:
                    out.append(guarded_run(stage, row, ledger, max_row_attempts=guard.max_row_attempts,
                                           row_timeout_s=stage.resources.row_timeout_s))
    finally:
        stage_log.ship(log_sink)
    return to_table(out)


class StageActor:
    """Ray Data callable class: builds the stage and runs ``setup()`` once per actor.

    A failed ``setup()`` is counted in the ledger; the first ``guard.setup_attempts - 1``
    failures end the actor so Ray Data starts a fresh one; after that the actor stays and
    every row it receives gets the setup error, so the run finishes and reports it.
    """

    def __init__(self, stage_cls: type[Stage], config, context, ledger, guard: Guard, log_sink=None):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.log_sink = log_sink
        stage_log.install(log_sink)
        self.stage = stage_cls(config, context)
        self.ledger = _Ledger(ledger)
        self.guard = guard
        self.setup_error: str | None = None
        try:
            self.stage.setup()
        except Exception as exc:  # noqa: BLE001
            import ray

            failures = ray.get(ledger.setup_failed.remote(self.stage.name))
            log.exception("stage %s setup failed (%d of %d attempts)", self.stage.name, failures,
                          guard.setup_attempts)
            if failures < guard.setup_attempts:
                raise
            self.setup_error = f"setup failed: {format_error(exc)}"
        finally:
            stage_log.ship(log_sink)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _process_batch(self.stage, batch, self.ledger, self.guard, self.setup_error, self.log_sink)


_TASK_STAGES: dict[tuple, tuple[Stage, str | None]] = {}  # per worker process: stages built by tasks


def stage_task(batch: pa.Table, stage_cls: type[Stage], config, context, ledger, guard: Guard,
               log_sink=None) -> pa.Table:
    """A light stage as a Ray task; the stage is built and set up once per worker process."""
    # each task gets a fresh copy of config: key by its value, so one worker process builds the stage once
    key = (stage_cls.__module__, stage_cls.__qualname__, repr(config), context.run_id)
    stage_log.install(log_sink)
    if key not in _TASK_STAGES:
        stage, error = stage_cls(config, context), None
        for attempt in range(guard.setup_attempts):
            try:
                stage.setup()
                error = None
                break
            except Exception as exc:  # noqa: BLE001
                error = f"setup failed: {format_error(exc)}"
                log.exception("stage %s setup failed (attempt %d)", stage.name, attempt + 1)
        _TASK_STAGES[key] = (stage, error)
    stage, error = _TASK_STAGES[key]
    return _process_batch(stage, batch, _Ledger(ledger), guard, error, log_sink)


COUNT_SCHEMA = pa.schema([(name, pa.int64()) for name in ("to_process", "error", "skipped", "already_done")])


def prepare_task(batch: pa.Table, spec: PrepSpec, previous: PreviousOutput, registry, jsonl: bool,
                 count_only: bool = False, log_sink=None) -> pa.Table:
    """Step 2 of the plan for one block of input rows (``count_only``: one row of counts, for dry runs)."""
    import ray

    stage_log.install(log_sink)
    raw = rows_from_jsonl(batch.column("text").to_pylist()) if jsonl else rows_from_table(batch)
    try:
        rows, done = prepare_rows(raw, spec, previous, lambda keys: ray.get(registry.claim.remote(keys)))
    finally:
        stage_log.ship(log_sink)
    if count_only:
        status = [r.get("status") for r in rows]
        counts = {"to_process": status.count(STATUS_PENDING), "error": status.count("error"),
                  "skipped": status.count("skipped"), "already_done": done}
        return pa.table({k: [v] for k, v in counts.items()}, schema=COUNT_SCHEMA)
    if done:
        ray.get(registry.add_done.remote(done))  # counted before the block's rows move on
    return to_table(rows)


def finish_row(row: dict, keep_arrays: Collection[str]) -> dict:
    """A row leaving the plan: pending becomes ok, arrays not kept are dropped (the writer stamps
    ``finished_at`` when the row reaches it)."""
    if row.get("status") == STATUS_PENDING:
        row["status"] = STATUS_OK
    for key in [k for k, v in row.items() if isinstance(v, np.ndarray) and k not in keep_arrays]:
        del row[key]
    return row


def sink_task(batch: pa.Table, writers: list, keep_arrays: tuple[str, ...]) -> pa.Table:
    """Step 5: hand finished rows to their writer (by job key) and return small records."""
    import ray

    by_writer: dict[int, list] = {}
    records = []
    for row in from_table(batch):
        row = finish_row(row, keep_arrays)
        by_writer.setdefault(job_key(str(row.get("job_id"))) % len(writers), []).append(pack_row(row))
        records.append(json.dumps(small_record(row)))
    ray.get([writers[i].add.remote(packed) for i, packed in by_writer.items()])
    return pa.table({"record": records}, schema=RECORD_SCHEMA)


class ClusterLostError(RuntimeError):
    """The Ray cluster (or the plan's execution) went away mid-run."""


def fit_cpus(resources: list, total: float) -> tuple[list[float], float]:
    """Per-stage ``num_cpus`` so the plan always progresses on ``total`` CPUs; and the light tasks' CPUs.

    Every actor pool's minimum plus one light-stage task plus one prepare/sink task must fit at
    once, or a row could wait forever behind idle actors (on 2 CPUs, two 1-CPU model stages would
    leave nothing for decode and encode). When they do not fit, actor CPUs are scaled down
    (Ray's CPUs are logical: the actors still run) and light tasks get what is left.
    ``resources``: :class:`pipeline.config.Resources` per stage, in plan order.
    """
    heavy = sum(r.num_cpus * r.min_actors for r in resources if r.compute == "actors")
    light = max([r.num_cpus for r in resources if r.compute == "tasks"] + [LIGHT_CPUS])
    if heavy + light + LIGHT_CPUS <= total:
        return [float(r.num_cpus) for r in resources], LIGHT_CPUS
    reserve = max(2 * LIGHT_CPUS, 0.25 * total)
    scale = max(0.01, (total - reserve) / heavy) if heavy else 1.0
    light_cpus = max(0.05, min(light, reserve - LIGHT_CPUS))
    out = [r.num_cpus * min(1.0, scale) if r.compute == "actors" else min(r.num_cpus, light_cpus) for r in resources]
    return out, min(LIGHT_CPUS, reserve / 2)


@dataclass
class Plan:
    """Everything a run executes (see the module docstring)."""

    info: InputInfo
    prep: PrepSpec
    previous: PreviousOutput
    stages: list[StageSpec]
    context: object
    store: object = None  # ManifestStore / ShardStore: what the writers write
    guard: Guard = Guard()
    writers: int = 1
    flush_rows: int = 256
    flush_seconds: float = 10.0
    keep_arrays: tuple[str, ...] = ()
    limit: int | None = None
    prepare_block_rows: int = 1000
    rows_per_block: int = 1


def _prepared(plan: Plan, registry, light_cpus: float, count_only: bool = False, log_sink=None):
    options = getattr(plan.context, "storage", None)
    ds = open_dataset(plan.info, options, limit=plan.limit, num_cpus=light_cpus)
    jsonl = plan.info.kind in ("jsonl", "webdataset")  # WebDataset shards are indexed into JSONL rows
    return ds.map_batches(prepare_task, fn_kwargs={"spec": plan.prep, "previous": plan.previous,
                                                   "registry": registry, "jsonl": jsonl,
                                                   "count_only": count_only, "log_sink": log_sink},
                          batch_size=plan.prepare_block_rows, batch_format="pyarrow", num_cpus=light_cpus)


def small_blocks(ds, rows: int, num_cpus: float):
    """``ds`` split into blocks of ``rows`` rows by a streaming repartition that fuses with the prepare tasks.

    Ray 2.60 gives the repartition's tasks Ray's default of 1 CPU and no argument to change it;
    on a 2-CPU machine with two model stages holding 1.5 CPUs that task could never start. Its
    logical operator's remote args are set to the light tasks' CPUs (Ray is pinned, see
    pyproject.toml), which also lets it fuse into the prepare tasks.
    """
    ds = ds.repartition(target_num_rows_per_block=rows)
    op = ds._logical_plan.dag
    op.ray_remote_args["num_cpus"] = num_cpus  # the (frozen) operator holds a mutable dict
    return ds


def count_prepared(plan: Plan) -> dict:
    """Dry run: prepare every input row on Ray and count what a run would do; nothing is written."""
    import ray

    registry = ray.remote(InputRegistry).options(num_cpus=0).remote()
    counts = dict.fromkeys(COUNT_SCHEMA.names, 0)
    ds = _prepared(plan, registry, LIGHT_CPUS, count_only=True)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for name in counts:
            counts[name] += int(pa.compute.sum(batch.column(name)).as_py() or 0)
    return counts


class SinkingStageActor(StageActor):
    def __init__(self, *args, sink: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.sink = sink

    def __call__(self, batch: pa.Table) -> pa.Table:
        return sink_task(super().__call__(batch), **self.sink)


def sinking_stage_task(batch: pa.Table, sink: dict | None = None, **kwargs) -> pa.Table:
    out = stage_task(batch, **kwargs)
    return sink_task(out, **sink) if sink else out


class ClusterWatchdog:
    """Notices a lost cluster while the driver waits on it.

    When the GCS goes away, Ray's core worker ends the driver process on its own after
    ``RAY_gcs_rpc_server_reconnect_timeout_s`` (raised to 120 s by :func:`init_ray`), with no
    Python exception. This thread asks the GCS for the cluster's resources every ``interval``
    seconds; when ``misses`` answers in a row fail or take longer than ``timeout``, it calls
    ``on_lost(reason)`` (which reports and exits the process) before that happens.
    """

    def __init__(self, on_lost: Callable[[str], None], *, interval: float = 5.0, timeout: float = 10.0,
                 misses: int = 2, probe: Callable[[], object] | None = None):
        import threading

        self.on_lost, self.interval, self.timeout, self.misses = on_lost, interval, timeout, misses
        self.probe = probe or _probe_cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="vidflow-watchdog")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _ok(self) -> bool:
        import threading

        result: list = []
        worker = threading.Thread(target=lambda: result.append(self._safe_probe()), daemon=True)
        worker.start()
        worker.join(self.timeout)
        return bool(result and result[0])

    def _safe_probe(self) -> bool:
        try:
            self.probe()
            return True
        except Exception:  # noqa: BLE001 - any failure to reach the cluster counts as a miss
            return False

    def _run(self) -> None:
        missed = 0
        while not self._stop.wait(self.interval):
            missed = 0 if self._ok() else missed + 1
            if missed >= self.misses and not self._stop.is_set():
                self.on_lost(f"the Ray cluster stopped answering ({missed} health checks in a row failed)")
                return


def _probe_cluster() -> object:
    import ray

    return ray.cluster_resources()


def execute_plan(plan: Plan, on_record: Callable[[dict], None], on_lost: Callable[[str], None] | None = None,
                 ticker: ProgressTicker | None = None) -> dict:
    """Run the plan; ``on_record`` gets each finished row's small record. Returns the writers'
    and registry's totals. Raises :class:`ClusterLostError` when execution breaks off;
    ``on_lost`` is called from a watchdog thread when the cluster stops answering; ``ticker``
    (the progress line) learns the input's row count from the run's registry."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.max_consecutive_actor_init_deaths = max(ctx.max_consecutive_actor_init_deaths, plan.guard.setup_attempts + 1)
    registry = ray.remote(InputRegistry).options(num_cpus=0).remote()
    if ticker is not None:
        ticker.count_fn = _input_count(plan, registry)
    ledger = ray.remote(RowLedger).options(num_cpus=0).remote()
    writers = [ray.remote(PartWriter).options(num_cpus=0, max_restarts=0).remote(
        plan.store, f"w{i}", flush_rows=plan.flush_rows, flush_seconds=plan.flush_seconds)
        for i in range(max(1, plan.writers))]
    sink = {"writers": writers, "keep_arrays": tuple(plan.keep_arrays)}
    log_sink = ray.remote(stage_log.LogSink).options(num_cpus=0).remote(
        plan.context.output_url, plan.context.run_id, plan.context.storage, flush_seconds=plan.flush_seconds)
    built = [spec.build(plan.context) for spec in plan.stages]
    cpus, light_cpus = fit_cpus([s.resources for s in built], float(ray.cluster_resources().get("CPU", 1.0)))
    ds = small_blocks(_prepared(plan, registry, light_cpus, log_sink=log_sink), plan.rows_per_block, light_cpus)
    if not built:
        ds = ds.map_batches(sink_task, fn_kwargs=sink, batch_size=None, batch_format="pyarrow", num_cpus=light_cpus)
    for i, (spec, stage, ncpu) in enumerate(zip(plan.stages, built, cpus)):
        res = stage.resources
        last = i == len(built) - 1
        common = {"stage_cls": spec.stage_cls, "config": spec.config, "context": plan.context, "ledger": ledger,
                  "guard": plan.guard, "log_sink": log_sink}
        if res.compute == "tasks":
            ds = ds.map_batches(sinking_stage_task, fn_kwargs={**common, "sink": sink if last else None},
                                batch_size=res.batch_size, batch_format="pyarrow", num_cpus=ncpu,
                                num_gpus=res.num_gpus or None, compute=TaskPoolStrategy(size=res.max_actors),
                                max_retries=plan.guard.max_row_attempts + 1)
        else:
            ds = ds.map_batches(SinkingStageActor if last else StageActor,
                                fn_constructor_kwargs={**common, **({"sink": sink} if last else {})},
                                compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
                                batch_size=res.batch_size, batch_format="pyarrow", num_cpus=ncpu,
                                num_gpus=res.num_gpus or None, max_restarts=plan.guard.max_actor_restarts,
                                max_task_retries=plan.guard.max_row_attempts + 1)
        log.info("plan: stage %-20s %s x%d-%d, %.2f CPU, %g GPU, timeout %s", stage.name, res.compute,
                 res.min_actors, res.max_actors, ncpu, res.num_gpus, res.row_timeout_s)
    watchdog = ClusterWatchdog(on_lost) if on_lost else contextlib.nullcontext()
    try:
        with watchdog:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for rec in batch.column("record").to_pylist():
                    on_record(json.loads(rec))
            closed = ray.get([w.close.remote() for w in writers])
            stats = ray.get(registry.stats.remote())
            stats["stage_log"] = _close_log(log_sink)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - any break in execution ends the run with a clear message
        log.error("execution broke off", exc_info=exc)
        _close_quietly(writers)
        raise ClusterLostError(format_error(exc)) from exc
    return {"rows_written": sum(c["rows"] for c in closed), "parts": sum(c["parts"] for c in closed), **stats}


def _input_count(plan: Plan, registry) -> Callable[[], InputCount]:
    total = plan.info.rows
    if total is not None and plan.limit is not None:
        total = min(total, plan.limit)

    def count() -> InputCount:
        import ray

        stats = ray.get(registry.stats.remote(), timeout=5)
        return InputCount(total=total, prepared=int(stats["claimed"]), already_done=int(stats["already_done"]))
    return count


def _close_log(log_sink) -> dict:
    """Close the stage log (after the stages' last lines reached it); never fails the run."""
    import ray

    try:
        closed = ray.get(log_sink.close.remote(), timeout=60)
        log.info("stage log: %d lines in %s", closed["lines"], closed["url"])
        return closed
    except Exception as exc:  # noqa: BLE001 - the manifest is what matters
        log.warning("the stage log could not be closed: %s", format_error(exc))
        return {"lines": 0, "url": None, "parts": 0}


def _close_quietly(writers: list) -> None:
    """Best effort: let live writers write what they hold (a lost cluster has none left)."""
    import ray

    try:
        ray.get([w.close.remote() for w in writers], timeout=30)
    except Exception:  # noqa: BLE001
        log.warning("writers could not be closed: their unwritten rows run again on the next run")


def ray_map(fn: Callable, args: list[tuple], num_cpus: float = LIGHT_CPUS) -> list:
    """Run ``fn(*a)`` for each ``a`` as Ray tasks; results in order."""
    import ray

    remote = ray.remote(num_cpus=num_cpus)(fn)
    return ray.get([remote.remote(*a) for a in args])


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Connect to the cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``) or start
    a local one with ``num_cpus`` (serving the Ray dashboard when ``dashboard``); turn Ray Data's
    progress bars on."""
    import ray

    # the watchdog (ClusterWatchdog) must notice a lost GCS before Ray's core worker ends the driver
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "120")
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
            context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=True)
            if dashboard:
                log.info("Ray dashboard: http://%s", context.dashboard_url)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ctx.execution_options.preserve_order = False


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))

