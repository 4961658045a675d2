"""The predefined variables of a job (spec §2.5). Runs in the supervisor; reads only `os.environ`.

A host job starts from the `loom` process environment (§4.1), so `$NAME` in a workflow variable
expands from it too (`PATH: "$PATH:/opt/bin"` must extend the caller's PATH, not hide it). A Docker
job gets only the predefined and workflow variables, so its values expand from those alone.
"""

from __future__ import annotations

import os

from loomrun.workflow.model import Job
from loomrun.workflow.variables import expand


def predefined(job: Job, *, run_id: str, pipeline_id: str, project_dir: str, head_sha: str | None,
               branch: str | None) -> dict[str, str]:
    env = {
        "LOOM_CI": "true", "CI": "true",
        "LOOM_RUN_ID": run_id, "LOOM_PIPELINE_ID": pipeline_id,
        "LOOM_JOB_ID": job.name, "LOOM_JOB_NAME": job.name, "LOOM_JOB_STAGE": job.stage,
        "LOOM_PROJECT_DIR": project_dir, "LOOM_PROVIDER": job.provider,
        "CI_JOB_NAME": job.name, "CI_JOB_STAGE": job.stage, "CI_PROJECT_DIR": project_dir,
        "CI_PIPELINE_ID": pipeline_id,
    }
    if head_sha:
        env["CI_COMMIT_SHA"] = head_sha
        env["CI_COMMIT_SHORT_SHA"] = head_sha[:8]
    if branch:
        env["CI_COMMIT_BRANCH"] = branch
    return env


def job_env(job: Job, **kwargs: str | None) -> dict[str, str]:
    """Predefined variables, then the workflow's (root, default, extends chain, job), expanded in order.

    Only those names are returned; the host provider lays them over the process environment.
    """
    base = predefined(job, **kwargs)  # type: ignore[arg-type]
    if not job.variables:
        return base
    known = {**os.environ, **base} if job.provider == "host" else base
    resolved = expand(job.variables, known)
    names = set(base) | {name for name, _ in job.variables}
    return {name: value for name, value in resolved.items() if name in names}
