"""compare.py's counting plugin inside the worker processes of ``hookrunner run`` (``runner.workers``).

The ``hookrunner+stack+workers`` consumer runs the real CLI, so its counting plugin cannot hand figures back in
memory as the in-process one does: each worker loads this file (``[plugins] load``) and notes what the in-process
plugin notes, the same way (``time.time_ns()`` in ``on_event`` minus the event's ``bench_sent_ns``, and the arrival;
``bench_seq`` order per call; the sse_init and sse_close counts), plus its GC pauses; at ``on_shutdown`` it writes
them to ``$BENCH_PROBE_DIR/probe-PID.json``, latencies and arrivals as base64 int64 arrays, for compare.py to merge.

``on_startup`` also notes this process's CPU and its supervisor's (``/proc``) and the time, before any call is
followed: compare.py counts CPU from there, so imports, plugin loading and the processes' start are left out. The
supervisor imports this module too (it checks the plugins), but never runs its hooks, so writes nothing.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import resource
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from hookrunner import hookimpl

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by file path in a worker: benchlib is beside it
from benchlib import GcWatch, process_cpu_s  # noqa: E402

OUT_ENV = "BENCH_PROBE_DIR"

latency = array("q")
arrival = array("q")
last_seq: dict[str, int] = {}
counts = {"inits": 0, "closes": 0, "order_errors": 0}
started: dict[str, Any] = {}


def worker_index() -> int | None:
    """This worker's index, from its command line (``python -m hookrunner._service.worker CONFIG --index K``)."""
    argv = sys.argv
    return int(argv[argv.index("--index") + 1]) if "--index" in argv[:-1] else None


gc_watch = GcWatch()


@hookimpl
def on_startup() -> None:
    started.update(cpu_s=process_cpu_s("self"), supervisor_cpu_s=process_cpu_s(os.getppid()), time_ns=time.time_ns())
    gc.callbacks.append(gc_watch)


@hookimpl
def on_event(event: Any, call: Any) -> None:
    now = time.time_ns()
    raw = event.raw
    latency.append(now - raw["bench_sent_ns"])
    arrival.append(now)
    seq = raw["bench_seq"]
    if seq != last_seq.get(call.id, -1) + 1:
        counts["order_errors"] += 1
    last_seq[call.id] = seq
    kind = event.event_type
    if kind == "sse_init":
        counts["inits"] += 1
    elif kind == "sse_close":
        counts["closes"] += 1


@hookimpl
def on_shutdown() -> None:
    gc.callbacks.remove(gc_watch)
    out = Path(os.environ[OUT_ENV])
    result = {
        "pid": os.getpid(), "worker": worker_index(), "started": started, **counts,
        "calls": len(last_seq), "events": len(latency),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gc_max_ms": gc_watch.max_s * 1000, "gc_total_ms": gc_watch.total_s * 1000, "gc_collections": gc_watch.counts,
        "latency_ns": base64.b64encode(latency.tobytes()).decode(),
        "arrival_ns": base64.b64encode(arrival.tobytes()).decode(),
    }  # fmt: skip
    partial = out / f"probe-{os.getpid()}.json.part"
    partial.write_text(json.dumps(result))
    partial.replace(out / f"probe-{os.getpid()}.json")  # whole or absent: compare.py reads it once the run exited
