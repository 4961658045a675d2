"""`policy` and `when` of a cache (spec §6.1): whether a job restores and saves it. PURE.

Runs in the worker process, between the job's phases.
"""

from __future__ import annotations

from loomrun.workflow.model import CacheSpec


def restores(spec: CacheSpec) -> bool:
    """`pull` and `pull-push` restore before the job; `push` does not."""
    return not spec.disabled and spec.policy in ("pull", "pull-push")


def saves(spec: CacheSpec, job_succeeded: bool) -> bool:
    """`push` and `pull-push` save after the job, when `when` matches its outcome."""
    if spec.disabled or spec.policy not in ("push", "pull-push"):
        return False
    if spec.when == "always":
        return True
    return job_succeeded if spec.when == "on_success" else not job_succeeded
