"""The loopback assertions can fail: a destination off the machine is caught, in process and under strace.

UDP `connect()` only sets a socket's default peer and sends nothing, so these tests point sockets at
TEST-NET-1 (192.0.2.0/24, RFC 5737) without a single packet leaving the machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.testing.loopback import (
    Destination,
    LoopbackGuard,
    outside_loopback,
    parse_strace,
    strace_available,
    strace_command,
    traced_destinations,
)

OUTSIDE = ("192.0.2.1", 9)


def _udp_connect(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))


def test_guard_flags_a_connect_off_the_machine() -> None:
    with LoopbackGuard() as guard:
        _udp_connect("127.0.0.1", 9)
        _udp_connect(*OUTSIDE)
    assert Destination("inet", "127.0.0.1", 9) in guard.seen
    assert guard.outside() == [Destination("inet", *OUTSIDE)]


def test_guard_flags_a_name_lookup_and_stops_recording_on_exit() -> None:
    with LoopbackGuard() as guard:
        sys.audit("socket.getaddrinfo", "api.openai.com", 443, 0, 0, 0)  # the event, without the lookup
        socket.getaddrinfo("localhost", 80)
    _udp_connect(*OUTSIDE)  # after the guard: not its business
    assert guard.outside() == [Destination("dns", "api.openai.com", 443)]


@pytest.mark.parametrize(
    ("dest", "local"),
    [
        (Destination("inet", "127.0.0.1", 80), True),
        (Destination("inet", "127.8.9.10", 80), True),
        (Destination("inet6", "::1", 80), True),
        (Destination("inet6", "::ffff:127.0.0.1", 80), True),
        (Destination("unix", "/run/x.sock"), True),
        (Destination("dns", "localhost"), True),
        (Destination("inet", "10.255.255.53", 53), False),
        (Destination("inet6", "2001:db8::1", 443), False),
        (Destination("inet6", "::ffff:192.0.2.1", 443), False),
        (Destination("dns", "api.github.com"), False),
    ],
)
def test_what_counts_as_loopback(dest: Destination, local: bool) -> None:
    assert dest.is_local() is local
    assert outside_loopback([dest]) == ([] if local else [dest])


def test_parse_strace_lines_as_codex_writes_them() -> None:
    """Lines from a real `strace -f` of Codex 0.171 before its plugin sync was switched off."""
    trace = "\n".join(
        [
            '11778 connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
            '11793 sendto(38, "\\377\\255\\1\\0", 32, MSG_NOSIGNAL, {sa_family=AF_INET, sin_port=htons(53), '
            'sin_addr=inet_addr("10.255.255.53")}, 16) = 32',
            '11778 sendto(6, "\\1", 1, MSG_NOSIGNAL, NULL, 0) = 1',
            '11752 connect(9, {sa_family=AF_INET, sin_port=htons(4712), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 '
            "EINPROGRESS (Operation now in progress)",
            "11752 connect(10, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), "
            'inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
            '11752 connect(11, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
            '11752 connect(12, {sa_family=AF_UNSPEC, sa_data="\\0"}, 16) = 0',
        ]
    )
    found = parse_strace(trace)
    assert Destination("inet", "127.0.0.1", 4712) in found
    assert outside_loopback(found) == [
        Destination("inet", "10.255.255.53", 53),
        Destination("inet6", "2606:4700::1", 443),
    ]


def test_strace_catches_a_subprocess_connect(tmp_path: Path) -> None:
    reason = strace_available()
    if reason is not None:
        pytest.skip(reason)
    trace = tmp_path / "trace.log"
    script = (
        "import socket\n"
        "for host in ('127.0.0.1', '192.0.2.1'):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, 9)); s.close()\n"
    )
    subprocess.run(strace_command([sys.executable, "-c", script], trace), check=True, timeout=60)
    found = traced_destinations(trace)
    assert Destination("inet", "127.0.0.1", 9) in found
    assert outside_loopback(found) == [Destination("inet", "192.0.2.1", 9)]
