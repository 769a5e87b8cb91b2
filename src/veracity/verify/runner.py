"""Run a VNN-COMP benchmark: every instance of an ``instances.csv``, each under its own time limit.

The pieces, used by ``veracity run`` and ``veracity report``:

* :func:`read_instances`, :func:`read_expected`, :func:`read_results` read the CSV files (malformed input
  raises :class:`BenchError` naming the file and line);
* :func:`run_one` decides one instance in this process (loading included, never raises);
* :func:`run_instances` runs many, in this process (``workers=0``), in worker processes that are killed when
  they overrun (``workers>=1``) or on Ray actors, yielding one :class:`Row` per instance as it finishes;
* :class:`ResultsWriter` appends rows to a results CSV, flushed at once, so an interrupted run loses nothing;
* :func:`summarise` counts verdicts and contradictions with ``expected.csv``; :func:`cactus_plot` draws the
  VNN-COMP cactus plot.

Time limits: the verifier honours the instance timeout itself (SIGALRM in the main thread of the worker and
deadline checks); loading runs under the same alarm. As a safety net a worker that has not answered by
``timeout * 1.05 + 2`` seconds (:func:`hard_limit`) is killed and the instance counts as ``timeout``.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
import signal
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from veracity.verify.result import STATUSES

__all__ = [
    "FIELDS",
    "HARD_FACTOR",
    "HARD_SLACK_S",
    "STATUSES",
    "BenchError",
    "Instance",
    "ResultsWriter",
    "Row",
    "Summary",
    "cactus_plot",
    "hard_limit",
    "latest",
    "read_expected",
    "read_instances",
    "read_results",
    "ray_missing",
    "instances_csv",
    "run_instances",
    "run_one",
    "summarise",
    "witness_name",
    "write_witness",
]

FIELDS = ("onnx", "vnnlib", "result", "time_s", "method", "timeout_s", "message")
"""Columns of a results CSV (paths exactly as written in instances.csv)."""
REQUIRED_FIELDS = ("onnx", "vnnlib", "result", "time_s")
HARD_FACTOR = 1.05
HARD_SLACK_S = 2.0
LATE_FACTOR = 1.05  # a verdict later than timeout * LATE_FACTOR counts as timeout, as in VNN-COMP
MESSAGE_MAX = 500


class BenchError(ValueError):
    """A missing or malformed benchmark/results file; the message names the file (and line)."""


def hard_limit(timeout: float) -> float:
    """Seconds after which a worker that has not answered is killed and the instance counts as timeout."""
    return timeout * HARD_FACTOR + HARD_SLACK_S


def _norm(p: str) -> str:
    return posixpath.normpath(p.strip().replace("\\", "/"))


def _key(onnx: str, vnnlib: str) -> tuple[str, str]:
    return _norm(onnx), _norm(vnnlib)


@dataclass(frozen=True)
class Instance:
    """One row of instances.csv: paths as written there, relative to ``root`` (the csv's folder)."""

    onnx: str
    vnnlib: str
    timeout: float
    root: Path = Path(".")
    line: int = 0

    @property
    def onnx_path(self) -> Path:
        return self.root / self.onnx

    @property
    def vnnlib_path(self) -> Path:
        return self.root / self.vnnlib

    @property
    def key(self) -> tuple[str, str]:
        return _key(self.onnx, self.vnnlib)


@dataclass
class Row:
    """The outcome of one instance: a line of the results CSV (``witness`` is not written there)."""

    onnx: str
    vnnlib: str
    result: str
    time_s: float
    method: str = ""
    timeout_s: float = 0.0
    message: str = ""
    witness: str = ""  # Result.vnncomp() for sat

    @property
    def key(self) -> tuple[str, str]:
        return _key(self.onnx, self.vnnlib)

    @property
    def decided(self) -> bool:
        return self.result in ("sat", "unsat")

    def csv_dict(self) -> dict[str, str]:
        return {
            "onnx": self.onnx,
            "vnnlib": self.vnnlib,
            "result": self.result,
            "time_s": f"{self.time_s:.4f}",
            "method": self.method,
            "timeout_s": f"{self.timeout_s:g}",
            "message": self.message,
        }


# ---------------------------------------------------------------------------------------------------- reading


def instances_csv(path) -> Path:
    """``path`` itself when it is a file, else ``path/instances.csv``."""
    p = Path(path)
    if p.is_dir():
        p = p / "instances.csv"
        if not p.is_file():
            raise BenchError(f"{path}: no instances.csv in this folder")
    elif not p.exists():
        raise BenchError(f"{path}: no such benchmark folder or instances file")
    return p


def read_instances(path) -> list[Instance]:
    """Rows ``onnx,vnnlib,timeout_s`` of ``path`` (a benchmark folder or its instances.csv), no header.

    Paths stay as written, resolved against the csv's folder. Blank lines are skipped.
    """
    p = instances_csv(path)
    root = p.parent.resolve()
    out: list[Instance] = []
    try:
        with p.open(newline="") as f:
            for line, cells in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in cells]
                if not any(cells):
                    continue
                if len(cells) != 3:
                    raise BenchError(f"{p}:{line}: expected 3 fields onnx,vnnlib,timeout_s, got {len(cells)}")
                onnx, vnnlib, t = cells
                if not onnx or not vnnlib:
                    raise BenchError(f"{p}:{line}: empty onnx or vnnlib path")
                try:
                    timeout = float(t)
                except ValueError:
                    raise BenchError(f"{p}:{line}: timeout {t!r} is not a number") from None
                if not math.isfinite(timeout) or timeout <= 0:
                    raise BenchError(f"{p}:{line}: timeout {t!r} must be a positive number of seconds")
                out.append(Instance(onnx, vnnlib, timeout, root, line))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BenchError(f"{p}: not a readable CSV file ({e})") from None
    if not out:
        raise BenchError(f"{p}: no instances")
    return out


