"""Which jobs may start now: stages and `needs`, eager, bounded by --jobs. Runs in the supervisor.

PURE state: no processes. A job is ready when every job it depends on succeeded (or failed with
allow_failure); it is skipped when one of them failed, was skipped or was canceled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loomrun.workflow.model import Job

DONE = frozenset({"success", "failed", "skipped", "canceled"})


class Scheduler:
    def __init__(self, jobs: Sequence[Job], deps: Mapping[str, Sequence[str]], max_jobs: int) -> None:
        self.order = [j.name for j in jobs]
        self.position = {name: i for i, name in enumerate(self.order)}
        self.jobs = {j.name: j for j in jobs}
        self.deps = {name: tuple(d for d in deps.get(name, ()) if d in self.jobs) for name in self.order}
        self.max_jobs = max(1, max_jobs)
        self.state: dict[str, str] = dict.fromkeys(self.order, "pending")
        self.dependents: dict[str, list[str]] = {name: [] for name in self.order}
        for name, ds in self.deps.items():
            for d in ds:
                self.dependents[d].append(name)
        self._waiting = {name: len(ds) for name, ds in self.deps.items()}  # unmet dependencies
        self._ready = [name for name in self.order if self._waiting[name] == 0]
        self.running = 0
        self._open = len(self.order)  # jobs not done yet: done() is asked on every turn of the event loop

    def _ok(self, name: str) -> bool:
        st = self.state[name]
        return st == "success" or (st == "failed" and self.jobs[name].allow_failure)

    def startable(self) -> int:
        """How many jobs could start now: ready ones, up to the --jobs bound."""
        return max(0, min(len(self._ready), self.max_jobs - self.running))

    def take_ready(self, limit: int | None = None) -> list[str]:
        """Jobs to start now, in declaration order, up to the --jobs bound (and `limit`: the slots
        the jobserver granted)."""
        free = self.max_jobs - self.running if limit is None else min(limit, self.max_jobs - self.running)
        if free <= 0 or not self._ready:
            return []
        self._ready.sort(key=self.position.__getitem__)
        out, self._ready = self._ready[:free], self._ready[free:]
        for name in out:
            self.state[name] = "running"
        self.running += len(out)
        return out

    def finish(self, name: str, status: str) -> list[tuple[str, str]]:
        """Record a running job's end; returns the jobs skipped because of it, with the reason."""
        assert self.state[name] == "running", (name, self.state[name])
        assert status in DONE, status
        self.state[name] = status
        self.running -= 1
        self._open -= 1
        return self._propagate(name)

    def _propagate(self, name: str) -> list[tuple[str, str]]:
        skipped: list[tuple[str, str]] = []
        ok = self._ok(name)
        status = self.state[name]
        for dep in self.dependents[name]:
            if self.state[dep] != "pending":
                continue
            if ok:
                self._waiting[dep] -= 1
                if self._waiting[dep] == 0:
                    self._ready.append(dep)
            else:
                self.state[dep] = "skipped"
                self._open -= 1
                how = {"failed": "which failed", "skipped": "which was skipped", "canceled": "which was canceled"}
                skipped.append((dep, f'needs "{name}", {how.get(status, status)}'))
                skipped.extend(self._propagate(dep))
        return skipped

    def cancel_pending(self) -> list[str]:
        names = [n for n in self.order if self.state[n] == "pending"]
        for n in names:
            self.state[n] = "canceled"
        self._open -= len(names)
        self._ready.clear()
        return names

    def done(self) -> bool:
        return self._open == 0
