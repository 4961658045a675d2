"""Job secrets (spec §7): resolve refs, hand values to the job as files or variables, and tell the
writer what to redact — before any step can print them. Worker process.

Only `env://NAME` is resolvable here; `keepass://` and `op://` need a client this machine does not
ship and fail with SECRETS_PROVIDER_UNAVAILABLE when required.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loomrun.protocol import messages as m
from workers.providers.base import JobContext
from workers.report import OpenSection, Reporter, SectionFailed

CONTAINER_DIR = "/run/loom/secrets"


def _fail(code: str, message: str) -> SectionFailed:
    return SectionFailed(f"{code}: {message}", m.SECRETS_ERROR, code)


def _lookup(ref: str) -> str | None:
    scheme, sep, rest = ref.partition("://")
    if not sep or not rest:
        raise _fail("SECRETS_REF_INVALID", f"secret ref {ref!r} is not <scheme>://<path>")
    if scheme == "env":
        return os.environ.get(rest)
    if scheme in ("keepass", "op"):
        raise _fail("SECRETS_PROVIDER_UNAVAILABLE", f"the {scheme} provider is not available on this machine")
    raise _fail("SECRETS_REF_INVALID", f"unknown secret scheme {scheme!r} in {ref!r}")


def provide(ctx: JobContext, rep: Reporter, staging: Path, trace: bool) -> None:
    """Fill ctx.env (and ctx.secret_mounts) with the job's secrets; fails the job on a required miss."""
    if not ctx.job.secrets:
        return
    with rep.section("secrets") as sec:
        if trace:
            raise _fail("SECRETS_UNSAFE_DEBUG_TRACE", "LOOM_DEBUG_TRACE=1 would print secret values; unset it")
        values: list[tuple[str, str]] = []
        for spec in ctx.job.secrets:
            try:
                value = _lookup(spec.ref)
            except SectionFailed:
                if spec.required:
                    raise
                sec.line(f"secret {spec.name}: provider unavailable; not required, skipped")
                continue
            if value is None:
                if spec.required:
                    raise _fail("SECRETS_REQUIRED_MISSING" if spec.ref.startswith("env://")
                                else "SECRETS_REF_NOT_FOUND", f"secret {spec.name} ({spec.ref}) has no value")
                sec.line(f"secret {spec.name}: not found; not required, skipped")
                continue
            values.append((spec.name, value))
            _deliver(ctx, spec.name, value, spec.file, staging, sec)
        # The writer learns the values before any step runs, so no line it writes can carry one.
        rep.send_now(m.Redact(tuple(values)))


def _deliver(ctx: JobContext, name: str, value: str, as_file: bool, staging: Path, sec: OpenSection) -> None:
    if not as_file:
        ctx.env[name] = value
        sec.line(f"secret {name}: variable")
        return
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = staging / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    if ctx.job.provider == "docker":
        inner = f"{CONTAINER_DIR}/{name}"
        ctx.secret_mounts[str(path)] = inner
        ctx.env[name] = inner
    else:
        ctx.env[name] = str(path)
    sec.line(f"secret {name}: file")


def remove(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
