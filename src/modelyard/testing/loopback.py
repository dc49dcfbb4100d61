"""Proof that a client talked to nothing but loopback: no telemetry, no update check, no DNS.

Real clients phone home (Claude Code's telemetry and auto-updater, Codex's analytics and version check, the
Agents SDK's tracing exporter). The client tests switch all of that off and then *assert* it stayed off:

- in process (the Python SDKs): `LoopbackGuard` is a `sys.addaudithook` hook on `socket.connect`,
  `socket.sendto`, `socket.getaddrinfo` and friends that records every destination while it is active;
- for a subprocess (node's `claude`, Codex's native binary): `strace_command` wraps the command in
  `strace -f -e trace=connect,sendto,sendmsg` and `traced_destinations` reads the trace back.

Either way `outside_loopback(...)` lists what was not 127.0.0.0/8, ::1, a Unix socket or a netlink socket;
a test asserts it is empty.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

LOOPBACK_HOST = "127.0.0.1"
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", ""})
#: At most this many destinations are kept per guard (a client in a loop must not grow a test's memory).
MAX_SEEN = 10_000


@dataclass(frozen=True)
class Destination:
    """Where a socket connected, sent or looked a name up; `family` is `inet`, `inet6`, `unix`, `dns`, ..."""

    family: str
    host: str
    port: int | None = None

    def is_local(self) -> bool:
        if self.family in ("unix", "netlink", "local"):
            return True
        if self.family == "dns":
            return self.host.lower() in _LOCAL_NAMES or _is_loopback_ip(self.host)
        return _is_loopback_ip(self.host)

    def __str__(self) -> str:
        return f"{self.family}:{self.host}" + (f":{self.port}" if self.port is not None else "")


def _is_loopback_ip(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    # 0.0.0.0 / :: as a destination is this host too (Linux routes it to loopback).
    return address.is_loopback or address.is_unspecified


def outside_loopback(destinations: Iterable[Destination]) -> list[Destination]:
    """The destinations that left the machine (or would have): the ones a test asserts are none."""
    seen: list[Destination] = []
    for dest in destinations:
        if not dest.is_local() and dest not in seen:
            seen.append(dest)
    return seen


# --- in process: an audit hook ------------------------------------------------------------------------


def _from_address(address: Any) -> Destination | None:
    if isinstance(address, str | bytes):  # AF_UNIX path (or abstract name)
        return Destination("unix", address if isinstance(address, str) else address.decode("latin-1"))
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        host = address[0]
        port = address[1] if len(address) > 1 and isinstance(address[1], int) else None
        return Destination("inet6" if ":" in host else "inet", host, port)
    if isinstance(address, tuple):  # AF_NETLINK (pid, groups) and the like
        return Destination("netlink", repr(address))
    return None


class _HookRegistry:
    """The one audit hook of this process and the guards it feeds.

    `sys.addaudithook` hooks can never be removed, so exactly one is installed (on first use) and it
    forwards to whichever guards are active; with none active it does nothing but a length check.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: list[LoopbackGuard] = []
        self.installed = False

    def add(self, guard: LoopbackGuard) -> None:
        with self.lock:
            if not self.installed:
                sys.addaudithook(self._hook)
                self.installed = True
            self.active.append(guard)

    def remove(self, guard: LoopbackGuard) -> None:
        with self.lock:
            if guard in self.active:
                self.active.remove(guard)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or not event.startswith("socket."):
            return
        dest: Destination | None = None
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg") and len(args) >= 2:
            dest = _from_address(args[1])
        elif event == "socket.getaddrinfo" and args:
            host = args[0]
            name = host.decode() if isinstance(host, bytes) else str(host or "")
            dest = Destination("dns", name, args[1] if len(args) > 1 and isinstance(args[1], int) else None)
        elif event in ("socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr") and args:
            dest = Destination("dns", str(args[0]))
        if dest is None:
            return
        for guard in list(self.active):
            guard.record(dest)


_REGISTRY = _HookRegistry()


class LoopbackGuard:
    """`with LoopbackGuard() as guard: ...; assert not guard.outside()` — every socket destination and
    name lookup this process made while active (any thread)."""

    def __init__(self) -> None:
        self.seen: list[Destination] = []
        self._lock = threading.Lock()

    def record(self, dest: Destination) -> None:
        with self._lock:
            if len(self.seen) < MAX_SEEN:
                self.seen.append(dest)

    def outside(self) -> list[Destination]:
        with self._lock:
            return outside_loopback(self.seen)

    def __enter__(self) -> LoopbackGuard:
        _REGISTRY.add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _REGISTRY.remove(self)


# --- subprocesses: strace ---------------------------------------------------------------------------

_SYSCALLS = "connect,sendto,sendmsg"
_FAMILY = re.compile(r"sa_family=AF_(\w+)")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_INET = re.compile(r'sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6,\s*"([^"]+)"')
_UNIX = re.compile(r'sun_path=(@?"[^"]*")')


def strace_available() -> str | None:
    """None when `strace` can trace here, else why not (the tests skip with it)."""
    path = shutil.which("strace")
    if path is None:
        return "strace is not installed (apt-get install -y strace): cannot prove the client stayed on loopback"
    try:
        probe = subprocess.run(
            [path, "-f", "-qq", "-e", "trace=connect", "-o", "/dev/null", "true"],
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace does not run here: {exc}"
    if probe.returncode != 0:
        return f"strace cannot trace here (ptrace refused?): {probe.stderr.decode(errors='replace')[:200]}"
    return None


def strace_command(command: list[str], trace: Path) -> list[str]:
    """`command` under strace, following forks, writing each connect/sendto/sendmsg to `trace`."""
    strace = shutil.which("strace") or "strace"
    return [strace, "-f", "-qq", "-s", "256", "-e", f"trace={_SYSCALLS}", "-o", str(trace), *command]


def parse_strace(text: str) -> list[Destination]:
    """The socket addresses in an strace log of connect/sendto/sendmsg calls."""
    found: list[Destination] = []
    for line in text.splitlines():
        family = _FAMILY.search(line)
        if family is None:
            continue
        kind = family.group(1)
        port_match = _PORT.search(line)
        port = int(port_match.group(1)) if port_match else None
        if kind == "INET":
            inet = _INET.search(line)
            if inet:
                found.append(Destination("inet", inet.group(1), port))
        elif kind == "INET6":
            inet6 = _INET6.search(line)
            if inet6:
                found.append(Destination("inet6", inet6.group(1), port))
        elif kind in ("UNIX", "LOCAL"):
            unix = _UNIX.search(line)
            found.append(Destination("unix", unix.group(1) if unix else ""))
        elif kind == "NETLINK":
            found.append(Destination("netlink", "kernel"))
        elif kind != "UNSPEC":  # AF_UNSPEC connect() dissolves a UDP association: no destination
            found.append(Destination(kind.lower(), line.strip()[:120]))
        if len(found) >= MAX_SEEN:
            break
    return found


def traced_destinations(trace: Path) -> list[Destination]:
    """What the traced process tree connected or sent to (empty when the trace file is missing)."""
    if not trace.exists():
        return []
    return parse_strace(trace.read_text(encoding="utf-8", errors="replace"))
