"""The server holds under connection floods: idle connections neither starve the calls' streams of file
descriptors nor keep requests out.

Everything is real: the simulator and the runner's server listen on 127.0.0.1, the flood is plain TCP sockets
that connect and send nothing, and the first test runs the installed ``hookrunner`` command at the common
open-file soft limit of 1,024.
"""

from __future__ import annotations

import resource
import socket
import threading
from pathlib import Path

import httpx
import pytest
import trio

from hookrunner._core.limits import raise_open_file_limit
from hookrunner._simulator import running_simulator

from helpers import hookrunner_process, script, write_config
from service_helpers import SECRET, TOKEN, long_call, running_service, service_config

FLOOD = 1100
RECORDING_PLUGIN = """\
from pathlib import Path

from hookrunner import hookimpl

OUT = Path({out!r})


@hookimpl
def on_event(event, call):
    with OUT.open("a") as out:
        out.write(f"event {{call.id}}\\n")


@hookimpl
def on_call_finished(call, reason):
    with OUT.open("a") as out:
        out.write(f"finished {{call.id}} {{reason}}\\n")
"""


pytestmark = pytest.mark.usefixtures("service_secrets")  # conftest.py: HR_TEST_TOKEN, HR_TEST_WEBHOOK_SECRET


class Stderr:
    """A process's stderr lines, read in a thread as they come (a full pipe would stall the process)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        threading.Thread(target=lambda: [self.lines.append(line) for line in stream], daemon=True).start()

    async def line_with(self, text: str, timeout: float) -> str:
        with trio.fail_after(timeout):
            while not (found := [line for line in self.lines if text in line]):
                await trio.sleep(0.02)
        return found[0]


def soft_open_files(pid: int) -> int:
    """The process's soft RLIMIT_NOFILE, as /proc/PID/limits shows it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except FileNotFoundError:  # closed between the listing and the look: not open any more
            pass
    return count


def connect_idle(url: str, n: int) -> list[socket.socket]:
    """n connections to ``url`` that send nothing (the kernel completes them even before the server accepts)."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    sockets = [socket.create_connection((host, port), timeout=5) for _ in range(n)]
    for sock in sockets:
        sock.setblocking(False)  # so closed_by_server never waits
    return sockets


def closed_by_server(sockets: list[socket.socket]) -> list[bool]:
    """Whether each connection was closed from the other end (EOF or reset), without waiting."""
    closed = []
    for sock in sockets:
        try:
            closed.append(sock.recv(1, socket.MSG_PEEK) == b"")
        except BlockingIOError:
            closed.append(False)
        except ConnectionResetError:
            closed.append(True)
    return closed


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits")
async def test_at_a_1024_open_file_limit_1100_idle_connections_leave_calls_followed_and_healthz_answering(
    tmp_path: Path,
) -> None:
    if raise_open_file_limit()[1] < FLOOD + 500:  # this test process holds the flood's other ends
        pytest.skip("the open-file hard limit is too low to hold the flood in the test")
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("the hard limit leaves nothing to raise the runner's soft limit to")
    out = tmp_path / "seen.txt"
    plugin = tmp_path / "recording.py"
    plugin.write_text(RECORDING_PLUGIN.format(out=str(out)))

    def soft_limit_1024() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async with running_simulator(script([long_call("CALL-FLOOD", n=6, spacing=0.05)])) as sim:
        table = service_config(sim.base_url)
        table["plugins"]["load"] = [str(plugin)]
        config = write_config(tmp_path, table)
        env = {"HR_TEST_TOKEN": TOKEN, "HR_TEST_WEBHOOK_SECRET": SECRET}
        process = hookrunner_process("run", str(config), env=env, preexec_fn=soft_limit_1024)
        flood: list[socket.socket] = []
        try:
            stderr = Stderr(process.stderr)
            url = (await stderr.line_with("server: listening on ", 10)).split("server: listening on ")[1].split()[0]
            flood = connect_idle(url, FLOOD)
            with trio.fail_after(15):  # the server has taken the flood in (as far as it can; generous: a loaded CI)
                while open_sockets(process.pid) < 950:
                    await trio.sleep(0.05)
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                pushed = await client.post(
                    "/calls", json={"call_id": "CALL-FLOOD"}, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                healthz = await client.get("/healthz")
                with trio.fail_after(15):
                    while not out.exists() or "finished CALL-FLOOD" not in out.read_text():
                        await trio.sleep(0.05)
                healthz_after = await client.get("/healthz")
            raised_to = soft_open_files(process.pid)
        finally:
            close_all(flood)
            process.kill()
            process.wait()
    assert raised_to == min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1024 * 1024)
    assert any("open-file limit raised from 1024 to" in line for line in stderr.lines), "".join(stderr.lines)
    assert pushed.status_code == 202, pushed.text
    assert (healthz.status_code, healthz_after.status_code) == (200, 200)
    seen = out.read_text().splitlines()
    assert seen.count("event CALL-FLOOD") >= 6 and seen[-1] == "finished CALL-FLOOD ended", seen


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() -> None:
    async with running_service([long_call("CALL-IDLE")], idle_timeout=0.5) as (runner, client, _):
        stream = await trio.open_tcp_stream(httpx.URL(runner.server_url).host, httpx.URL(runner.server_url).port)
        async with stream:
            opened = trio.current_time()
            with trio.fail_after(3):
                assert await stream.receive_some() == b""  # EOF: the server closed it
            waited = trio.current_time() - opened
        assert (await client.get("/healthz")).status_code == 200
    assert 0.4 <= waited < 3


async def test_past_max_connections_each_new_connection_closes_the_quietest_and_healthz_still_answers() -> None:
    async with running_service([long_call("CALL-CAP")], max_connections=5) as (runner, client, _):
        flood = connect_idle(runner.server_url, 20)
        try:
            with trio.fail_after(3):  # each one past the fifth closed the oldest (the idle timeout is 30 s)
                while sum(closed_by_server(flood)) < 15:
                    await trio.sleep(0.02)
            await trio.sleep(0.2)
            held = closed_by_server(flood)
            healthz = await client.get("/healthz")  # a new connection: room is made for it at once
            with trio.fail_after(3):
                while sum(closed_by_server(flood)) < 16:
                    await trio.sleep(0.02)
            after = closed_by_server(flood)
        finally:
            close_all(flood)
    assert held == [True] * 15 + [False] * 5  # never more than five open, the newest kept
    assert healthz.status_code == 200 and healthz.json()["status"] == "serving"
    assert after == [True] * 16 + [False] * 4
