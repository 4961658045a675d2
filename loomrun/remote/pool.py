"""The gateway's node actors, pooled per placement. Runs in the gateway process.

Starting an actor starts a Ray worker process on its node (~1 s of CPU there, measured); calling a
live one costs ~1 ms. So an actor that finished a job goes back to the pool and takes the next job
with the same placement (label selector + resource request): a run of 100 short jobs at `-j 4`
starts 4 actors. Idle actors hold their resource request; when a new actor is not placed within
half a second and idle actors of other placements exist, those are killed to make room.

The watchdog (`watch`) pings every busy actor once a second; an actor that raises (its node died)
or has not answered a ping for `HANG_S` (its node hangs: SIGSTOP, a dead link) is marked lost, and
every wait of the gateway on that actor gives up at once with `node lost: <node id>`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from loomrun.remote import rayapi
from loomrun.remote.placement import Placement

RETIRE_WAIT_S = 10.0
HANG_S = 8.0  # a ping unanswered this long: the node hangs (spec §12: reported within 15 s)
PING_EVERY_S = 1.0
EVICT_AFTER_S = 0.5


class VersionMismatch(Exception):
    pass


class Member:
    __slots__ = ("actor", "busy", "key", "loaded", "lost", "node_id", "ping", "ping_sent")

    def __init__(self, actor: Any, key: Placement, node_id: str) -> None:
        self.actor = actor
        self.key = key
        self.node_id = node_id
        self.loaded = False  # holds the run's snapshot
        self.busy = True
        self.lost: str | None = None  # "node lost: <id>" once the watchdog gave up on it
        self.ping: Any = None
        self.ping_sent = 0.0


class Pool:
    def __init__(self, run_id: str, root: str | None = None) -> None:
        self.run_id = run_id
        self.root = root
        self.lock = threading.Lock()
        self.members: list[Member] = []
        self.closed = False

    def acquire(self, key: Placement, abort: Callable[[], bool]) -> Member | None:
        """An actor for `key` (idle or new); None when `abort()` said so while waiting for one.
        rayapi.NodeLost: the new actor died before it was placed."""
        idle = self._take_idle(key)
        if idle is not None:
            return idle
        actor = rayapi.create(self.run_id, dict(key.selector), key.cpus, key.memory, self.root)
        where = rayapi.call(actor, "where")
        start, evicted = time.monotonic(), False
        while not rayapi.ready([where], 0.1):
            idle = None if abort() or self.closed else self._take_idle(key)
            if idle is not None or abort() or self.closed:  # an actor freed meanwhile holds what this one waits for
                rayapi.kill([actor])
                return idle
            if not evicted and time.monotonic() - start > EVICT_AFTER_S:
                evicted = True
                self._evict(key)
        node_id, theirs = rayapi.get(where)
        if theirs != rayapi.versions():
            rayapi.kill([actor])
            raise VersionMismatch(f"node {node_id} runs {theirs}; this loom is {rayapi.versions()} "
                                  "(install the same loomrun on every node)")
        member = Member(actor, key, str(node_id))
        with self.lock:
            self.members.append(member)
        return member

    def _take_idle(self, key: Placement) -> Member | None:
        with self.lock:
            for member in self.members:
                if not member.busy and member.key == key and member.lost is None:
                    member.busy = True
                    return member
        return None

    def release(self, member: Member, keep: bool) -> None:
        with self.lock:
            if keep and member.lost is None and not self.closed:
                member.busy = False
                return
            if member in self.members:
                self.members.remove(member)
        rayapi.kill([member.actor])

    def _evict(self, key: Placement) -> None:
        with self.lock:
            idle = [m for m in self.members if not m.busy and m.key != key]
            for member in idle:
                self.members.remove(member)
        rayapi.kill(m.actor for m in idle)

    def watch(self) -> None:
        """One round of the watchdog (the gateway calls it every PING_EVERY_S)."""
        now = time.monotonic()
        with self.lock:
            busy = [m for m in self.members if m.busy and m.lost is None]
        for member in busy:
            if member.ping is None:
                member.ping, member.ping_sent = rayapi.call(member.actor, "ping"), now
            elif rayapi.ready([member.ping], 0):
                try:
                    rayapi.get(member.ping)
                    member.ping = None
                except rayapi.NodeLost:
                    member.lost = f"node lost: {member.node_id}"
            elif now - member.ping_sent > HANG_S:
                member.lost = f"node lost: {member.node_id} (no answer for {HANG_S:g}s)"
                rayapi.kill([member.actor])

    def close(self) -> None:
        """The run is over: every actor removes its folder on its node (bounded wait), then dies."""
        with self.lock:
            self.closed = True
            members, self.members = self.members, []
        calls = [rayapi.call(m.actor, "retire") for m in members if m.lost is None]
        deadline = time.monotonic() + RETIRE_WAIT_S
        while calls and time.monotonic() < deadline:
            calls = [c for c in calls if c not in rayapi.ready(calls, max(0.0, deadline - time.monotonic()))]
        rayapi.kill(m.actor for m in members)
