"""A service on several cores (``runner.workers`` > 1): a supervisor process with the server, and worker processes
that follow the calls routed to them, each with its plugins and its own journal.

Real ``hookrunner run`` processes with two workers, the simulator on loopback, calls posted to ``POST /calls``;
a plugin file records what reached it, one line per hook, with the pid of the worker that ran it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hookrunner._service.metrics_sum import CounterFloors, summed_page
from hookrunner._service.supervisor import worker_for
from hookrunner._simulator import Simulator, running_simulator
from hookrunner._state.journal import JournalReader, journal_files, worker_journal
from hookrunner.testing import config_table

from helpers import call_events, hookrunner_process, script, write_config
from service_helpers import TOKEN

pytestmark = pytest.mark.usefixtures("service_secrets")  # conftest.py: HR_TEST_TOKEN for POST /calls

WORKERS = 2
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIFECYCLE = ("sse_init", "sse_close")  # the stream's own events, around a call's

#: Writes one line per hook it runs, ``PID WHAT ...``: each event as its hook starts (``event CALL TYPE ID``), then
#: awaits SLOW seconds over it; ``reload`` for on_reload, ``shutdown`` for on_shutdown. Every worker appends to
#: the same file (one short write per line).
RECORDING_PLUGIN = """
import os
import trio
from hookrunner import hookimpl

def note(line):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(f"{{os.getpid()}} {{line}}\\n")

@hookimpl
async def on_event(event, call):
    note(f"event {{call.id}} {{event.event_type}} {{event.event_id}}")
    await trio.sleep(float(os.environ.get("SLOW", "0")))

@hookimpl
def on_reload(app):
    note("reload")

@hookimpl
async def on_shutdown(app):
    note("shutdown")
"""


def ids_per_worker(prefix: str, per_worker: int) -> dict[int, list[str]]:
    """``per_worker`` call ids for each worker, as the supervisor routes them (``worker_for``)."""
    ids: dict[int, list[str]] = {index: [] for index in range(WORKERS)}
    n = 0
    while any(len(chosen) < per_worker for chosen in ids.values()):
        call_id = f"{prefix}-{n}"
        if len(ids[worker_for(call_id, WORKERS)]) < per_worker:
            ids[worker_for(call_id, WORKERS)].append(call_id)
        n += 1
    return ids


def workers_table(base_url: str, tmp_path: Path, *, journal: bool = False, **runner: Any) -> dict[str, Any]:
    """Two workers with the recording plugin (writing ``tmp_path / "seen.txt"``), the server on a free port taking
    ``POST /calls`` with ``TOKEN``; the journal at ``tmp_path / "state.db"`` when ``journal``."""
    plugin = tmp_path / "recording.py"
    plugin.write_text(RECORDING_PLUGIN.format(out=str(tmp_path / "seen.txt")), encoding="utf-8")
    table = config_table(
        base_url,
        settings={"load": [str(plugin)]},
        runner={"workers": WORKERS, "worker_restart_delay": 0.1, "shutdown_grace": 2.0, **runner},
    )
    table["server"] = {"enabled": True, "port": 0, "token_env": "HR_TEST_TOKEN"}
    table["backfill"] = {"enabled": False}  # what a restarted worker dispatches comes from its journal and stream
    if journal:
        table["state"] = {"path": str(tmp_path / "state.db"), "commit_interval": 0.02}
    return table


class Service:
    """A running ``hookrunner run`` supervisor: its process, a client of its server, and its stderr (the workers
    write theirs to the same pipe), read line by line by a thread as it comes, so the pipe never fills."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self.client: httpx.AsyncClient | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    async def until(self, check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
        """Wait until ``check()`` is true (fails the test with ``what`` and the service's log past ``timeout``)."""
        with trio.move_on_after(timeout):
            while not check():
                await trio.sleep(0.02)
            return
        pytest.fail(f"not within {timeout} s: {what}\nstderr:\n{self.err}")

    async def url(self) -> str:
        """The base URL the server logged when it started listening (port 0 picks a free one)."""
        marker = "server: listening on "

        def listening() -> bool:
            assert self.process.poll() is None, f"the run ended before its server listened:\n{self.err}"
            return any(marker in line for line in self.lines)

        await self.until(listening, "the server listens")
        line = next(line for line in self.lines if marker in line)
        return line.split(marker, 1)[1].split(" ", 1)[0]

    async def get(self, path: str) -> httpx.Response:
        assert self.client is not None, "set by running_service"
        return await self.client.get(path)

    async def health(self) -> dict[str, Any]:
        return (await self.get("/healthz")).json()

    async def workers_up(self) -> list[dict[str, Any]]:
        """/healthz's workers once every one of them is up (and the service serving)."""
        answer: dict[str, Any] = {}

        async def poll() -> None:
            nonlocal answer
            with trio.fail_after(10):
                while True:
                    answer = await self.health()
                    if answer.get("status") == "serving" and all(worker["up"] for worker in answer["workers"]):
                        return
                    await trio.sleep(0.05)

        try:
            await poll()
        except trio.TooSlowError:
            pytest.fail(f"workers not all up: {answer}\nstderr:\n{self.err}")
        return answer["workers"]

    async def post_calls(self, call_ids: list[str]) -> None:
        assert self.client is not None
        for call_id in call_ids:
            answer = await self.client.post("/calls", json={"call_id": call_id}, headers=AUTH)
            assert answer.status_code == 202 and answer.json()["result"] == "new", answer.text

    async def finish(self, timeout: float = 15.0) -> int:
        """Wait for the supervisor to exit (fails the test past ``timeout``); its exit code."""
        try:
            code = await trio.to_thread.run_sync(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"still running {timeout} s after the stop\nstderr:\n{self.err}")
        await trio.to_thread.run_sync(self._reader.join, 5.0)  # the rest of stderr (the workers' last lines)
        return code

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """SIGTERM (or ``signum``), and the exit code once the supervisor exited."""
        self.process.send_signal(signum)
        return await self.finish(timeout)


