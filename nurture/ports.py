"""The ports `nurture up` and `nurture api` listen on.

A port that is already taken is an error, never a silent join: with 7233 in use, the
embedded dev server fails to start while whatever answers there (another installation's
Temporal) would take this installation's worker and leads. So a port is checked before
anything starts, and once the dev server answers, the listener on its port must belong
to the process we started.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from nurture.temporal import TemporalUnavailable

HOST = "127.0.0.1"
LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


class PortInUse(TemporalUnavailable):
    """A port nurture must listen on is taken (CLI exit code 3, like any unreachable service)."""

    def __init__(self, port: int, what: str, setting: str) -> None:
        super().__init__(f"port {port} ({what}) is already in use on {HOST} by another program; "
                         f"set {setting} to a free port")


def bind(port: int, what: str, setting: str) -> socket.socket:
    """A listening-ready socket on HOST:port, or PortInUse. SO_REUSEADDR as servers set it
    (Go and uvicorn do), so a port left in TIME_WAIT by our own last run counts as free."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise PortInUse(port, what, setting) from error
    return sock


def ensure_free(port: int, what: str, setting: str) -> None:
    """PortInUse unless a server we start next can listen on HOST:port."""
    bind(port, what, setting).close()


def owned_by(port: int, pid: int) -> bool | None:
    """Whether process `pid` holds the listening socket on `port`; None where this cannot
    be told (no /proc: the check before start and the liveness check remain)."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    try:
        held = {os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return None
    return any(f"socket:[{inode}]" in held for inode in inodes)


def _listening_inodes(port: int) -> set[str] | None:
    found: set[str] | None = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        found = found or set()
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found
