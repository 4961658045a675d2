"""A job's variables and expansions as the supervisor makes them (spec §2.5, §6.2): `prepare_job` and
the predefined variables. Pure: no processes (the runs are in tests/e2e/test_run_workflow_inputs.py)."""

from __future__ import annotations

import pytest

from loomrun.errors import LoomError
from loomrun.supervisor.env import pipeline_variables, prepare_job
from loomrun.workflow.model import Artifacts, CacheSpec, Image, ImageBuild, Job, KeyFiles, KeyPrefix, KeyTemplate
from loomrun.workspace import GitFacts

PIPE = pipeline_variables(run_id="loom-run-local-1", pipeline_id="loom-local-1", project_dir="/snap",
                          project_name="repo", git=GitFacts("a" * 40, "feature/x", "v1.0", "trunk"))


def test_pipeline_variables() -> None:
    assert PIPE == {
        "LOOM_CI": "true", "CI": "true", "LOOM_RUN_ID": "loom-run-local-1", "LOOM_PIPELINE_ID": "loom-local-1",
        "LOOM_PROJECT_DIR": "/snap", "CI_PROJECT_DIR": "/snap", "CI_PIPELINE_ID": "loom-local-1",
        "CI_PROJECT_NAME": "repo", "CI_PIPELINE_SOURCE": "local", "CI_DEFAULT_BRANCH": "trunk",
        "CI_COMMIT_SHA": "a" * 40, "CI_COMMIT_SHORT_SHA": "a" * 8, "CI_COMMIT_BRANCH": "feature/x",
        "CI_COMMIT_TAG": "v1.0", "CI_COMMIT_REF_NAME": "feature/x"}
    detached = pipeline_variables(run_id="r", pipeline_id="p", project_dir="/s", project_name="n",
                                  git=GitFacts("b" * 40, None, "v2", None))
    assert (detached["CI_COMMIT_REF_NAME"], detached["CI_DEFAULT_BRANCH"]) == ("v2", "main")
    assert "CI_COMMIT_BRANCH" not in detached
    outside = pipeline_variables(run_id="r", pipeline_id="p", project_dir="/s", project_name="n", git=None)
    assert not any(k.startswith("CI_COMMIT_") for k in outside) and outside["CI_DEFAULT_BRANCH"] == "main"


def test_host_variables_expand_from_each_other_and_the_caller() -> None:
    job = Job(name="b", stage="s", script=("x",), variables=(
        ("FULL", "$BASE/bin:$PATH"), ("BASE", "/opt/$CI_PROJECT_NAME"), ("CI", "was-$CI"), ("LIT", "$$HOME"),
        ("UNK", "$NOPE")))
    env, _ = prepare_job(job, PIPE, "/snap", caller={"PATH": "/usr/bin", "HOME": "/root", "CI": "caller"})
    assert {k: env[k] for k in ("FULL", "BASE", "CI", "LIT", "UNK")} == {
        "FULL": "/opt/repo/bin:/usr/bin", "BASE": "/opt/repo", "CI": "was-true", "LIT": "$HOME", "UNK": "$NOPE"}
    assert env["LOOM_JOB_NAME"] == "b" and env["LOOM_PROVIDER"] == "host" and "HOME" not in env


def test_a_docker_job_never_expands_from_the_caller() -> None:
    job = Job(name="d", stage="s", script=("x",), image=Image("$REG/app:$TAG"),
              variables=(("TAG", "1"), ("REG", "reg.io"), ("H", "$HOME")))
    env, expanded = prepare_job(job, PIPE, "/workspace", caller={"HOME": "/root"})
    assert env["H"] == "$HOME" and env["CI_PROJECT_DIR"] == "/workspace"
    assert expanded.image == Image("reg.io/app:1")


