"""The run's GNU make jobserver (spec §13). Runs in the supervisor; owns the run's token fifos.

One pool of slots serves loom's scheduler and every `make` (cargo, rustc, ninja ≥ 1.13 ...) inside
the run's jobs. A running job holds one slot, its implicit one: the scheduler takes a token for
each job it starts and gives it back when the job ends. The tokens the jobs' makes share sit in a
named fifo, `tmp/<run_id>/jobserver/gen-<n>`; each job is handed the fifo's path and its worker
opens it for the job's processes (`workers/jobserver.py`).

Where tokens come from is a `Source` (`jobsource.py`): the run's own `--jobs`, the jobserver of a
`make` that runs `loom`, or a host-wide fifo. With its own budget every free token sits in the
fifo; with a borrowed one the fifo holds one spare while jobs run, and inotify tells the supervisor
when a make took it (then it borrows the next) or gave tokens back (then it returns what is spare):
loom never sits on another pool's slots for nothing.

A job killed while its makes held tokens takes them with it: no one writes them back. Every token
that went into a fifo and did not come out is accounted to that fifo (its *generation*), so once
no job using a generation is left, what it still owes was lost, exactly, and is made again. While
jobs still use it the split is unknowable (which make holds what), so after a job that did not end
cleanly (killed, crashed, timed out, a step killed by a signal) the jobs started later get a fresh
generation, while the old one keeps serving the jobs it has and is settled once they end: later
jobs get the full pool back as soon as the tokens are known to be free. A clean end with other
jobs on the same fifo settles nothing: make gives back what it took before it exits.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

TOKEN = b"+"

if TYPE_CHECKING:  # a Protocol costs ~1 ms to define, on every `loom run`'s start
    class Source(Protocol):
        """Where a pool's tokens come from."""

        label: str  # for the receipt and -v: "own", "make (MAKEFLAGS --jobserver-auth=3,4)", "host fifo:/x"
        initial: int  # tokens loom holds at start (its own budget, or the implicit slot under make)
        slots: int  # the pool's size for `-jN` in MAKEFLAGS; 0 when unknown
        fd: int | None  # readable when an outside pool has a token for us; None for our own budget
        owed: int  # tokens borrowed and not given back yet

        def spare(self) -> int | None:
            """Free tokens to keep in the fifo: None for all of them (our own budget)."""
            ...

        def borrow(self, n: int) -> int:
            """Take up to `n` tokens from the outside pool without waiting."""
            ...

        def give_back(self, n: int) -> int:
            """Return up to `n` borrowed tokens; how many went back."""
            ...

        def close(self) -> None:
            ...


def _fionread() -> int:
    # The generic ioctl number where it is the kernel's (x86-64, arm64): `termios` costs ~0.4 ms to
    # import on every `loom run`'s start. Other architectures number it differently: ask termios.
    if os.uname().machine in ("x86_64", "aarch64"):
        return 0x541B
    import termios

    return termios.FIONREAD


_FIONREAD = _fionread()


