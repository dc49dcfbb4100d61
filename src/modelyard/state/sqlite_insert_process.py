"""The SQLite spend insert in a helper process, so that its CPU and its GIL leave the serving process.

Why (issue #20, docs/benchmarks.md): in a saturated gateway the store's thread spent ~30 µs of CPU on each
spend row (its own bursts plus a GIL hand-off with the busy event loop on every statement), and the event
loop ~17 µs more per request around it; with every insert made in a child process on its own connection to
the same WAL file, the gateway served 8% more requests a second on this machine at 7% less CPU, the child's
included.

The protocol is private to this module and the store's thread: a frame is a 4-byte big-endian length and a
pickle, over the child's stdin and stdout (the child moves its stdout aside first, so that a stray print
cannot corrupt a frame). A request is a batch of spend records, msgpack-encoded by the store
(`sqlite_store.insert_records` prepares and inserts it here, so that the preparation's CPU leaves the gateway's
event loop too); the reply is `None`, or the exception it raised (a `SpendDataError` for a record that cannot be
stored, a `sqlite3.IntegrityError`, an `OverflowError` at binding ...), re-raised in the caller so the spend
writer tells bad rows from outages as before.

Dying processes: the child exits when its stdin ends, so it never outlives the gateway (kill -9 included);
it ignores SIGINT and SIGTERM, which reach a whole process group or service, so that the gateway's last flush
still finds it. A child that dies is a store outage (`InsertProcessGone`, a ConnectionError: the spend writer
keeps the rows and retries), and the next call starts a new one. A transaction the child had not committed
is rolled back by SQLite; one it committed before dying is found by id on the retry and not counted twice.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from modelyard.schema.errors import ModelyardError

_LENGTH = struct.Struct(">I")
#: The helper gives its core up after this many SQLite virtual-machine opcodes (~20-50 µs of inserting).
GIVE_WAY_OPCODES = 1000
#: How long `close` waits for the child to finish its last insert and exit before killing it.
CLOSE_WAIT_S = 10.0


class InsertProcessGone(ModelyardError, ConnectionError):
    """The helper process died or its pipe broke; the batch may or may not have been committed."""


class InsertProcessUnavailable(InsertProcessGone):
    """No helper could be started, or it died before its first answer (an interpreter that cannot run it, a
    broken install): retrying would fail the same way, so the store goes back to its thread."""


def _write_frame(out: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(data)) + data)
    out.flush()


def _read_frame(source: IO[bytes]) -> Any:
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    (size,) = _LENGTH.unpack(head)
    data = source.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # frames come only from our own child or parent, over a private pipe


class InsertProcess:
    """One helper process for one SQLite file, called from the store's single thread (never concurrently)."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: The child's command line, the file's path appended.
        self.command = [sys.executable, "-m", __name__]
        self._child: subprocess.Popen[bytes] | None = None
        self._answered = False  # the current child has answered a call
        #: Batches handed to a child (for tests and diagnostics).
        self.calls = 0

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def call(self, *arguments: Any) -> None:
        """Run `insert_records(connection, *arguments)` in the child; re-raise what it raised."""
        child = self._child or self._start()
        self.calls += 1
        assert child.stdin is not None and child.stdout is not None
        try:
            _write_frame(child.stdin, arguments)
            reply = _read_frame(child.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self._kill()
            if not self._answered:
                raise InsertProcessUnavailable(f"the spend insert process for {self.path} died at start") from exc
            raise InsertProcessGone(f"the spend insert process for {self.path} is gone ({exc!r})") from exc
        self._answered = True
        if reply is not None:
            raise reply

    def close(self) -> None:
        """End the child: its stdin closes, it finishes and exits (killed after CLOSE_WAIT_S)."""
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.close()
            child.wait(CLOSE_WAIT_S)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        child.stdout.close()

    def _start(self) -> subprocess.Popen[bytes]:
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        try:
            self._child = subprocess.Popen(
                [*self.command, self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True
            )
        except OSError as exc:
            raise InsertProcessUnavailable(f"could not start the spend insert process ({exc!r})") from exc
        self._answered = False
        return self._child

    def _kill(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.wait()
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass


def _step_aside(conn: Any) -> None:
    """Run at idle priority and give the core up every GIVE_WAY_OPCODES SQLite opcodes: the helper then takes
    only CPU the gateway, its clients and its upstreams leave, and its bursts never hold up a request.

    Measured on two cores (docs/benchmarks.md): at normal priority the helper cost the c=1 p99 +0.4-0.6 ms
    over the store's thread; nice +19, +0.3; SCHED_IDLE, +0.16; yielding every 1,000 opcodes, +0.23;
    SCHED_IDLE and the yields together, nothing measurable, with the throughput gain at saturation kept. A
    helper starved by a machine with no idle CPU at all falls behind; the store then gives the writer's
    bigger batches to its thread (`sqlite_store.InsertsIn`)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(19)
    if hasattr(os, "sched_yield"):
        conn.set_progress_handler(_give_way, GIVE_WAY_OPCODES)


def _give_way() -> int:
    os.sched_yield()
    return 0  # go on


def _serve(path: str) -> None:
    """The child: one connection, one insert per request frame, until stdin ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to stderr, never into a frame
    requests = os.fdopen(0, "rb")
    from modelyard.state.sqlite_store import connect, insert_records

    conn = connect(path)
    _step_aside(conn)
    try:
        while True:
            try:
                arguments = _read_frame(requests)
            except EOFError:
                return
            reply: BaseException | None = None
            try:
                insert_records(conn, *arguments)
            except Exception as exc:  # sent back to be re-raised by the caller
                reply = exc
            try:
                try:
                    _write_frame(replies, reply)
                except (pickle.PicklingError, TypeError, AttributeError):
                    _write_frame(replies, RuntimeError(repr(reply)))
            except OSError:  # the gateway is gone
                return
    finally:
        conn.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
