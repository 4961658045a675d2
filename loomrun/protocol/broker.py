"""The secrets broker's control wire (see workers/secrets/broker.py): the supervisor registers a
job's vault refs with one end of the job's socket pair. Imported by the supervisor (sending) and
the broker (receiving); nothing else.

Frame: a 4-byte little-endian length, then JSON `{"job": name, "refs": [...]}`; the socket rides on
the first byte (SCM_RIGHTS). JSON rather than pickle: the broker holds every vault open and
unpickles nothing.
"""

from __future__ import annotations

import json
import socket

_HEADER = 4


def send_registration(ctl: socket.socket, job: str, refs: list[str], fd: int) -> None:
    body = json.dumps({"job": job, "refs": refs}).encode()
    data = len(body).to_bytes(_HEADER, "little") + body
    sent = socket.send_fds(ctl, [data], [fd])
    if sent < len(data):
        ctl.sendall(data[sent:])


def receive_registration(ctl: socket.socket) -> tuple[str, list[str], int] | None:
    """(job, refs, fd), or None at EOF. EOFError for a frame cut short or without its socket."""
    msg, fds, _flags, _addr = socket.recv_fds(ctl, _HEADER, 1)
    if not msg:
        return None
    head = msg + _exactly(ctl, _HEADER - len(msg))
    body = _exactly(ctl, int.from_bytes(head, "little"))
    if len(fds) != 1:
        for fd in fds:
            socket.close(fd)
        raise EOFError("a registration without its socket")
    doc = json.loads(body)
    return str(doc["job"]), [str(r) for r in doc["refs"]], fds[0]


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("control socket closed mid-frame")
        buf += chunk
    return buf