def pending(fd: int) -> int:
    """Bytes waiting in a fifo."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, _FIONREAD, buf, True)
    return buf[0]


def write_tokens(fd: int, n: int) -> int:
    """Put up to `n` tokens without waiting; how many went in (a fifo holds 64 KiB)."""
    done = 0
    while done < n:
        try:
            done += os.write(fd, TOKEN * min(n - done, 4096))
        except BlockingIOError:
            break
    return done


def read_tokens(fd: int, n: int) -> int:
    """Take up to `n` tokens without waiting (another reader may be quicker)."""
    if n <= 0:
        return 0
    try:
        return len(os.read(fd, n))
    except BlockingIOError:
        return 0


class OwnBudget:
    """The run's own `--jobs`: every free token sits in the run's fifo."""

    fd: int | None = None
    owed: int = 0

    label = "own"

    def __init__(self, slots: int) -> None:
        self.initial = self.slots = slots

    def spare(self) -> int | None:
        return None

    def borrow(self, n: int) -> int:
        return 0

    def give_back(self, n: int) -> int:
        raise AssertionError("an own budget is never borrowed from")

    def close(self) -> None:
        pass


class Generation:
    """One token fifo and the jobs handed its path."""

    __slots__ = ("fd", "jobs", "number", "outstanding", "path")

    def __init__(self, folder: Path, number: int) -> None:
        self.number = number
        self.path = str(folder / f"gen-{number}")
        os.mkfifo(self.path, 0o600)
        # Read and write: opening never waits for a peer, and reads never see end-of-file.
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.jobs: set[str] = set()
        self.outstanding = 0  # tokens put in minus taken out: in the fifo or held by the jobs' makes

    def put(self, n: int) -> int:
        done = write_tokens(self.fd, n) if n > 0 else 0
        self.outstanding += done
        return done

    def take(self, n: int) -> int:
        got = read_tokens(self.fd, n)
        self.outstanding -= got
        return got

    def settle(self) -> tuple[int, int]:
        """No job uses it any more: (the tokens it owes, of which lost). Empties it."""
        owed, found = self.outstanding, 0
        while chunk := read_tokens(self.fd, 4096):
            found += chunk
        self.outstanding = 0
        return owed, max(0, owed - found)

    def close(self) -> None:
        os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class Pool:
    def __init__(self, folder: Path, source: Source) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.slots = source.slots
        self.hand = source.initial  # tokens loom holds: not in a fifo, not a running job's
        self.running = 0  # jobs started with a slot from this pool
        self.wanting = False  # the scheduler has jobs waiting for a slot
        self.short = False  # the fifo lacks its spare and the outside pool had none to lend
        self.lost = 0  # tokens found lost and made again, over the run
        self.generations = 0
        self.old: list[Generation] = []
        self.member: dict[str, Generation] = {}
        self.watch = _Watch.open() if source.spare() is not None else None
        self.current = self._generation()

    def _generation(self) -> Generation:
        gen = Generation(self.folder, self.generations)
        self.generations += 1
        if self.watch is not None:
            self.watch.add(gen.path)
        return gen

    # -- the scheduler ---------------------------------------------------------------------------
    def grant(self, want: int) -> int:
        """Slots for up to `want` jobs now, never waiting."""
        got = min(self.hand, want)
        self.hand -= got
        if got < want:
            got += self.current.take(want - got)
        if got < want:
            got += self.source.borrow(want - got)
        self.wanting = got < want
        self.running += got
        return got

    def job_started(self, name: str, uses_fifo: bool) -> str:
        """The fifo path for a job just granted a slot ('' for a job that does not use it)."""
        if not uses_fifo:
            return ""
        self.current.jobs.add(name)
        self.member[name] = self.current
        return self.current.path

    def job_ended(self, name: str, clean: bool) -> None:
        """A job's worker is done and every process of the job is gone: its slot comes back."""
        self.running -= 1
        self.hand += 1
        gen = self.member.pop(name, None)
        if gen is None:
            return
        gen.jobs.discard(name)
        if not gen.jobs:
            self._settle(gen)
        elif not clean and gen is self.current:
            self.old.append(gen)  # its jobs keep it; it is settled when they end
            self.current = self._generation()

    def _settle(self, gen: Generation) -> None:
        owed, lost = gen.settle()
        self.hand += owed
        self.lost += lost
        if gen is not self.current:
            self.old.remove(gen)
            gen.close()

    # -- the loop ------------------------------------------------------------------------------
    def rebalance(self) -> None:
        """Once per turn of the loop, after the scheduler took its slots: free tokens where they
        belong (the fifo, or back to an outside pool), tokens returned to old generations home."""
        for gen in self.old:
            self.hand += gen.take(pending(gen.fd))
        spare = self.source.spare()
        if spare is None:
            self.hand -= self.current.put(self.hand)
            return
        if self.watch is not None:
            self.watch.drain()
        target = spare if self.current.jobs else 0
        have = pending(self.current.fd)
        self.short = False
        if have > target:
            self.hand += self.current.take(have - target)
        elif have < target:
            if self.hand < target - have:
                self.hand += self.source.borrow(target - have - self.hand)
            given = self.current.put(min(self.hand, target - have))
            self.hand -= given
            self.short = given < target - have
        self._give_back()

    def _give_back(self) -> None:
        back = min(self.hand, self.source.owed)
        if back > 0:
            self.hand -= self.source.give_back(back)

    def wait_fds(self) -> list[int]:
        fds = [gen.fd for gen in self.old]
        if self.watch is not None:
            if self.watch.fd >= 0:
                fds.append(self.watch.fd)
            if self.source.fd is not None and (self.wanting or self.short):
                fds.append(self.source.fd)
        elif self.wanting:
            fds.append(self.current.fd)
        return fds

    def timeout(self) -> float | None:
        """Without inotify, a borrowed pool is looked at every 20 ms while jobs use it."""
        blind = self.watch is not None and self.watch.fd < 0
        return 0.02 if blind and self.current.jobs else None

    def summary(self) -> dict[str, object]:
        """For the receipt: where the slots came from, and what was lost by killed jobs and made again."""
        return {"source": self.source.label, "slots": self.slots or None, "generations": self.generations,
                "lost_tokens": self.lost}

    def close(self) -> None:
        """The run is over (every job ended): settle every fifo, return what was borrowed."""
        for gen in [*self.old, self.current]:
            owed, lost = gen.settle()
            self.hand += owed
            self.lost += lost
            gen.close()
        self.old.clear()
        self._give_back()
        if self.watch is not None:
            self.watch.close()
        self.source.close()


class _Watch:
    """inotify on the fifos (IN_ACCESS: a make took a token, IN_MODIFY: one was written), through
    ctypes: imported only for a borrowed pool. `fd` is -1 where inotify is unavailable."""

    IN_ACCESS, IN_MODIFY = 0x1, 0x2

    def __init__(self, fd: int, libc: object) -> None:
        self.fd = fd
        self.libc = libc

    @classmethod
    def open(cls) -> _Watch:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except AttributeError:
            fd = -1
        return cls(fd, libc)

    def add(self, path: str) -> None:
        if self.fd >= 0:
            self.libc.inotify_add_watch(self.fd, path.encode(), self.IN_ACCESS | self.IN_MODIFY)  # type: ignore[attr-defined]

    def drain(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 65536):
                    pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