@asynccontextmanager
async def running_service(
    tmp_path: Path,
    calls: list[dict[str, Any]],
    *,
    journal: bool = False,
    env: dict[str, str] | None = None,
    **runner: Any,
) -> AsyncIterator[tuple[Simulator, Service]]:
    """The simulator with ``calls``, and ``hookrunner run`` on ``workers_table`` with its server up; the service is
    killed at the end if the test left it running (the workers die with it)."""
    async with running_simulator(script(calls)) as sim:
        table = workers_table(sim.base_url, tmp_path, journal=journal, **runner)
        process = hookrunner_process("run", str(write_config(tmp_path, table)), env=env)
        service = Service(process)
        try:
            async with httpx.AsyncClient(base_url=await service.url(), timeout=5) as client:
                service.client = client
                yield sim, service
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def seen(tmp_path: Path) -> list[list[str]]:
    """The recording plugin's lines so far, split: ``[pid, "event", call, type, id]``, ``[pid, "shutdown"]``..."""
    out = tmp_path / "seen.txt"
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    return [line.split() for line in text.split("\n")[:-1]]  # whole lines only: a worker may be writing one


def events_of(lines: list[list[str]], call_id: str) -> list[tuple[str, str, str]]:
    """``(pid, type, id)`` of each event of ``call_id`` that reached the plugin, in order."""
    return [(line[0], line[3], line[4]) for line in lines if line[1] == "event" and line[2] == call_id]


def sent(sim: Simulator, call_id: str) -> list[tuple[str, str]]:
    """``(type, id)`` of each event the simulator sent on ``call_id``'s streams, each once, in the order first sent
    (a stream opened again replays the call: its events were sent before)."""
    frames = [(str(frame.event_type), str(frame.event_id)) for frame in sim.sent[call_id] if frame.kind == "event"]
    return list(dict.fromkeys(frames))


def turns_reached(tmp_path: Path, call_ids: list[str], turns: int) -> Callable[[], bool]:
    """True once ``turns`` events (but sse_init and sse_close) of every call reached the plugin, each counted once."""

    def check() -> bool:
        lines = seen(tmp_path)
        return all(
            len({(kind, event_id) for _, kind, event_id in events_of(lines, call_id) if kind not in LIFECYCLE}) >= turns
            for call_id in call_ids
        )

    return check


def closed(tmp_path: Path, call_ids: list[str]) -> Callable[[], bool]:
    """True once every call's sse_close reached the plugin."""

    def check() -> bool:
        lines = seen(tmp_path)
        return all(any(kind == "sse_close" for _, kind, _ in events_of(lines, call_id)) for call_id in call_ids)

    return check


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie does not: a worker whose supervisor died is reparented to
    init, which may take a second or more to reap it, and ``os.kill(pid, 0)`` succeeds until then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # reaped just now
        return False
    except OSError:  # no /proc: os.kill's word stands
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def still_running(pids: list[int], timeout: float = 5.0) -> list[int]:
    """The pids still running after up to ``timeout`` seconds."""
    left = list(pids)
    with trio.move_on_after(timeout):
        while left := [pid for pid in left if running(pid)]:
            await trio.sleep(0.02)
    return left


