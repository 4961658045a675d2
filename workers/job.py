"""One job, phase by phase: provider_prepare -> cache_restore -> artifact_restore -> execution ->
cache_save (+ artifact_extract) -> cleanup. Runs in the worker process.

The worker waits on exactly two things while a step runs: the step's sentinel and the supervisor's
pipe (a Cancel, or EOF when the supervisor died). With limits set it also wakes every 100 ms to
check them, and in any case every 250 ms to reap the orphans of the step that have exited (it is a
subreaper: a daemon a script started, then killed, must not linger as a zombie that `kill -0` still
sees). Stopping is the provider's `stop()`: TERM, grace, KILL of everything the job started.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loomrun.globs import matches_nothing
from loomrun.oserror import describe, printable
from loomrun.proctree import ORPHAN_REAP_S, reap_orphans
from loomrun.protocol import messages as m
from loomrun.protocol.spec import WorkerSpec
from workers.providers import get_provider
from workers.providers.base import JobContext, Provider, ProviderError, StepHandle, workspace_is_local
from workers.report import OpenSection, Reporter, SectionFailed

if TYPE_CHECKING:
    from workers.caching import JobCaches

LIMIT_TICK_S = 0.1
LEFTOVERS_WAIT_S = 60.0


class Canceled(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class JobRunner:
    def __init__(self, spec: WorkerSpec, rep: Reporter, broker: Connection | None = None) -> None:
        self.spec = spec
        self.rep = rep
        self.broker = broker  # the run's secrets broker, for a job with keepass:// or op:// refs
        self.sup: Connection = rep.supervisor
        self.job = spec.job
        self.cancel: m.Cancel | None = None
        self.lost_supervisor = False
        self.limit_kind: str | None = None
        self._last_code: int | None = None  # exit code of the last step that ran
        self.provider: Provider = get_provider("remote" if spec.remote else self.job.provider)
        self.ctx = JobContext(
            run_id=spec.run_id, pipeline_id=spec.pipeline_id, job=self.job, workspace=spec.workspace,
            env=dict(spec.env), sections=rep, mount_mode=spec.mount_mode, trace=spec.trace,
            grace_s=spec.grace_s,
            labels={"loom.run_id": spec.run_id, "loom.job_id": self.job.name, "loom.runtime": str(spec.runtime_dir)},
        )
        self.ctx.state["hurry"] = self._hurry
        if spec.remote:  # the remote provider waits for a node: a Cancel must end that wait
            self.ctx.state.update(remote={"socket": spec.remote}, placed=self._placed,
                                  canceled=lambda: self.cancel is not None or self.lost_supervisor)
        self.ctx.state["jobserver"] = (spec.jobserver, spec.jobserver_slots)  # workers/jobserver.py
        self.caches: JobCaches | None = None
        if spec.cache_enabled and self.job.caches:
            from workers.caching import JobCaches  # zstd and tarfile only for jobs with a cache

            self.caches = JobCaches(self.ctx, self.provider, rep, spec.runtime_dir, spec.head_sha,
                                    spec.cache_max_size)
        self.outputs: dict[str, str] = {}
        self._leftovers: tuple[threading.Thread, list[str]] | None = None

    # -- the job ---------------------------------------------------------------------------
    def run(self) -> m.JobFinished:
        status, kind, message = "success", None, ""
        code: int | None = 0
        try:
            self._prepare()
            if self.caches is not None:
                self.caches.restore()
            self._restore()
            code = self._execute()
            if code != 0:
                status, kind = "failed", m.STEP_FAILED
                message = f"exit code {code}"
        except Canceled as exc:
            status = "canceled" if exc.kind == m.CANCELED else "failed"
            kind, message, code = exc.kind, exc.reason, self._last_code
        except SectionFailed as exc:
            status, kind, message, code = "failed", exc.failure_kind, exc.message, None
        except ProviderError as exc:
            status, kind, message, code = "failed", m.PROVIDER_ERROR, exc.message, None
        if self.limit_kind is not None and status != "success":
            kind = self.limit_kind
            message = {m.MEMORY_LIMIT: "exceeded limits.memory", m.PIDS_LIMIT: "exceeded limits.pids"}[kind]
        try:
            if status != "canceled":  # a canceled job stops as fast as it can: nothing is saved
                if self.spec.fingerprint_outputs:
                    self.outputs = self._fingerprint()
                if self.caches is not None:
                    self.caches.save(status)
                self._save(status)
        except (SectionFailed, ProviderError, OSError) as exc:
            if status == "success":
                status, kind, code = "failed", m.PROVIDER_ERROR, None
                message = getattr(exc, "message", str(exc))
        self._cleanup()
        hits = tuple(self.caches.hits) if self.caches is not None else ()
        return m.JobFinished(self.job.name, status, code, kind, message, self._resources(), hits, self.outputs)

    def _prepare(self) -> None:
        with self.rep.phase("job.provider_prepare"):
            if self.job.secrets:
                from workers import secrets

                try:
                    secrets.provide(self.ctx, self.rep, self._secret_dir, self.spec.trace, self.broker,
                                    self._check_stop)
                finally:
                    self._close_broker()
            with self.rep.section("provider") as sec:
                sec.line(f"provider {self.provider.name}"
                         + (f", image {self.job.image.name}" if self.job.image else ""))
                self.ctx.log = sec
                try:
                    self.provider.prepare(self.ctx)
                finally:
                    if self.spec.docker_leftovers is not None:
                        self._reap_docker_leftovers(sec)

    def _reap_docker_leftovers(self, sec: Any) -> None:
        """Dead runs' containers, networks and volumes go in a thread with its own connection, while
        this job runs (started once the job's own container is up: the engine serves calls one
        container at a time, and a listing next to the start slowed the start by more than it
        took); `_cleanup` waits for it and logs what it removed."""
        from workers.providers.docker import reap_leftovers

        alive = self.spec.docker_leftovers or ()
        done: list[str] = []

        def reap() -> None:
            with contextlib.suppress(ProviderError):  # unreachable: prepare() says so in its own words
                done.extend(reap_leftovers(alive, prefix="loom-run-"))

        thread = threading.Thread(target=reap, name="docker-leftovers", daemon=True)
        thread.start()
        self._leftovers = (thread, done)
        sec.line("removing leftovers of dead runs in the background")

    @property
    def _secret_dir(self) -> Path:
        return self.spec.runtime_dir / "tmp" / self.spec.run_id / "secrets" / self.job.name

    def _restore(self) -> None:
        deps = [(j, Path(d)) for j, d in self.spec.dependency_artifacts if Path(d).is_dir()]
        if not deps:
            return
        with self.rep.phase("job.artifact_restore"), self.rep.section("artifact_restore") as sec:
            for dep, folder in deps:
                try:
                    self.provider.import_tree(self.ctx, folder)
                except (OSError, ProviderError) as exc:  # shutil.Error too: one line, never a crash
                    line = (f"artifacts of {dep}: {exc.message}" if isinstance(exc, ProviderError)  # says "cannot"
                            else f"cannot restore the artifacts of {dep}: {describe(exc, self.spec.workspace, folder)}")
                    raise SectionFailed(line, m.PROVIDER_ERROR, "LOOM_ARTIFACT_RESTORE") from exc
                sec.line(f"restored artifacts of {dep}")

    def _execute(self) -> int:
        with self.rep.phase("job.execution") as phase:
            for index, command in enumerate(self.job.script, start=1):
                code = self._step(index, command)
                if code != 0:
                    phase.status = "failed"
                    return code
        return 0

    def _step(self, index: int, command: str) -> int:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.rep.step_started(index, command, out_r, err_r)
        os.close(out_r)
        os.close(err_r)
        started = time.monotonic()
        try:
            handle = self.provider.start_step(self.ctx, index, command, out_w, err_w)
        except OSError as exc:  # a spawn failure is an outcome, not a crash
            self.rep.step_finished(index, 127, 0)
            raise SectionFailed(f"step {index} could not start: {exc.strerror or exc}", m.STEP_FAILED) from exc
        try:
            code = self._wait(handle)
        finally:
            handle.close()
        self._last_code = code
        self.rep.step_finished(index, code, int((time.monotonic() - started) * 1000))
        if self.cancel is not None:
            raise Canceled(self.cancel.kind, self.cancel.reason or self.cancel.kind)
        if self.lost_supervisor:
            raise Canceled(m.CANCELED, "the supervisor went away")
        if code != 0 and self.job.limits.memory_bytes is not None:
            self._limits_breached()  # a kernel OOM kill shows up only after the step died
        return code

    def _wait(self, handle: StepHandle) -> int:
        watch_limits = not self.job.limits.empty
        own = getattr(handle, "pid", None)  # a host step's process: its Popen reaps it
        stopping = False
        while True:
            code = handle.poll()
            if code is not None:
                return code
            ready = wait([handle.sentinel, *([] if self.lost_supervisor else [self.sup])],
                         timeout=LIMIT_TICK_S if watch_limits else ORPHAN_REAP_S)
            if not ready:
                reap_orphans(own)
            if self.sup in ready:
                self._read_supervisor()
            if not stopping and (self.cancel is not None or self.lost_supervisor):
                stopping = True
                grace = self.cancel.grace_s if self.cancel is not None else self.spec.grace_s
                self.provider.stop(self.ctx, grace)
            elif not stopping and watch_limits and self._limits_breached():
                stopping = True
                self.provider.stop(self.ctx, self.spec.grace_s)

    def _limits_breached(self) -> bool:
        if self.limit_kind is None:
            if self.provider.memory_exceeded(self.ctx):
                self.limit_kind = m.MEMORY_LIMIT
            elif self.provider.pids_exceeded(self.ctx):
                self.limit_kind = m.PIDS_LIMIT
        return self.limit_kind is not None

    def _read_supervisor(self) -> None:
        try:
            msg = self.sup.recv()
        except (EOFError, OSError):
            self.lost_supervisor = True
            return
        if isinstance(msg, m.Cancel):
            if self.cancel is not None and msg.grace_s < self.cancel.grace_s:
                self.ctx.state["hurried"] = True
            if self.cancel is None:
                self.cancel = msg

    def _check_stop(self) -> None:
        """While secrets are resolved: read what the supervisor said; stop the job if it must stop."""
        self._read_supervisor()
        if self.cancel is not None:
            raise Canceled(self.cancel.kind, self.cancel.reason or self.cancel.kind)
        if self.lost_supervisor:
            raise Canceled(m.CANCELED, "the supervisor went away")

    def _close_broker(self) -> None:
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    def _placed(self, node_id: str, address: str, labels: dict[str, str]) -> None:
        self.rep.record(m.JobPlaced(self.job.name, node_id, address, labels))

    def _hurry(self) -> bool:
        """Polled during a stop's grace period: a second ^C (Cancel with grace 0) ends it early."""
        if not self.lost_supervisor and self.sup.poll(0):
            self._read_supervisor()
        return bool(self.ctx.state.get("hurried")) or self.lost_supervisor

    # -- after the steps -----------------------------------------------------------------------
    def _save(self, status: str) -> None:
        art = self.job.artifacts
        if art is None or not art.paths:
            return
        wanted = {"on_success": status == "success", "on_failure": status != "success", "always": True}
        if not wanted.get(art.when, False):
            return
        staging = self.spec.runtime_dir / "tmp" / self.spec.run_id / "artifacts" / self.job.name
        with self.rep.phase("job.cache_save"), self.rep.section("artifact_extract") as sec:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            self.ctx.log = sec  # what the provider says while it copies belongs to this section
            try:
                files = self.provider.export_paths(self.ctx, art.paths, art.exclude, staging)
            except ValueError as exc:
                raise SectionFailed(str(exc), m.PROVIDER_ERROR, "LOOM_ARTIFACT_PATH") from exc
            except OSError as exc:
                why = describe(exc, self.spec.workspace, staging)
                raise SectionFailed(f"cannot copy the artifacts: {why}", m.PROVIDER_ERROR,
                                    "LOOM_ARTIFACT_COPY") from exc
            finally:
                self.ctx.log = None
            self._warn_unmatched(sec, art.paths, bool(art.exclude), staging)
            files = self._drop_unnamable(sec, files, staging)
            sec.details["files"] = len(files)
            for rel in files:
                sec.line(f"{rel}/" if os.path.isdir(staging / rel) and not os.path.islink(staging / rel) else rel)
            link_dir = staging.with_name(self.job.name + ".adopt")
            shutil.copytree(staging, link_dir, symlinks=True, copy_function=os.link, dirs_exist_ok=True)
            self.rep.writer.send(m.ArtifactsStaged(self.job.name, str(link_dir), tuple(files)))

    def _drop_unnamable(self, sec: OpenSection, files: list[str], staging: Path) -> list[str]:
        """A name that is not UTF-8 cannot be listed in the (JSON) manifest: skipped, with a warning."""
        kept = []
        for rel in files:
            try:
                rel.encode()
            except UnicodeEncodeError:
                sec.warn(f"artifact {printable(rel)} skipped: its name is not UTF-8")
                path = staging / rel
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                continue
            kept.append(rel)
        return kept

    def _warn_unmatched(self, sec: OpenSection, paths: Sequence[str], excluding: bool, staging: Path) -> None:
        """Spec §11: an artifacts path that matched nothing is a warning on the terminal. Checked on
        what was copied (any provider); a host workspace also tells "excluded" from "nothing"."""
        direct = self.job.provider == "host" or self.spec.mount_mode == "bind_mount"
        for pattern in paths:
            if not matches_nothing(staging, pattern):
                continue
            if not excluding or (direct and matches_nothing(self.spec.workspace, pattern)):
                sec.warn(f'artifacts path "{pattern}" matched nothing')
            elif direct:
                sec.warn(f'artifacts path "{pattern}": everything it matched is excluded')
            else:
                sec.warn(f'artifacts path "{pattern}" matched nothing (after exclude)')

    def _fingerprint(self) -> dict[str, str]:
        """sha256 + exec bit of every declared output (artifacts.paths and cache.paths)."""
        from loomrun.cache.compare import fingerprint

        art = self.job.artifacts
        patterns = [*(art.paths if art else ()), *(p for c in self.job.caches if not c.disabled for p in c.paths)]
        if not patterns:
            return {}
        exclude = art.exclude if art else ()
        if workspace_is_local(self.provider, self.job, self.spec.mount_mode):
            return fingerprint(self.spec.workspace, patterns, exclude)
        staging = self.spec.runtime_dir / "tmp" / self.spec.run_id / "outputs" / self.job.name
        staging.mkdir(parents=True, exist_ok=True)
        try:
            self.provider.export_paths(self.ctx, patterns, exclude, staging)
            return fingerprint(staging, patterns, exclude)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _cleanup(self) -> None:
        self._close_broker()
        with self.rep.phase("job.cleanup"), self.rep.section("cleanup") as sec:
            self.provider.cleanup(self.ctx)
            if self._leftovers is not None:
                thread, removed = self._leftovers
                thread.join(LEFTOVERS_WAIT_S)
                for what in removed:
                    sec.line(f"removed leftover {what}")
            if self.job.secrets:
                from workers import secrets

                secrets.remove(self._secret_dir)
            for line in self.ctx.state.get("cleanup_lines", []):  # said on a remote node
                sec.line(line)
            for line in self.ctx.state.get("stop_log", []):
                sec.line(f"stop: {line}")

    def _resources(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = self.ctx.state.get("final_peak") or self.provider.peak_memory(self.ctx) or 0
        return {
            "peak_rss_bytes": max(int(peak), usage.ru_maxrss * 1024),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime + self.ctx.state.get("remote_cpu", 0.0), 3),
        }
