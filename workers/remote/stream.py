"""A step's output on a node, as coalesced byte chunks for a streaming generator. Runs in the node
actor (a Ray worker process on a cluster node).

Each item is one byte of tag and the bytes: `1` stdout, `2` stderr, `0` a heartbeat (nothing was
printed for a second: the gateway's watchdog hears the node is alive), `9` the exit code as text,
last. Output is held until 256 KiB are pending or the oldest pending byte is 5 ms old: ~80 items for
3,000,000 lines instead of thousands of tiny ones (measured: ~1 ms per item through Ray's
streaming generators, so coalescing is what makes the throughput), and an interactive line still
arrives within milliseconds. Every 250 ms it also reaps the step's orphans that exited (the actor
is a subreaper, like a local worker: see `workers/job.py`).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

from loomrun.proctree import ORPHAN_REAP_S, reap_orphans
from workers.providers.base import StepHandle

FLUSH_BYTES = 256 << 10
HOLD_S = 0.005
HEARTBEAT_S = 1.0
LINGER_S = 0.05  # after the step exited: how long a pipe held open by a background process is read on
READ = 1 << 20
STDOUT, STDERR, BEAT, EXIT = b"1", b"2", b"0", b"9"


def pump(handle: StepHandle, out_r: int, err_r: int) -> Iterator[bytes]:
    """Items until the step exited and its pipes reached EOF (or went quiet after the exit)."""
    tags = {out_r: STDOUT, err_r: STDERR}
    pending = {out_r: bytearray(), err_r: bytearray()}
    poller = select.poll()
    for fd in (out_r, err_r, handle.sentinel):
        poller.register(fd, select.POLLIN)
    open_fds = {out_r, err_r}
    code: int | None = None
    oldest: float | None = None
    last_sent = last_reap = time.monotonic()
    own = getattr(handle, "pid", None)  # a host step's process: its Popen reaps it
    try:
        while True:
            timeout = min(_timeout(code, oldest, last_sent), ORPHAN_REAP_S)
            events = poller.poll(timeout * 1000)
            now = time.monotonic()
            if now - last_reap >= ORPHAN_REAP_S:
                reap_orphans(own)
                last_reap = now
            got = False
            for fd, _ in events:
                if fd == handle.sentinel:
                    code = handle.poll()
                    if code is not None:
                        poller.unregister(fd)
                    continue
                data = os.read(fd, READ)
                if data:
                    pending[fd] += data
                    oldest = oldest or now
                    got = True
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
            finished = code is not None and (not open_fds or not got)
            if oldest is not None and (finished or now - oldest >= HOLD_S
                                       or any(len(b) >= FLUSH_BYTES for b in pending.values())):
                for fd, buf in pending.items():
                    if buf:
                        yield tags[fd] + bytes(buf)
                        buf.clear()
                oldest, last_sent = None, now
            if finished:
                break
            if now - last_sent >= HEARTBEAT_S:
                yield BEAT
                last_sent = now
    finally:
        for fd in (out_r, err_r):
            os.close(fd)
        handle.close()
    yield EXIT + str(code).encode()


def _timeout(code: int | None, oldest: float | None, last_sent: float) -> float:
    now = time.monotonic()
    if code is not None:
        return LINGER_S
    if oldest is not None:
        return max(0.0, HOLD_S - (now - oldest))
    return max(0.0, HEARTBEAT_S - (now - last_sent))