# --- sharding -------------------------------------------------------------------------------------------------------


async def test_each_call_is_followed_by_the_one_worker_its_id_hashes_to_every_event_once_in_order(
    tmp_path: Path,
) -> None:
    routed = ids_per_worker("CALL-SHARD", 3)
    call_ids = [call_id for ids in routed.values() for call_id in ids]
    calls = [{"id": call_id, "events": call_events(6, spacing=0.05)} for call_id in call_ids]
    async with running_service(tmp_path, calls) as (sim, service):
        workers = await service.workers_up()
        await service.post_calls(call_ids)
        await service.until(closed(tmp_path, call_ids), "every call's sse_close reached the plugin")
        code = await service.stop()
        lines = seen(tmp_path)
    assert code == 0, service.err
    pid_of = {worker["index"]: str(worker["pid"]) for worker in workers}
    assert len(set(pid_of.values())) == WORKERS  # two processes
    for index, ids in routed.items():
        for call_id in ids:
            got = events_of(lines, call_id)
            assert {pid for pid, _, _ in got} == {pid_of[index]}, (call_id, got)  # one worker: worker_for's
            expected = sent(sim, call_id)
            assert len(expected) == 8  # sse_init, 6 turns, sse_close
            assert [(kind, event_id) for _, kind, event_id in got] == expected  # each once, as sent
            assert f"{call_id}: following (found by api) worker={index}\n" in service.err  # its log line names it


# --- a worker that dies ---------------------------------------------------------------------------------------------


async def test_a_worker_killed_mid_call_is_restarted_and_resumes_its_calls_from_its_journal(tmp_path: Path) -> None:
    routed = ids_per_worker("CALL-KILL", 2)
    call_ids = [call_id for ids in routed.values() for call_id in ids]
    # 12 turns over 1.1 s, then one due only long after the test: a call still live when its worker is back
    last = {"at": 60, "event_type": "user_transcription", "user_transcription_text": "never sent"}
    calls = [{"id": call_id, "events": [*call_events(12, spacing=0.1), last]} for call_id in call_ids]
    async with running_service(tmp_path, calls, journal=True) as (sim, service):
        before = await service.workers_up()
        victim, other = str(before[1]["pid"]), str(before[0]["pid"])
        await service.post_calls(call_ids)

        def victim_mid_call() -> bool:
            return sum(1 for pid, what, *_ in seen(tmp_path) if pid == victim and what == "event") >= 6

        await service.until(victim_mid_call, "worker 1 dispatched 6 events")
        os.kill(int(victim), signal.SIGKILL)
        at_kill = seen(tmp_path)
        await service.until(turns_reached(tmp_path, call_ids, 12), "12 turns of every call reached the plugin", 20)
        after = (await service.health())["workers"]
        code = await service.stop()
    lines = seen(tmp_path)
    assert code == 0, service.err
    assert "worker 1 was killed by SIGKILL while following 2 calls; starting it again in 0.1 s" in service.err
    for call_id in routed[1]:
        assert f"{call_id}: following (found by journal) worker=1\n" in service.err
    assert (after[1]["restarts"], after[1]["up"]) == (1, True), after
    assert str(after[1]["pid"]) not in (victim, other), after  # a new process
    assert (str(after[0]["pid"]), after[0]["restarts"]) == (other, 0), after  # the other worker was untouched
    restarted = str(after[1]["pid"])
    for call_id in routed[0]:
        got = events_of(lines, call_id)
        assert {pid for pid, _, _ in got} == {other}, (call_id, got)
        assert [(kind, event_id) for _, kind, event_id in got] == sent(sim, call_id)  # each once, as sent
    for call_id in routed[1]:
        got = events_of(lines, call_id)
        dispatched = [(kind, event_id) for _, kind, event_id in got]
        expected = sent(sim, call_id)
        assert len(expected) == 13, expected  # sse_init, 12 turns
        assert list(dict.fromkeys(dispatched)) == expected, (call_id, got)  # every event, in order
        assert {pid for pid, _, _ in got} <= {victim, restarted} and got[-1][0] == restarted, (call_id, got)
        assert events_of(at_kill, call_id) == got[: len(events_of(at_kill, call_id))]
        # Only the event whose hook ran at the kill, and one dispatched within the journal's last commit interval
        # (0.02 s) before it, can reach the plugin twice: the call's events are 0.1 s apart.
        repeats = Counter(dispatched) - Counter(expected)
        assert sum(repeats.values()) <= 2, (call_id, repeats, got)


