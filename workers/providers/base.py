"""The provider Protocol: how a worker runs one job's steps somewhere (host shell, Docker, fake).

Runs in the worker process. A provider never talks to the supervisor or writes logs itself: it
reports through `ctx.sections` (system-section output that the worker forwards to the writer) and
writes each step's raw stdout/stderr bytes into the two file descriptors it is given (the writer
holds the read ends, so every byte a step printed survives a worker crash).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Protocol

from loomrun.workflow.model import Job


class ProviderError(Exception):
    """The provider could not do its part (prepare, image build, copy). Fails the job in `section`.

    `section` is `provider`, `image_build` or `services`; `message` names the cause in one line.
    """

    def __init__(self, message: str, section: str = "provider") -> None:
        super().__init__(message)
        self.message = message
        self.section = section


class SectionLog(Protocol):
    """Output of one system section (`jobs/<id>/system/<section>/events.jsonl`)."""

    def line(self, text: str, stream: str = "stdout") -> None: ...


class Sections(Protocol):
    def section(self, name: str) -> AbstractContextManager[SectionLog]:
        """Open system section `name`; an exception escaping the block marks it failed (and re-raises)."""
        ...


class JobContext:
    """What a provider knows of the job it runs. A plain class, not a dataclass: the fork server
    imports this module, and `dataclasses` (with `inspect`) added ~1.1 MB to it, which every
    worker's fork and exit then copied and tore down."""

    __slots__ = ("env", "grace_s", "job", "labels", "log", "mount_mode", "pipeline_id", "run_id", "secret_mounts",
                 "sections", "state", "trace", "workspace")

    def __init__(self, *, run_id: str, pipeline_id: str, job: Job, workspace: Path, env: dict[str, str],
                 sections: Sections, mount_mode: str = "ephemeral_volume", trace: bool = False, grace_s: float = 5.0,
                 labels: dict[str, str] | None = None) -> None:
        self.run_id = run_id
        self.pipeline_id = pipeline_id
        self.job = job
        self.workspace = workspace  # the run's snapshot directory on the host
        self.env = env  # loom's variables for this job: predefined + workflow, expanded
        self.sections = sections
        self.mount_mode = mount_mode  # Docker only: ephemeral_volume | bind_mount
        self.trace = trace  # LOOM_DEBUG_TRACE=1: run steps with `sh -x`
        self.grace_s = grace_s
        self.labels = labels or {}  # loom.run_id, loom.job_id
        self.secret_mounts: dict[str, str] = {}  # host file -> path in the job
        self.state: dict[str, Any] = {}  # provider-private (container id, ...)
        self.log: SectionLog | None = None  # lines for the `provider` section, open while prepare() runs


class StepHandle(Protocol):
    """A running step. `sentinel` is an fd that becomes readable when the step has ended."""

    @property
    def sentinel(self) -> int: ...

    def poll(self) -> int | None:
        """The exit code once ended (128+N for a signal N), else None."""
        ...

    def close(self) -> None:
        """Release the sentinel and anything else the handle holds."""
        ...


def workspace_is_local(provider: Provider, job: Job, mount_mode: str) -> bool:
    """Whether the job's workspace is the run's snapshot folder itself (host jobs, bind-mounted
    Docker jobs): caches and fingerprints then read it directly instead of through the provider.
    A remote job's workspace is a copy on its node."""
    return provider.name != "remote" and (job.provider == "host" or mount_mode == "bind_mount")


class Provider(Protocol):
    name: ClassVar[str]

    def prepare(self, ctx: JobContext) -> None:
        """Make the job runnable (image, network, services, container, volume). Raise ProviderError."""
        ...

    def start_step(self, ctx: JobContext, index: int, command: str, stdout_fd: int, stderr_fd: int) -> StepHandle:
        """Start one script entry; its output goes to the two fds (the provider may close its copies)."""
        ...

    def stop(self, ctx: JobContext, grace_s: float) -> None:
        """Stop everything the job started: TERM, wait up to grace_s, then KILL. Idempotent."""
        ...

    def import_tree(self, ctx: JobContext, src: Path) -> None:
        """Copy the contents of host folder `src` into the job's workspace (caches, artifacts).

        Links are copied as links, never followed (in `src` or in the workspace); where the
        workspace already holds a path, `src`'s version wins, whatever the two kinds are.
        """
        ...

    def export_paths(self, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
        """Copy workspace files matching the globs (minus `exclude`) to `dest`, keeping relative paths.

        Returns the relative paths copied, sorted: files, symlinks (copied as links) and empty
        folders (`loomrun.globs.EMPTY_DIRS`: a matched folder that holds nothing must arrive
        downstream). Globs are workspace-relative; a match outside the workspace is refused.
        """
        ...

    def memory_exceeded(self, ctx: JobContext) -> bool:
        """True when the provider knows the job was killed for memory (Docker: OOMKilled)."""
        ...

    def pids_exceeded(self, ctx: JobContext) -> bool:
        """True when the job hit `limits.pids` (a fork was refused, or the count went over)."""
        ...

    def peak_memory(self, ctx: JobContext) -> int | None:
        """Peak memory of the job's processes in bytes, when known."""
        ...

    def cleanup(self, ctx: JobContext) -> None:
        """Remove everything prepare() created, whatever happened. Must not raise."""
        ...


