"""Where a run's jobserver tokens come from (spec §13). Runs in the supervisor.

`choose` picks, in this order:
1. `runtime.jobserver: off` (or `LOOM_JOBSERVER=off`): no jobserver; `--jobs` bounds the run alone.
2. `MAKEFLAGS` with `--jobserver-auth` (loom runs as a recipe of `make -j8 ci`): that jobserver.
   loom is one of its recipes, so it has one implicit slot (its first job) and borrows a token for
   each more. A `fifo:` form anywhere in MAKEFLAGS is used before the `R,W` one (a path reaches
   loom even through a program that closed the fds); `R,W` must be open in loom's process, which
   make does only for a recipe it sees as recursive (`+` or `$(MAKE)`), as make's own warning says.
3. `runtime.jobserver: fifo:PATH` (or `LOOM_JOBSERVER=fifo:PATH`): one pool for every `loom run`
   on the host. No implicit slot: a run borrows a token for each job.
4. Otherwise the run's own budget of `--jobs` (default: the number of CPUs).

The host-wide fifo is made and filled by whichever run finds nobody using it: every run using the
pool holds `PATH.users` shared (flock) for its life, and the check-and-fill happens under
`PATH.lock` held exclusive, so two runs starting together never both fill it. A fifo keeps its
bytes only while someone has it open, so a pool nobody uses is refilled, to the filler's `--jobs`,
by the next run; tokens a killed `loom` had borrowed come back that way too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loomrun.errors import LoomError
from loomrun.makeflags import jobserver_auth, jobserver_auths
from loomrun.supervisor.jobserver import OwnBudget, read_tokens, write_tokens

if TYPE_CHECKING:
    from loomrun.supervisor.jobserver import Source


class Borrowed:
    """An outside jobserver: tokens borrowed one at a time, given back when spare."""

    slots = 0

    def __init__(self, fd: int, implicit: int, label: str, held: tuple[int, ...] = ()) -> None:
        self.fd: int | None = fd  # our own open file description: O_NONBLOCK here touches nobody else's
        self.label = label
        self.initial = implicit
        self.owed = 0
        self.held = held  # lock fds to close after the fifo's (host pool)

    def spare(self) -> int | None:
        return 1

    def borrow(self, n: int) -> int:
        assert self.fd is not None
        got = read_tokens(self.fd, n)
        self.owed += got
        return got

    def give_back(self, n: int) -> int:
        assert self.fd is not None
        done = write_tokens(self.fd, n)
        self.owed -= done
        return done

    def close(self) -> None:
        for fd in self.held:  # `users` first: a run that starts now must not think the pool is in use
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        for fd in self.held:
            with contextlib.suppress(OSError):
                os.close(fd)


def choose(setting: str, env: Mapping[str, str], max_jobs: int) -> tuple[Source | None, str]:
    """(the source, a warning or ''). None: no jobserver. LoomError for a host fifo that cannot be used."""
    if setting == "off":
        return None, ""
    makeflags = env.get("MAKEFLAGS", "")
    if jobserver_auth(makeflags) is not None:
        return _from_make(makeflags)
    if setting.startswith("fifo:"):
        return host_pool(setting[len("fifo:"):], max_jobs), ""
    return OwnBudget(max_jobs), ""



def _from_make(makeflags: str) -> tuple[Source, str]:
    auths = jobserver_auths(makeflags)
    fifo = next((a[len("fifo:"):] for a in reversed(auths) if a.startswith("fifo:")), None)
    if fifo is not None:
        try:
            return Borrowed(_open_fifo(fifo), 1, f"make (MAKEFLAGS --jobserver-auth=fifo:{fifo})"), ""
        except OSError as exc:
            why = f"--jobserver-auth=fifo:{fifo} cannot be opened ({exc.strerror or exc})"
    else:
        fds = auths[-1]
        why = f"--jobserver-auth={fds} names no open pipe in loom's process"
        with contextlib.suppress(ValueError, OSError):
            r, w = (int(x) for x in fds.split(","))
            if r >= 0 and w >= 0 and stat.S_ISFIFO(os.fstat(r).st_mode) and stat.S_ISFIFO(os.fstat(w).st_mode):
                # Our own description of the pipe: make sets O_NONBLOCK on the one it shares.
                return Borrowed(os.open(f"/proc/self/fd/{r}", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC), 1,
                                f"make (MAKEFLAGS --jobserver-auth={fds})"), ""
    return OwnBudget(1), (f"the jobserver in MAKEFLAGS is unusable: {why}; running one job at a time "
                          "(make passes its jobserver only to a recipe marked `+` or running $(MAKE))")


def _open_fifo(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(0, "not a fifo")
    return fd


def host_pool(path: str, slots: int) -> Borrowed:
    """Join (or make and fill) the host-wide pool at `path`."""
    where = f"runtime.jobserver fifo:{path}"
    try:
        mutex = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LoomError(f"{where}: cannot use {path}.lock: {exc.strerror or exc}") from None
    try:
        fcntl.flock(mutex, fcntl.LOCK_EX)
        users = os.open(f"{path}.users", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        try:
            fd = _fill(path, slots) if alone else _open_fifo(path)
        except OSError as exc:
            os.close(users)
            raise LoomError(f"{where}: {exc.strerror or exc}") from None
        fcntl.flock(users, fcntl.LOCK_SH)  # under the mutex: nobody can find the pool unused meanwhile
        return Borrowed(fd, 0, f"host fifo:{path}", held=(users,))
    finally:
        os.close(mutex)


def _fill(path: str, slots: int) -> int:
    """Nobody uses the pool: (make and) fill it with `slots` tokens, whatever it held."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    fd = _open_fifo(path)
    while read_tokens(fd, 4096):
        pass
    write_tokens(fd, slots)  # (a fifo holds 64 KiB: a bigger pool is cut to that)
    return fd