# --- stopping -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_drains_every_worker_runs_each_on_shutdown_and_leaves_no_worker_behind(
    tmp_path: Path, stop: signal.Signals
) -> None:
    grace = 6.0
    routed = ids_per_worker("CALL-DRAIN", 2)
    call_ids = [call_id for ids in routed.values() for call_id in ids]
    turns = [{**event, "at": 0} for event in call_events(10)]  # all at once: buffered behind the slow plugin
    calls = [{"id": call_id, "events": turns} for call_id in call_ids]
    async with running_service(tmp_path, calls, env={"SLOW": "0.05"}, shutdown_grace=grace) as (sim, service):
        workers = await service.workers_up()
        await service.post_calls(call_ids)

        def every_call_dispatching() -> bool:
            lines = seen(tmp_path)
            return all(events_of(lines, call_id) for call_id in call_ids)

        await service.until(every_call_dispatching, "an event of every call reached the plugin")
        at_stop = seen(tmp_path)
        code = await service.stop(stop, timeout=grace + 5)  # each worker drains within the grace
    lines = seen(tmp_path)
    assert code == 0, service.err
    pids = [str(worker["pid"]) for worker in workers]
    assert sorted(pid for pid, what, *_ in lines if what == "shutdown") == sorted(pids), lines  # once per worker
    for pid in pids:
        mine = [what for line_pid, what, *_ in lines if line_pid == pid]
        assert mine[-1] == "shutdown" and mine.count("shutdown") == 1, mine  # after its last event
    for call_id in call_ids:
        expected = sent(sim, call_id)
        assert len(expected) == 12  # sse_init, 10 turns, sse_close: all received before the stop
        assert len(events_of(at_stop, call_id)) < len(expected)  # most still buffered at the signal
        assert [(kind, event_id) for _, kind, event_id in events_of(lines, call_id)] == expected  # dispatched
    assert await still_running([int(pid) for pid in pids]) == []
    assert f"{stop.name}: stopping 2 workers" in service.err


async def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    async with running_service(tmp_path, []) as (_, service):
        workers = await service.workers_up()
        service.process.send_signal(signal.SIGHUP)

        def reloaded() -> list[str]:
            return sorted(pid for pid, what, *_ in seen(tmp_path) if what == "reload")

        pids = sorted(str(worker["pid"]) for worker in workers)
        await service.until(lambda: reloaded() == pids, "on_reload ran in both workers")
        code = await service.stop()
    assert code == 0, service.err
    assert reloaded() == pids  # once each


async def test_a_kill_9_of_the_supervisor_kills_every_worker_and_each_journal_holds_its_own_calls(
    tmp_path: Path,
) -> None:
    routed = ids_per_worker("CALL-JOURNAL", 2)
    call_ids = [call_id for ids in routed.values() for call_id in ids]
    calls = [{"id": call_id, "events": call_events(40, spacing=0.1)} for call_id in call_ids]  # 4 s each
    async with running_service(tmp_path, calls, journal=True) as (_, service):
        workers = await service.workers_up()
        await service.post_calls(call_ids)

        def every_call_under_way() -> bool:
            lines = seen(tmp_path)
            return all(len(events_of(lines, call_id)) >= 3 for call_id in call_ids)

        await service.until(every_call_under_way, "3 events of every call reached the plugin")
        os.kill(service.process.pid, signal.SIGKILL)
        assert await service.finish() == -signal.SIGKILL
    assert await still_running([worker["pid"] for worker in workers]) == []  # died with their supervisor
    path = tmp_path / "state.db"
    assert journal_files(path) == [worker_journal(path, index) for index in range(WORKERS)]
    assert worker_journal(path, 1) == tmp_path / "state.worker-1.db"
    for index in range(WORKERS):
        with JournalReader.open_read_only(worker_journal(path, index)) as journal:
            assert sorted(journal.followed_calls()) == sorted(routed[index])  # for the next run to resume
    # killed with it, not stopped: no worker drained (on_shutdown) beside what a next run would start on its journal
    assert [line for line in seen(tmp_path) if line[1] != "event"] == [], service.err


