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


def test_a_secret_named_in_a_cache_key_is_left_for_the_worker() -> None:
    """The supervisor never sees secret values: `$TOKEN` of a job secret becomes a placeholder the
    worker fills (never the caller's variable of the same name); in a path it stays as written."""
    from loomrun.workflow.model import SecretSpec
    from workers.caching import fill_secrets

    job = Job(name="j", stage="s", script=("x",), secrets=(SecretSpec("TOKEN", "env://T", file=False),),
              artifacts=Artifacts(paths=("out/$TOKEN",)),
              caches=(CacheSpec(name="a", paths=("c",), key="k-$TOKEN-$$TOKEN", fallback_keys=("f-${TOKEN}",)),))
    _, out = prepare_job(job, PIPE, "/snap", caller={"TOKEN": "from-the-caller"})
    assert out.artifacts is not None and out.artifacts.paths == ("out/$TOKEN",)
    [cache] = out.caches
    assert "from-the-caller" not in repr(cache) and isinstance(cache.key, str) and "\0" in cache.key
    filled = fill_secrets(cache, {"TOKEN": "s3cret"})
    assert (filled.key, filled.fallback_keys) == ("k-s3cret-$TOKEN", ("f-s3cret",))


def test_a_job_near_the_limit_is_counted_exactly() -> None:
    """The quick bound from the strings' lengths (4 bytes a character) only settles jobs far below
    ARG_MAX: one whose bound is over but whose bytes fit runs; a few bytes more is refused."""
    import os

    from loomrun.workflow.variables import MAX_ARG_STRLEN, env_string_size

    room = os.sysconf("SC_ARG_MAX") - MAX_ARG_STRLEN
    base, _ = prepare_job(Job(name="near", stage="s", script=("x",)), PIPE, "/snap", caller={"PATH": "/bin"})
    used = sum(env_string_size(k, v) + 8 for k, v in {"PATH": "/bin", **base}.items())
    chunk = 100_000
    each = env_string_size("V00", "v" * chunk) + 8  # NAME=value, its NUL, its pointer
    count, rest = divmod(room - used, each)
    variables = [(f"V{i:02d}", "v" * chunk) for i in range(count)]
    last_name = f"V{count:02d}"
    last = rest - (env_string_size(last_name, "") + 8)
    assert last > 0 and 4 * sum(len(v) for _, v in variables) > room  # the bound alone says no
    fits = Job(name="near", stage="s", script=("x",), variables=(*variables, (last_name, "v" * last)))
    env, _ = prepare_job(fits, PIPE, "/snap", caller={"PATH": "/bin"})
    assert sum(env_string_size(k, v) + 8 for k, v in {"PATH": "/bin", **env}.items()) == room
    over = Job(name="near", stage="s", script=("x",), variables=(*variables, (last_name, "v" * (last + 1))))
    with pytest.raises(LoomError) as info:
        prepare_job(over, PIPE, "/snap", caller={"PATH": "/bin"})
    assert f"come to {room + 1:,} bytes" in info.value.message