def test_paths_keys_and_image_arrive_expanded() -> None:
    job = Job(name="j", stage="s", script=("x",), variables=(("OUT", "dist/$V"), ("V", "2")),
              image=Image("img:$V", ImageBuild("ctx-$V", "Dockerfile.$V")),
              artifacts=Artifacts(paths=("$OUT/", "$${LIT}"), exclude=("$OUT/tmp",)),
              caches=(CacheSpec(name="a", paths=("$OUT/c",), key=KeyFiles(("lock-$V",), "p-$V"),
                                fallback_keys=("fb-$job_name-$V", "$head_sha")),
                      CacheSpec(name="b", paths=("c",), key=KeyTemplate("$job_id/$run_id/$pipeline_id/$V/$NOPE")),
                      CacheSpec(name="c", paths=("c",), key=KeyPrefix("pre-$V")),
                      CacheSpec(name="d", paths=("c",), key="str-$V-$job_name")))
    _, out = prepare_job(job, PIPE, "/workspace")
    assert out.image == Image("img:2", ImageBuild("ctx-2", "Dockerfile.2"))
    assert out.artifacts == Artifacts(paths=("dist/2/", "${LIT}"), exclude=("dist/2/tmp",))
    a, b, c, d = out.caches
    assert (a.paths, a.key, a.fallback_keys) == (("dist/2/c",), KeyFiles(("lock-2",), "p-2"), ("fb-j-2", "a" * 40))
    assert b.key == KeyTemplate("j/loom-run-local-1/loom-local-1/2/$NOPE")
    assert c.key == KeyPrefix("pre-2")
    assert d.key == "str-2-$job_name"  # the five ids are for templates and fallback keys only (spec §6.2)


@pytest.mark.parametrize(("job", "message"), [
    (Job(name="j", stage="s", script=("x",), variables=(("A", "$B"), ("B", "$A"))),
     'job "j": variable cycle: A -> B -> A'),
    (Job(name="j", stage="s", script=("x",), variables=(("OUT", "/etc"),), artifacts=Artifacts(paths=("$OUT",))),
     'job "j": artifacts path "$OUT" expands to "/etc", which must be relative to the workspace and hold no ".."'),
    (Job(name="j", stage="s", script=("x",), variables=(("UP", ".."),),
         caches=(CacheSpec(name=None, paths=("$UP/x",)),)),
     'job "j": cache path "$UP/x" expands to "../x", which must be relative to the workspace and hold no ".."'),
    (Job(name="j", stage="s", script=("x",), variables=(("I", ""),), image=Image("$I")),
     'job "j": image "$I" expands to an empty name'),
    (Job(name="j", stage="s", script=("x",), variables=(("K", "k" * 100_000),),
         caches=(CacheSpec(name=None, paths=("c",), key="$K$K$K$K$K$K$K$K$K$K$K"),)),
     'job "j": cache key "$K$K$K$K$K$K$K$K$K$K$K" expands to more than 1 MiB'),
])
def test_what_cannot_be_expanded_is_one_line_naming_the_job(job: Job, message: str) -> None:
    with pytest.raises(LoomError) as info:
        prepare_job(job, PIPE, "/snap", caller={})
    assert info.value.message == message


def test_a_job_whose_environment_would_not_fit_a_process_is_refused() -> None:
    """ARG_MAX counts every environment string (and its pointer): twenty 120 KB variables pass the
    per-variable bound but not the whole."""
    job = Job(name="big", stage="s", script=("x",), variables=tuple((f"V{i}", "v" * 120_000) for i in range(20)))
    with pytest.raises(LoomError) as info:
        prepare_job(job, PIPE, "/snap", caller={"PATH": "/bin"})
    assert info.value.message.startswith('job "big": its variables and the caller\'s environment come to ')


@pytest.mark.parametrize(("value", "grace"), [("5", 5.0), ("0.5", 0.5), ("1e12", 3600.0), ("inf", 3600.0),
                                              ("nan", 5.0), ("-3", 0.0), ("soon", 5.0)])
def test_the_stop_grace_is_a_wait_that_cannot_overflow(monkeypatch: pytest.MonkeyPatch, value: str,
                                                       grace: float) -> None:
    from loomrun.supervisor.run import _grace_s

    monkeypatch.setenv("LOOM_STOP_GRACE_S", value)
    assert _grace_s() == grace