def _dict_rows(p: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if header is None:
                return
            missing = [c for c in required if c not in header]
            if missing:
                raise BenchError(f"{p}:1: header lacks column(s) {', '.join(missing)}")
            for row in reader:
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                if None in row or any(row.get(c) is None for c in required):
                    raise BenchError(f"{p}:{reader.line_num}: expected {len(header)} fields")
                yield reader.line_num, row
    except (UnicodeDecodeError, csv.Error) as e:
        raise BenchError(f"{p}: not a readable CSV file ({e})") from None


def read_expected(path) -> dict[tuple[str, str], str]:
    """``expected.csv`` (header ``onnx,vnnlib,majority,...``): the majority verdict per instance."""
    p = Path(path)
    if p.is_dir():
        p = p / "expected.csv"
    if not p.is_file():
        raise BenchError(f"{path}: no such expected.csv")
    rows = _dict_rows(p, ("onnx", "vnnlib", "majority"))
    return {_key(r["onnx"], r["vnnlib"]): r["majority"].strip() for _, r in rows}


def read_results(path) -> list[Row]:
    """Every row of a results CSV written by :class:`ResultsWriter` (an empty or missing file gives [])."""
    p = Path(path)
    if not p.exists() or (p.is_file() and p.stat().st_size == 0):
        return []
    if not p.is_file():
        raise BenchError(f"{p}: not a file")
    rows = []
    for line, r in _dict_rows(p, REQUIRED_FIELDS):
        result = r["result"].strip()
        if result not in STATUSES:
            raise BenchError(f"{p}:{line}: result {result!r} is not one of {', '.join(STATUSES)}")
        try:
            t = float(r["time_s"])
            timeout = float(r.get("timeout_s") or 0)
        except ValueError:
            raise BenchError(f"{p}:{line}: time_s {r['time_s']!r} is not a number") from None
        rows.append(Row(r["onnx"], r["vnnlib"], result, t, (r.get("method") or "").strip(), timeout,
                        r.get("message") or ""))
    return rows


def latest(rows: Iterable[Row]) -> list[Row]:
    """One row per instance: the last one written, in the order instances first appear."""
    d: dict[tuple[str, str], Row] = {}
    for r in rows:
        d[r.key] = r
    return list(d.values())


# ---------------------------------------------------------------------------------------------------- writing


class ResultsWriter:
    """Append rows to a results CSV; the header is written once, each row is flushed to disk at once.

    An existing file is continued in its own column order; it must have the columns of :data:`REQUIRED_FIELDS`.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header: list[str] | None = None
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if not header or any(c not in header for c in REQUIRED_FIELDS):
                raise BenchError(f"{self.path}:1: not a results file (header {','.join(header or [])!r})")
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) not in (b"\n", b"\r")
        self._f = self.path.open("a", newline="")
        if needs_newline:  # a row cut short by a crash: start a fresh line
            self._f.write("\r\n")
        self._w = csv.DictWriter(self._f, fieldnames=header or list(FIELDS), extrasaction="ignore")
        if header is None:
            self._w.writeheader()
            self._sync()

    def _sync(self):
        self._f.flush()
        try:
            os.fsync(self._f.fileno())
        except OSError:
            pass

    def append(self, row: Row) -> None:
        self._w.writerow(row.csv_dict())
        self._sync()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stem(path: str) -> str:
    name = posixpath.basename(_norm(path))
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in (".onnx", ".vnnlib"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


def witness_name(onnx: str, vnnlib: str) -> str:
    """``<onnx stem>__<vnnlib stem>.counterexample`` (stems without .onnx/.vnnlib and .gz)."""
    return f"{_stem(onnx)}__{_stem(vnnlib)}.counterexample"


def write_witness(directory, row: Row) -> Path:
    """Write a sat row's witness (the VNN-COMP result text) into ``directory``; returns the file."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = d / witness_name(row.onnx, row.vnnlib)
    p.write_text(row.witness or row.result + "\n")
    return p


# ---------------------------------------------------------------------------------------------------- one instance


class _LoadTimeout(BaseException):
    """Not an Exception, so that no ``except Exception`` in the loaders swallows it."""


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."


def _load_graph(path: Path, cache: dict | None):
    import gzip

    from veracity.graph import load_onnx
    from veracity.graph.onnx_import import resolve_path

    p = resolve_path(path)
    k = str(p.resolve()) if p.exists() else str(p)
    if cache is not None and k in cache:
        return cache[k]
    graph = load_onnx(path)
    data = p.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if cache is not None:
        cache.clear()  # keep one network: benchmarks list instances grouped by network
        cache[k] = (graph, data)
    return graph, data


def run_one(inst: Instance, timeout_scale: float = 1.0, cache: dict | None = None, **options) -> Row:
    """Load and verify one instance within ``inst.timeout * timeout_scale`` seconds (loading included).

    ``options`` go to :func:`veracity.verify.driver.verify` (``branch=False``, ``methods=...``).
    Never raises (but for KeyboardInterrupt): load errors and exceptions give result ``error`` with the message.
    ``cache`` (a dict kept by the caller) holds the last loaded network between calls.
    """
    from veracity.graph import OnnxImportError, UnsupportedError
    from veracity.spec import VnnlibError, load_vnnlib
    from veracity.verify.driver import Timeout, time_limit, verify

    timeout = inst.timeout * timeout_scale
    t0 = time.monotonic()

    def row(result, method="", message="", witness=""):
        return Row(inst.onnx, inst.vnnlib, result, time.monotonic() - t0, method, timeout, _one_line(message), witness)

    try:
        with time_limit(timeout, _LoadTimeout):
            graph, model = _load_graph(inst.onnx_path, cache)
            spec = load_vnnlib(inst.vnnlib_path, n_inputs=graph.n_inputs, n_outputs=graph.n_outputs)
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            return row("timeout", message=f"loading took {time.monotonic() - t0:.2f} s")
        res = verify(graph, spec, timeout=left, onnx_model=model, **options)
    except _LoadTimeout:
        return row("timeout", message="time limit reached while loading")
    except Timeout:
        return row("timeout")
    except (OnnxImportError, UnsupportedError, VnnlibError, ValueError, FileNotFoundError) as e:
        return row("error", message=str(e))
    except Exception as e:  # a verifier bug must not stop the benchmark
        return row("error", message=f"{type(e).__name__}: {e}")
    r = row(res.status, res.method, res.message, res.vnncomp() if res.status == "sat" else "")
    if r.decided and r.time_s > timeout * LATE_FACTOR:
        r.message = _one_line(f"{r.result} after {r.time_s:.2f} s, past the {timeout:g} s limit")
        r.result, r.method, r.witness = "timeout", "", ""
    return r


# ---------------------------------------------------------------------------------------------------- many instances


def _timeout_row(inst: Instance, scale: float, elapsed: float, message: str, result: str = "timeout") -> Row:
    return Row(inst.onnx, inst.vnnlib, result, elapsed, "", inst.timeout * scale, _one_line(message))


@contextmanager
def _sigint_ignored():
    """Ignore Ctrl-C while starting a child, which inherits the ignored SIGINT (the parent handles Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _worker_main(conn, threads: int | None) -> None:
    """A worker process: answer ("ready", None), then one ("row", Row) per (Instance, scale) received."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    if threads:
        torch.set_num_threads(threads)
    import veracity.verify.driver  # noqa: F401  (import before the first clock starts)

    conn.send(("ready", None))
    cache: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        inst, scale = msg
        try:
            conn.send(("row", run_one(inst, scale, cache)))
        except (BrokenPipeError, OSError):
            return


class _ProcessBackend:
    """Worker processes (spawn context), one pipe each; a worker that overruns is terminated."""

    def __init__(self, n: int, threads: int | None):
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.threads = threads
        self.procs: list = [None] * n
        self.conns: list = [None] * n

    def start(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker_main, args=(child, self.threads), daemon=True,
                             name=f"veracity-worker-{i}")
        with _sigint_ignored():
            p.start()
        child.close()
        self.procs[i], self.conns[i] = p, parent

    def send(self, i: int, inst: Instance, scale: float) -> None:
        try:
            self.conns[i].send((inst, scale))
        except OSError:
            pass  # the worker is gone: poll reports it

    def poll(self, timeout: float) -> list[tuple[int, str, object]]:
        from multiprocessing.connection import wait

        conns = {c: i for i, c in enumerate(self.conns) if c is not None}
        if not conns:
            time.sleep(timeout)
            return []
        events = []
        for c in wait(list(conns), timeout):
            i = conns[c]
            try:
                kind, payload = c.recv()
            except (EOFError, OSError):
                p = self.procs[i]
                p.join(1)
                events.append((i, "died", f"worker process died (exit code {p.exitcode})"))
                self._drop(i)
                continue
            events.append((i, kind, payload))
        return events

    def _drop(self, i: int) -> None:
        if self.conns[i] is not None:
            self.conns[i].close()
        self.conns[i] = None
        self.procs[i] = None

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.is_alive():
            p.terminate()
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        self._drop(i)

    def close(self, graceful: bool) -> None:
        if graceful:
            for c in self.conns:
                if c is not None:
                    try:
                        c.send(None)
                    except OSError:
                        pass
            end = time.monotonic() + 5
            for p in self.procs:
                if p is not None:
                    p.join(max(0.0, end - time.monotonic()))
        for i in range(len(self.procs)):
            self.kill(i)


class _RayWorker:
    """The Ray actor (wrapped with ``ray.remote`` when used): keeps the last network between calls."""

    def __init__(self, threads: int | None = 1):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.cache: dict = {}

    def ready(self):
        import veracity.verify.driver  # noqa: F401

        return "ready", None

    def run(self, inst: Instance, scale: float):
        return "row", run_one(inst, scale, self.cache)


def ray_missing() -> str | None:
    """None when ray can be imported, else why not."""
    try:
        import ray  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


class _RayBackend:
    """One Ray actor per worker slot, each with one CPU; an actor that overruns is killed."""

    def __init__(self, address: str, n: int | None, threads: int | None):
        import logging

        import ray

        self.ray = ray
        self.owns = not ray.is_initialized()
        if self.owns:
            try:
                if address == "local":
                    ray.init(num_cpus=n, include_dashboard=False, logging_level=logging.ERROR)
                else:
                    ray.init(address=address, logging_level=logging.ERROR)
            except Exception as e:
                where = "start Ray here" if address == "local" else f"connect to Ray at {address}"
                raise RuntimeError(f"cannot {where}: {type(e).__name__}: {_one_line(e)}") from None
        if n is None:
            n = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.n = n
        self.cls = ray.remote(num_cpus=1, max_restarts=0)(_RayWorker)
        self.threads = threads
        self.actors: list = [None] * n
        self.refs: dict = {}  # ObjectRef -> slot

    def start(self, i: int) -> None:
        a = self.cls.remote(self.threads)
        self.actors[i] = a
        self.refs[a.ready.remote()] = i

    def send(self, i: int, inst: Instance, scale: float) -> None:
        self.refs[self.actors[i].run.remote(inst, scale)] = i

    def poll(self, timeout: float) -> list[tuple[int, str, object]]:
        ray = self.ray
        if not self.refs:
            time.sleep(timeout)
            return []
        done, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if done and len(self.refs) > 1:
            done, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        events = []
        for ref in done:
            i = self.refs.pop(ref)
            try:
                kind, payload = ray.get(ref)
            except ray.exceptions.RayError as e:
                msg = str(e).strip().splitlines()
                events.append((i, "died", f"ray worker failed: {type(e).__name__}: {msg[0] if msg else ''}"))
                self._kill_actor(i)
                continue
            events.append((i, kind, payload))
        return events

    def _kill_actor(self, i: int) -> None:
        a = self.actors[i]
        self.actors[i] = None
        for ref in [r for r, j in self.refs.items() if j == i]:
            del self.refs[ref]
        if a is not None:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:
                pass

    def kill(self, i: int) -> None:
        self._kill_actor(i)

    def close(self, graceful: bool) -> None:
        for i in range(len(self.actors)):
            self._kill_actor(i)
        if self.owns:
            self.ray.shutdown()


@dataclass
class _Slot:
    ready: bool = False
    inst: Instance | None = None
    started: float = 0.0
    deadline: float = 0.0
    failures: int = 0


MAX_START_FAILURES = 3


def _schedule(backend, n: int, instances: Sequence[Instance], scale: float) -> Iterator[Row]:
    """Hand instances to ``n`` worker slots of ``backend``; kill a slot that overruns its hard limit."""
    pending = deque(instances)
    slots = [_Slot() for _ in range(n)]
    finished = False
    try:
        for i in range(n):
            backend.start(i)
        while pending or any(s.inst is not None for s in slots):
            for i, s in enumerate(slots):
                if s.ready and s.inst is None and pending:
                    s.inst = pending.popleft()
                    s.started = time.monotonic()
                    s.deadline = s.started + hard_limit(s.inst.timeout * scale)
                    backend.send(i, s.inst, scale)
            now = time.monotonic()
            wait = min([0.5] + [s.deadline - now for s in slots if s.inst is not None])
            for i, kind, payload in backend.poll(max(wait, 0.0)):
                s = slots[i]
                if kind == "ready":
                    s.ready, s.failures = True, 0
                elif kind == "row":
                    s.inst = None
                    yield payload
                elif kind == "died":
                    if s.inst is not None:
                        yield _timeout_row(s.inst, scale, time.monotonic() - s.started, str(payload), "error")
                        s.inst = None
                    else:
                        s.failures += 1
                        if s.failures >= MAX_START_FAILURES:
                            raise RuntimeError(f"worker fails to start: {payload}")
                    s.ready = False
                    backend.start(i)
            now = time.monotonic()
            for i, s in enumerate(slots):
                if s.inst is not None and now > s.deadline:
                    backend.kill(i)
                    yield _timeout_row(s.inst, scale, now - s.started,
                                       f"no answer after {now - s.started:.1f} s: worker killed")
                    s.inst, s.ready = None, False
                    backend.start(i)
        finished = True
    finally:
        backend.close(graceful=finished)


def run_instances(instances: Sequence[Instance], timeout_scale: float = 1.0, workers: int | None = 1,
                  ray: str | None = None) -> Iterator[Row]:
    """Run ``instances``, yielding one :class:`Row` each as it finishes (in finishing order).

    ``workers=0``: in this process, one after another (no safety net for a hung instance). ``workers>=1``:
    that many spawned worker processes, torch limited to one thread each when more than one. ``ray``:
    ``"local"`` (start Ray here with ``workers`` CPUs, default all) or a cluster address, one actor per
    worker (default: the cluster's CPUs); the instance files must be readable at the same paths there.
    Closing the generator (or Ctrl-C) stops the workers.
    """
    instances = list(instances)
    if not instances:
        return
    if ray is not None:
        why = ray_missing()
        if why is not None:
            raise ImportError(f"--ray needs the ray package (pip install 'veracity[ray]'): {why}")
        backend = _RayBackend(ray, workers if workers and workers > 0 else None, 1)
        yield from _schedule(backend, min(backend.n, len(instances)), instances, timeout_scale)
        return
    if workers is None:
        workers = 1
    if workers == 0:
        cache: dict = {}
        for inst in instances:
            yield run_one(inst, timeout_scale, cache)
        return
    threads = 1 if workers > 1 else None
    n = min(workers, len(instances))
    yield from _schedule(_ProcessBackend(n, threads), n, instances, timeout_scale)


# ---------------------------------------------------------------------------------------------------- summary


@dataclass
class Summary:
    """Counts over one row per instance; contradictions: sat vs unsat disagreements with expected.csv."""

    n: int
    counts: dict[str, int]
    total_s: float
    median_s: float
    contradictions: list[tuple[Row, str]] = field(default_factory=list)
    has_expected: bool = False
    expected_decided: int = 0  # instances whose expected majority is sat or unsat
    agreed: int = 0  # decided the same way as expected

    @property
    def decided(self) -> int:
        return self.counts.get("sat", 0) + self.counts.get("unsat", 0)


def summarise(rows: Iterable[Row], expected: dict[tuple[str, str], str] | None = None) -> Summary:
    """Counts per status, decided, total and median time, and contradictions with ``expected``."""
    rows = latest(rows)
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r.result] = counts.get(r.result, 0) + 1
    times = [r.time_s for r in rows]
    s = Summary(len(rows), counts, float(sum(times)), float(statistics.median(times)) if times else 0.0)
    if expected is not None:
        s.has_expected = True
        for r in rows:
            exp = expected.get(r.key, "unknown")
            if exp in ("sat", "unsat"):
                s.expected_decided += 1
                if r.result == exp:
                    s.agreed += 1
                elif r.decided:
                    s.contradictions.append((r, exp))
    return s


def cactus_plot(runs: Sequence[tuple[str, Sequence[Row]]], path, title: str = "") -> Path:
    """VNN-COMP cactus plot to a PNG: per run, its decided (sat+unsat) instances sorted by time, x the number
    decided, y the cumulative time in seconds (log scale). ``runs``: (label, rows) pairs. Headless (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, rows in runs:
        times = sorted(max(r.time_s, 1e-3) for r in latest(rows) if r.decided)
        xs = list(range(1, len(times) + 1))
        ys = list(_cumsum(times))
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=f"{label} ({len(xs)})")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("instances decided (sat + unsat)")
    ax.set_ylabel("cumulative time (s)")
    ax.set_title(title or "cactus plot")
    ax.grid(True, which="both", alpha=0.3)
    if runs:
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    return p


def _cumsum(xs: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for x in xs:
        total += x
        yield total