# --- metrics --------------------------------------------------------------------------------------------------------


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_are_the_sum_over_workers_with_each_process_s_own_families_labelled(tmp_path: Path) -> None:
    routed = ids_per_worker("CALL-METRICS", 2)
    call_ids = [call_id for ids in routed.values() for call_id in ids]
    calls = [{"id": call_id, "events": call_events(6, spacing=0.02)} for call_id in call_ids]  # 3 finals each
    async with running_service(tmp_path, calls) as (sim, service):
        await service.workers_up()
        await service.post_calls(call_ids)
        await service.until(closed(tmp_path, call_ids), "every call's sse_close reached the plugin")

        async def all_over() -> bool:
            health = await service.health()
            return health["calls_active"] == 0 and all(worker["calls"] == 0 for worker in health["workers"])

        with trio.fail_after(10):
            while not await all_over():
                await trio.sleep(0.05)
        answer = await service.get("/metrics")
        code = await service.stop()
    assert code == 0, service.err
    assert answer.status_code == 200
    samples = samples_of(answer.text)
    assert samples[("hookrunner_events_total", (("type", "user_transcription"),))] == 3 * len(call_ids)
    assert samples[("hookrunner_events_total", (("type", "tts_completed"),))] == 3 * len(call_ids)
    assert samples[("hookrunner_events_total", (("type", "sse_init"),))] == len(call_ids)
    assert samples[("hookrunner_calls_finished_total", (("reason", "ended"),))] == len(call_ids)
    assert samples[("hookrunner_calls_active", ())] == 0  # the supervisor's call book, not each worker's added
    memory = {dict(labels)["worker"] for name, labels in samples if name == "process_resident_memory_bytes"}
    assert memory == {"supervisor", "0", "1"}


def page(jobs: float, per_kind: dict[str, float], latencies: list[float], fds: float, active: float) -> bytes:
    registry = CollectorRegistry()
    PromCounter("jobs", "jobs done", registry=registry).inc(jobs)
    kinds = PromCounter("kinds", "jobs by kind", ["kind"], registry=registry)
    for kind, value in per_kind.items():
        kinds.labels(kind=kind).inc(value)
    latency = Histogram("latency_seconds", "latency", buckets=(0.1, 1.0), registry=registry)
    for value in latencies:
        latency.observe(value)
    Gauge("process_open_fds", "open descriptors", registry=registry).set(fds)
    Gauge("hookrunner_calls_active", "calls followed", registry=registry).set(active)
    return generate_latest(registry)


def test_summed_pages_add_counters_and_histograms_label_process_families_and_keep_owned_ones_from_the_first() -> None:
    pages = [
        ("supervisor", page(0, {}, [], fds=5, active=3)),
        ("0", page(2, {"a": 1, "b": 4}, [0.05, 0.5], fds=7, active=2)),
        ("1", page(3, {"a": 10}, [2.0], fds=9, active=1)),
    ]
    samples = samples_of(summed_page(pages, owned_by_first={"hookrunner_calls_active"}).decode())
    assert samples[("jobs_total", ())] == 5
    assert samples[("kinds_total", (("kind", "a"),))] == 11 and samples[("kinds_total", (("kind", "b"),))] == 4
    assert samples[("latency_seconds_bucket", (("le", "0.1"),))] == 1
    assert samples[("latency_seconds_bucket", (("le", "1.0"),))] == 2
    assert samples[("latency_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("latency_seconds_count", ())] == 3 and samples[("latency_seconds_sum", ())] == pytest.approx(2.55)
    fds = {dict(labels)["worker"]: value for (name, labels), value in samples.items() if name == "process_open_fds"}
    assert fds == {"supervisor": 5, "0": 7, "1": 9}
    assert samples[("hookrunner_calls_active", ())] == 3


def test_summed_counters_never_go_down_when_a_worker_starts_again_from_zero() -> None:
    floors = CounterFloors()

    def scrape(worker_1_jobs: float, worker_1_fds: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        pages = [("0", page(5, {}, [], fds=7, active=0)), ("1", page(worker_1_jobs, {}, [], fds=worker_1_fds, active=0))]
        return samples_of(summed_page(pages, floors=floors).decode())

    assert scrape(3, 9)[("jobs_total", ())] == 8
    restarted = scrape(1, 4)  # worker 1 died and counts from zero again: its 3 jobs are carried on
    assert restarted[("jobs_total", ())] == 8
    assert scrape(2, 4)[("jobs_total", ())] == 9  # and what it counts from now on adds to them
    fds = {dict(labels)["worker"]: value for (name, labels), value in restarted.items() if name == "process_open_fds"}
    assert fds == {"0": 7, "1": 4}  # a gauge of one process is that process's, floors or not
