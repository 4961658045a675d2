"""A job's secrets (spec §7): resolve its refs, tell the writer what to redact, then hand the values
to the job as 0600 files or variables — all before any step runs. Worker process, section `secrets`.

`env://` refs are read here, from the worker's own environment (the `loom` process's). `keepass://`
and `op://` refs are asked of the run's secrets broker over the socket the supervisor handed this
worker; the broker answers only the refs this job declared, and the values exist in this process
and the writer's (which must know them to redact them), nowhere else.

Every value reaches the writer (`Redact`) before any line about it is recorded: lines are handled in
order, so nothing the writer writes after that can carry it, whatever the step prints.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from loomrun.protocol import messages as m
from loomrun.workflow.model import SecretSpec
from loomrun.workflow.secret_refs import VAULT_SCHEMES, EnvRef, RefError, parse, scheme_of
from workers.providers.base import JobContext
from workers.report import OpenSection, Reporter, SectionFailed
from workers.secrets.errors import (
    PROVIDER_UNAVAILABLE,
    REF_INVALID,
    REQUIRED_MISSING,
    UNSAFE_DEBUG_TRACE,
    SecretError,
)

CONTAINER_DIR = "/run/loom/secrets"
BROKER_WAIT_S = 300.0  # a vault being opened for many jobs, or a slow 1Password: generous, but bounded
TRACE_VARS = ("LOOM_DEBUG_TRACE", "CI_DEBUG_TRACE")

Outcome = tuple[str | None, SecretError | None, dict[str, Any]]  # value, error, what the broker said


def provide(ctx: JobContext, rep: Reporter, staging: Path, trace: bool, broker: Connection | None,
            check_stop: Callable[[], None]) -> None:
    """Fill ctx.env (and ctx.secret_mounts) with the job's secrets; a required one that fails fails the
    job (SectionFailed, secrets_error). `check_stop` is called when the supervisor speaks while the
    broker is asked (it raises to stop the job)."""
    with rep.section("secrets") as sec:
        on = _trace_on(trace, ctx.env)
        if on:
            raise _fail(UNSAFE_DEBUG_TRACE, f"{on} is on and this job has secrets: a traced shell would print "
                                            f"their values; unset {on} or remove the job's secrets")
        outcomes = resolve_all(ctx.job.secrets, broker, rep.supervisor, check_stop)
        values = tuple((s.name, v) for s in ctx.job.secrets if (v := outcomes[s.name][0]))
        rep.send_now(m.Redact(values))  # before any line that could follow them
        ctx.state["secret_values"] = values
        for spec in ctx.job.secrets:
            value, error, said = outcomes[spec.name]
            if error is not None:
                if spec.required:
                    raise _fail(error.code, f"secret {spec.name} ({spec.ref}): {error.message}")
                sec.warn(f"secret {spec.name} ({spec.ref}) skipped, not required: {error.code}: {error.message}")
                continue
            assert value is not None
            _deliver(ctx, spec, value, staging, sec, _provenance(said))


def _trace_on(trace: bool, env: Mapping[str, str]) -> str | None:
    """The name of a debug-trace switch that is on (in loom's environment or the job's variables)."""
    for name in TRACE_VARS:
        for source in (os.environ, env):
            if str(source.get(name, "")).strip().lower() in ("1", "true", "yes", "on"):
                return name
    return "LOOM_DEBUG_TRACE" if trace else None


def _fail(code: str, message: str) -> SectionFailed:
    return SectionFailed(f"{code}: {message}", m.SECRETS_ERROR, code)


def resolve_all(specs: tuple[SecretSpec, ...], broker: Connection | None, supervisor: Connection | None,
                check_stop: Callable[[], None]) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    remote: list[SecretSpec] = []
    for spec in specs:
        if scheme_of(spec.ref) in VAULT_SCHEMES:
            remote.append(spec)
            continue
        try:
            ref = parse(spec.ref)
            assert isinstance(ref, EnvRef)
            value = os.environ.get(ref.name)
            if value is None:
                raise SecretError(REQUIRED_MISSING, f"${ref.name} is not set in the environment of loom")
            out[spec.name] = (value, None, {})
        except RefError as exc:
            out[spec.name] = (None, SecretError(REF_INVALID, str(exc)), {})
        except SecretError as exc:
            out[spec.name] = (None, exc, {})
    if remote:
        answers = _ask(broker, sorted({s.ref for s in remote}), supervisor, check_stop)
        for spec in remote:
            said = answers[spec.ref]
            if "value" in said:
                out[spec.name] = (str(said["value"]), None, said)
            else:
                out[spec.name] = (None, SecretError(str(said.get("code") or PROVIDER_UNAVAILABLE),
                                                    str(said.get("message", ""))), said)
    return out


def _ask(broker: Connection | None, refs: list[str], supervisor: Connection | None,
         check_stop: Callable[[], None]) -> dict[str, dict[str, Any]]:
    def everyone(message: str) -> dict[str, dict[str, Any]]:
        return {ref: {"code": PROVIDER_UNAVAILABLE, "message": message} for ref in refs}

    if broker is None:
        return everyone("no secrets broker is running for this job (it could not be started)")
    try:
        broker.send_bytes(json.dumps({"refs": refs}).encode())
        waiting = [broker] if supervisor is None else [broker, supervisor]
        while True:
            ready = wait(waiting, timeout=BROKER_WAIT_S)
            if not ready:
                return everyone(f"the secrets broker did not answer within {BROKER_WAIT_S:.0f} s")
            if supervisor is not None and supervisor in ready:
                check_stop()  # raises when the job must stop; otherwise it read a message for later
            if broker in ready:
                results: dict[str, dict[str, Any]] = json.loads(broker.recv_bytes())["results"]
                return results
    except (EOFError, OSError, ValueError, KeyError):
        return everyone("the secrets broker went away before answering")


def _provenance(said: Mapping[str, Any]) -> str:
    if not said.get("source"):
        return ""
    how = "opened for this run" if said.get("opened") else "already open"
    return f" from {said['source']} ({how}; vaults opened in this run: {said.get('opens', '?')})"


def _deliver(ctx: JobContext, spec: SecretSpec, value: str, staging: Path, sec: OpenSection, where: str) -> None:
    name = spec.name
    if not spec.file:
        ctx.env[name] = value
        sec.line(f"secret {name}: variable{where}")
        return
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(staging, 0o700)
    path = staging / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.fsencode(value))  # the variable's bytes as they were, valid UTF-8 or not
    if ctx.job.provider == "docker":
        inner = f"{CONTAINER_DIR}/{name}"
        ctx.secret_mounts[str(path)] = inner  # bind-mounted read-only by the Docker provider
        ctx.env[name] = inner
    else:
        ctx.env[name] = str(path)
    sec.line(f"secret {name}: file{where}")


def remove(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
