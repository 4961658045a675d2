"""keepass:// and op:// secrets through real `loom run --local` runs (spec §7): the docs examples,
redaction of every value everywhere, the per-run secrets broker (a vault opened once for all jobs),
optional secrets, ambiguous entries, wrong credentials, missing extras, debug-trace refusal."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.process.runner import Result, load, loom_env, make_repo, run_loom
from tests.secrets.conftest import PASSWORD, VALUES, assert_nowhere, keepass_config, make_vault, read_account

LOOM = [sys.executable, "-m", "loomrun"]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def checks(var: str, value: str, file: bool) -> str:
    """A step line that proves the job got `value` without the workflow holding it."""
    read = f'cat "${var}"' if file else f'printf %s "${var}"'
    return f'[ "$({read} | sha256sum | cut -c1-64)" = "{sha(value)}" ] && echo {var.lower()}-ok'


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return loom_env(HOME=str(home), **extra)


def keepass_repo(tmp_path: Path, vault: Path, secrets: dict[str, str], script: str) -> Path:
    """A repo with one job `use` holding `secrets` (name -> flow mapping text) and one step."""
    lines = "".join(f"    {name}: {spec}\n" for name, spec in secrets.items())
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [ci]\nuse:\n  stage: ci\n  target: linux\n"
                     f"  secrets:\n{lines}  script: [{json.dumps(script)}]\n", git=False)
    keepass_config(repo, vault)
    return repo


def section_events(result: Result, job: str, section: str = "secrets") -> list[dict[str, object]]:
    path = result.logs_dir / "jobs" / job / "system" / section / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def section_lines(result: Result, job: str) -> list[str]:
    return [str(e["line"]) for e in section_events(result, job) if e["type"] == "output"]


KEEPASS_DOCS = """
version: v1
stages: [ci]
deploy:
  stage: ci
  target: linux
  secrets:
    DATABASE_PASSWORD:
      ref: keepass://local/main#services/loom/deploy:password
      file: true
      required: true
    API_TOKEN:
      ref: keepass://local/main#services/loom/deploy:token
      file: false
  script:
    - echo "Deploying with credentials..."
    - {pw}
    - {tok}
    - echo "admin:$(cat "$DATABASE_PASSWORD") $API_TOKEN"; printf 'tail:%s' "$API_TOKEN" >&2
"""


def test_keepass_docs_example_runs_and_nothing_leaks(tmp_path: Path, vault: Path) -> None:
    text = KEEPASS_DOCS.format(pw=json.dumps(checks("DATABASE_PASSWORD", VALUES["password"], True)),
                               tok=json.dumps(checks("API_TOKEN", VALUES["token"], False)))
    repo = make_repo(tmp_path / "repo", text, git=False)
    keepass_config(repo, vault)
    result = run_loom(repo, "run", "--local", "--stream", env=env_for(tmp_path, KP_PASSWORD=PASSWORD))
    assert result.code == 0, result.stderr
    assert result.step_lines("deploy", 2) == ["database_password-ok"]
    assert result.step_lines("deploy", 3) == ["api_token-ok"]
    assert result.step_lines("deploy", 4) == [
        "admin:[REDACTED:SECRET_DATABASE_PASSWORD] [REDACTED:SECRET_API_TOKEN]", "tail:[REDACTED:SECRET_API_TOKEN]"]
    assert section_lines(result, "deploy") == [
        "secret DATABASE_PASSWORD: file from keepass local/main (opened for this run; vaults opened in this run: 1)",
        "secret API_TOKEN: variable from keepass local/main (already open; vaults opened in this run: 1)"]
    for value in (*VALUES.values(), PASSWORD):
        assert_nowhere(value, repo / ".loom" / ".runtime", result.stdout, result.stderr, skip=())


OP_DOCS = """
version: v1
stages: [ci]
deploy:
  stage: ci
  target: linux
  secrets:
    DEPLOY_TOKEN:
      ref: op://Engineering/services/loom/deploy/token
  script:
    - {check}
    - echo "token $(cat "$DEPLOY_TOKEN")"
"""


def test_op_docs_example_runs_against_the_fake_account(tmp_path: Path, fake_op: Path) -> None:
    repo = make_repo(tmp_path / "repo", OP_DOCS.format(check=json.dumps(checks("DEPLOY_TOKEN", "op-tok-91b7e", True))),
                     git=False)
    env = env_for(tmp_path, OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234", LOOM_OP_FAKE=str(fake_op))
    result = run_loom(repo, "run", "--local", "--stream", env=env)
    assert result.code == 0, result.stderr
    assert result.step_lines("deploy", 1) == ["deploy_token-ok"]
    assert result.step_lines("deploy", 2) == ["token [REDACTED:SECRET_DEPLOY_TOKEN]"]
    assert_nowhere("op-tok-91b7e", repo / ".loom" / ".runtime", result.stdout, result.stderr, skip=())
    assert_nowhere("ops_fake_token_1234", repo / ".loom" / ".runtime", result.stdout, result.stderr, skip=())


def test_token_variable_from_config_and_missing_token(tmp_path: Path, fake_op: Path) -> None:
    repo = make_repo(tmp_path / "repo", OP_DOCS.format(check=json.dumps("true")), git=False)
    (repo / ".loom" / "config.yml").write_text("providers:\n  op:\n    serviceAccountTokenEnv: LOOM_OP_TOKEN\n")
    missing = run_loom(repo, "run", "--local", env=env_for(tmp_path, OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234",
                                                             LOOM_OP_FAKE=str(fake_op)))
    assert missing.code == 1
    assert missing.job_summary("deploy")["message"] == (
        "SECRETS_PROVIDER_UNAVAILABLE: secret DEPLOY_TOKEN (op://Engineering/services/loom/deploy/token): "
        "1Password: the service-account token is read from $LOOM_OP_TOKEN, which is not set")
    ok = run_loom(repo, "run", "--local", env=env_for(tmp_path, LOOM_OP_TOKEN="ops_fake_token_1234",
                                                        LOOM_OP_FAKE=str(fake_op)))
    assert ok.code == 0, ok.stderr
    wrong = run_loom(repo, "run", "--local", env=env_for(tmp_path, LOOM_OP_TOKEN="ops_bad_token_0000",
                                                           LOOM_OP_FAKE=str(fake_op)))
    assert wrong.code == 1 and "SECRETS_PROVIDER_UNAVAILABLE" in wrong.stderr
    assert_nowhere("ops_bad_token_0000", repo / ".loom" / ".runtime", wrong.stdout, wrong.stderr, skip=())


def test_a_vault_is_opened_once_for_twenty_jobs(tmp_path: Path) -> None:
    """Every job reads a keepass secret from a database with KeePass's real key-derivation cost, and
    an op secret: one open of the database and one sign-in for the whole run (the broker's own count,
    reported in each job's `secrets` section, and the fake account's sign-in counter)."""
    vault = make_vault(tmp_path / "real.kdbx", fast=False)
    account = tmp_path / "op.json"
    account.write_text(json.dumps({"vaults": [{"id": "v", "title": "Eng", "items": [
        {"id": "i", "title": "a/b", "fields": [{"id": "t", "title": "t", "value": "op-value-20"}]}]}]}))
    jobs = "".join(textwrap.dedent(f"""
        j{i:02d}:
          stage: ci
          target: linux
          secrets:
            PW: {{ref: "keepass://local/main#services/loom/deploy:password"}}
            OP: {{ref: "op://Eng/a/b/t", file: false}}
          script: ['test -s "$PW" && test -n "$OP"']
        """) for i in range(20))
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [ci]\n" + jobs, git=False)
    keepass_config(repo, vault)
    result = run_loom(repo, "run", "--local", env=env_for(tmp_path, KP_PASSWORD=PASSWORD,
                                                           OP_SERVICE_ACCOUNT_TOKEN="t", LOOM_OP_FAKE=str(account)))
    assert result.code == 0, result.stderr
    lines = [line for i in range(20) for line in section_lines(result, f"j{i:02d}")]
    assert len(lines) == 40
    keepass = [line for line in lines if "keepass local/main" in line]
    assert sum("(opened for this run;" in line for line in keepass) == 1
    assert sum("(already open;" in line for line in keepass) == 19
    opened_op = [line for line in lines if "from 1password (opened for this run" in line]
    assert len(opened_op) == 1
    assert all(line.endswith("vaults opened in this run: 2)") or line.endswith("vaults opened in this run: 1)")
               for line in lines)
    assert read_account(account)["sign_ins"] == 1


def test_optional_secret_is_skipped_with_a_warning(tmp_path: Path, vault: Path) -> None:
    repo = keepass_repo(tmp_path, vault, {
        "GONE": '{ref: "keepass://local/main#services/loom/nothing:password", required: false}',
        "THERE": '{ref: "keepass://local/main#services/loom/deploy:username", file: false}'},
        'echo "gone=${GONE-unset} there=$THERE"')
    result = run_loom(repo, "run", "--local", env=env_for(tmp_path, KP_PASSWORD=PASSWORD))
    assert result.code == 0, result.stderr
    assert result.step_lines("use", 1) == ["gone=unset there=[REDACTED:SECRET_THERE]"]
    warning = ('secret GONE (keepass://local/main#services/loom/nothing:password) skipped, not required: '
               'SECRETS_REF_NOT_FOUND: keepass alias "local/main": no entry "services/loom/nothing" in ')
    assert any(warning in line and line.startswith("warning:") for line in result.stderr.splitlines()), result.stderr
    stderr_lines = [e for e in section_events(result, "use") if e["type"] == "output" and e["stream"] == "stderr"]
    assert len(stderr_lines) == 1 and warning in str(stderr_lines[0]["line"])


def _failed_once(result: Result, job: str, code: str) -> str:
    """The code appears exactly once in the terminal line, the section's error event and the job
    summary, and the job manifest names it (spec §7.2)."""
    assert result.code == 1
    [terminal] = [line for line in result.stderr.splitlines() if code in line and f'"{job}"' in line
                  and "failed" in line and not line.startswith(("loom run", "receipt"))]
    assert terminal.count(code) == 1, terminal
    [error] = [e for e in section_events(result, job) if e["type"] == "error"]
    assert error["code"] == code and code not in str(error["message"]), error
    summary = result.job_summary(job)
    assert summary["failure_kind"] == "secrets_error" and str(summary["message"]).count(code) == 1
    manifest = result.job_manifest(job)
    assert manifest["failing_section"] == "secrets" and manifest["error_code"] == code
    assert load(result.logs_dir / "jobs" / job / "system/secrets/summary.json")["error_code"] == code
    return str(error["message"])


def test_ambiguous_entry_fails_the_job_naming_both(tmp_path: Path, vault: Path) -> None:
    repo = keepass_repo(tmp_path, vault, {"PW": '{ref: "keepass://local/main#twin:password"}'}, "touch ran")
    result = run_loom(repo, "run", "--local", env=env_for(tmp_path, KP_PASSWORD=PASSWORD))
    message = _failed_once(result, "use", "SECRETS_REF_INVALID")
    assert '"services/loom/twin" and "other/twin"' in message
    assert not (Path(result.receipt["snapshot_path"]) / "ran").exists()


def test_wrong_master_password_and_unset_variable(tmp_path: Path, vault: Path) -> None:
    repo = keepass_repo(tmp_path, vault, {"PW": '{ref: "keepass://local/main#deploy:password"}'}, "true")
    wrong = run_loom(repo, "run", "--local", env=env_for(tmp_path, KP_PASSWORD="Wr0ng-Master-Pass"))
    message = _failed_once(wrong, "use", "SECRETS_PROVIDER_UNAVAILABLE")
    assert message.endswith(f"wrong credentials for {vault} (the master password given do not open it)")
    assert_nowhere("Wr0ng-Master-Pass", repo / ".loom" / ".runtime", wrong.stdout, wrong.stderr, skip=())
    unset = run_loom(repo, "run", "--local", env=env_for(tmp_path))
    message = _failed_once(unset, "use", "SECRETS_PROVIDER_UNAVAILABLE")
    assert message.endswith('keepass alias "local/main": its master password is read from $KP_PASSWORD, '
                            "which is not set")


def test_alias_only_through_environment_overlays(tmp_path: Path, vault: Path) -> None:
    repo = keepass_repo(tmp_path, vault, {"TOKEN": '{ref: "keepass://prod.eu#deploy:token", file: false}'},
                        'test -n "$TOKEN"')
    (repo / ".loom" / "config.yml").unlink()  # the alias only through the variables
    env = env_for(tmp_path, LOOM_KEEPASS_DB_PROD_EU_PATH=str(vault), LOOM_KEEPASS_DB_PROD_EU_PASSWORD_ENV="MY_PW",
                  MY_PW=PASSWORD)
    result = run_loom(repo, "run", "--local", env=env)
    assert result.code == 0, result.stderr


@pytest.mark.parametrize(("extra", "ref"), [
    ("keepass", "keepass://local/main#deploy:password"),
    ("op", "op://Engineering/services/loom/deploy/token"),
])
def test_missing_extra_names_the_pip_line(tmp_path: Path, vault: Path, fake_op: Path, extra: str, ref: str) -> None:
    """The package made unimportable (a shadow package that raises ImportError comes first on the path)."""
    shadow = tmp_path / "shadow" / {"keepass": "pykeepass", "op": "onepassword"}[extra]
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    repo = keepass_repo(tmp_path, vault, {"S": f'{{ref: "{ref}"}}'}, "true")
    env = env_for(tmp_path, KP_PASSWORD=PASSWORD, OP_SERVICE_ACCOUNT_TOKEN="ops_x")
    env["PYTHONPATH"] = f"{shadow.parent}:{env.get('PYTHONPATH', '')}"
    result = run_loom(repo, "run", "--local", env=env)
    message = _failed_once(result, "use", "SECRETS_PROVIDER_UNAVAILABLE")
    assert message.endswith(f"which is not installed: pip install 'loomrun[{extra}]'")


@pytest.mark.parametrize(("where", "name"), [("env", "LOOM_DEBUG_TRACE"), ("env", "CI_DEBUG_TRACE"),
                                             ("variables", "CI_DEBUG_TRACE"), ("variables", "LOOM_DEBUG_TRACE")])
def test_debug_trace_is_refused_before_any_vault_is_opened(tmp_path: Path, vault: Path, where: str,
                                                          name: str) -> None:
    variables = f"  variables: {{{name}: 'true'}}\n" if where == "variables" else ""
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [ci]\nuse:\n  stage: ci\n  target: linux\n"
                     + variables + "  secrets:\n    PW: {ref: 'keepass://local/main#deploy:password'}\n"
                     "  script: [touch ran]\n", git=False)
    keepass_config(repo, vault)
    env = env_for(tmp_path, KP_PASSWORD=PASSWORD, **({name: "1"} if where == "env" else {}))
    result = run_loom(repo, "run", "--local", env=env)
    message = _failed_once(result, "use", "SECRETS_UNSAFE_DEBUG_TRACE")
    assert message.startswith(f"{name} is on and this job has secrets")
    assert not any("keepass" in line for line in section_lines(result, "use"))
    assert not (Path(result.receipt["snapshot_path"]) / "ran").exists()


@pytest.mark.parametrize("off", ["false", "0"])
def test_debug_trace_switched_off_lets_a_job_with_secrets_run(tmp_path: Path, off: str) -> None:
    """`CI_DEBUG_TRACE=false`/`0` (and `LOOM_DEBUG_TRACE` the same), in loom's environment or the job's
    variables, is off: the job gets its secret and its steps are not traced."""
    repo = make_repo(tmp_path / "repo", "version: v1\nstages: [ci]\nuse:\n  stage: ci\n  target: linux\n"
                     f"  variables: {{CI_DEBUG_TRACE: '{off}', LOOM_DEBUG_TRACE: '{off}'}}\n"
                     "  secrets:\n    TOKEN: {ref: 'env://TRACE_TEST_TOKEN', file: false}\n"
                     f"  script: [{json.dumps(checks('TOKEN', 'tok-Trace-3c9', False))}]\n", git=False)
    env = env_for(tmp_path, TRACE_TEST_TOKEN="tok-Trace-3c9", CI_DEBUG_TRACE=off, LOOM_DEBUG_TRACE=off)
    result = run_loom(repo, "run", "--local", env=env)
    assert result.code == 0, result.stderr
    assert result.step_lines("use", 1) == ["token-ok"]  # no `+ ...` line of a traced shell
    assert not [e for e in section_events(result, "use") if e["type"] == "error"]


def test_a_value_that_is_not_utf8_reaches_the_file_byte_for_byte(tmp_path: Path) -> None:
    raw = b"key-\xff\xfe-\x80end\n"
    repo = make_repo(tmp_path / "repo", f"""
    version: v1
    stages: [ci]
    use:
      stage: ci
      target: linux
      secrets:
        BIN: {{ref: "env://BIN_SECRET"}}
      script: ['[ "$(sha256sum < "$BIN" | cut -c1-64)" = "{hashlib.sha256(raw).hexdigest()}" ] && echo same-bytes']
    """, git=False)
    env: dict[str, str | bytes] = {**env_for(tmp_path)}
    env["BIN_SECRET"] = raw
    out = subprocess.run([*LOOM, "run", "--local"], cwd=repo, env=env, capture_output=True, text=True, check=False,
                         timeout=120)
    result = Result(out.returncode, out.stdout, out.stderr, repo)
    assert result.code == 0, result.stderr
    assert result.step_lines("use", 1) == ["same-bytes"]


@pytest.mark.parametrize(("ref", "code", "says"), [
    ("env://NOT_SET_FOR_THIS_RUN", "SECRETS_REQUIRED_MISSING", "$NOT_SET_FOR_THIS_RUN is not set"),
    ("keepass://local/main#services/loom/nothing:password", "SECRETS_REF_NOT_FOUND",
     'keepass alias "local/main": no entry "services/loom/nothing" in '),
    ("keepass://local/main#services/loom/deploy:no-such-field", "SECRETS_REF_NOT_FOUND", "no-such-field"),
    ("op://Engineering/services/loom/deploy/no-such-field", "SECRETS_REF_NOT_FOUND", "no-such-field"),
], ids=["env-unset", "keepass-entry", "keepass-field", "op-field"])
def test_a_required_secret_that_cannot_be_resolved_fails_its_job_with_the_code(
        tmp_path: Path, vault: Path, fake_op: Path, ref: str, code: str, says: str) -> None:
    """REQUIRED_MISSING and REF_NOT_FOUND fail the job before its first step, the code printed once
    on the terminal line and kept in the section's events, the summary and the manifest (spec §7.2)."""
    repo = keepass_repo(tmp_path, vault, {"S": f'{{ref: "{ref}"}}'}, "touch ran")
    env = env_for(tmp_path, KP_PASSWORD=PASSWORD, OP_SERVICE_ACCOUNT_TOKEN="ops_fake_token_1234",
                  LOOM_OP_FAKE=str(fake_op))
    result = run_loom(repo, "run", "--local", env=env)
    message = _failed_once(result, "use", code)
    assert says in message, message
    assert not (Path(result.receipt["snapshot_path"]) / "ran").exists()
    assert not (result.logs_dir / "jobs" / "use" / "user" / "script" / "01").exists()
    for value in (*VALUES.values(), "op-tok-91b7e", "op-pw-5d2c8"):  # a listing of fields never shows values
        assert_nowhere(value, repo / ".loom" / ".runtime", result.stdout, result.stderr, skip=())


@pytest.mark.parametrize("damage", ["directory", "truncated"])
def test_an_unreadable_database_fails_the_job_saying_what_to_fix(tmp_path: Path, vault: Path, damage: str) -> None:
    """A database that cannot be read (a folder where the file should be; a file cut short, as by a
    copy that stopped halfway) is SECRETS_PROVIDER_UNAVAILABLE naming the file and the fix."""
    data = vault.read_bytes()
    vault.unlink()
    if damage == "directory":
        vault.mkdir()
    else:
        vault.write_bytes(data[:len(data) // 2])
    repo = keepass_repo(tmp_path, vault, {"PW": '{ref: "keepass://local/main#deploy:password"}'}, "touch ran")
    result = run_loom(repo, "run", "--local", env=env_for(tmp_path, KP_PASSWORD=PASSWORD))
    message = _failed_once(result, "use", "SECRETS_PROVIDER_UNAVAILABLE")
    assert message == "secret PW (keepass://local/main#deploy:password): keepass alias \"local/main\": " + (
        f"database {vault} is not a file: point the alias's path at the .kdbx file itself (path from "
        f"{repo / '.loom' / 'config.yml'})" if damage == "directory" else
        f"{vault} is not a KeePass database, or it is damaged (cut short?): point the alias's path at the .kdbx "
        "file, or restore it from a backup")
    assert not (Path(result.receipt["snapshot_path"]) / "ran").exists()
    assert_nowhere(PASSWORD, repo / ".loom" / ".runtime", result.stdout, result.stderr, skip=())


# Tests run as root, which reads any file: loom runs without the capabilities that bypass file modes.
WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


@pytest.mark.parametrize("locked", ["file", "folder"])
def test_a_database_loom_may_not_read_fails_the_job_saying_what_to_fix(tmp_path: Path, vault: Path,
                                                                       locked: str) -> None:
    """A database of mode 0000, or one in a folder of mode 0000, for a loom that may not bypass file
    modes: SECRETS_PROVIDER_UNAVAILABLE saying that it cannot be read (never "does not exist")."""
    repo = keepass_repo(tmp_path, vault, {"PW": '{ref: "keepass://local/main#deploy:password"}'}, "touch ran")
    target = vault if locked == "file" else vault.parent
    target.chmod(0)
    try:
        out = subprocess.run([*WITHOUT_DAC_OVERRIDE, *LOOM, "run", "--local"], cwd=repo, capture_output=True,
                             text=True, env=env_for(tmp_path, KP_PASSWORD=PASSWORD), timeout=120, check=False)
    finally:
        target.chmod(0o700)
    result = Result(out.returncode, out.stdout, out.stderr, repo)
    message = _failed_once(result, "use", "SECRETS_PROVIDER_UNAVAILABLE")
    assert message == 'secret PW (keepass://local/main#deploy:password): keepass alias "local/main": ' + (
        f"cannot read {vault}: Permission denied (the user running loom must be able to read it)"
        if locked == "file" else
        f"database {vault} cannot be reached: Permission denied (the user running loom must be able to open "
        f"every folder on the way) (path from {repo / '.loom' / 'config.yml'})")
    assert not (Path(result.receipt["snapshot_path"]) / "ran").exists()


def test_the_notes_field_is_read_in_a_run(tmp_path: Path, vault: Path) -> None:
    from pykeepass import PyKeePass

    notes = "first line of notes\nNotes-Secret-4e1d7 second line\n"
    kp = PyKeePass(str(vault), password=PASSWORD)
    [entry] = [e for e in kp.entries if e.title == "deploy"]
    entry.notes = notes
    kp.save()
    repo = keepass_repo(tmp_path, vault, {"NOTES": '{ref: "keepass://local/main#services/loom/deploy:notes"}'},
                        checks("NOTES", notes, True) + '; cat "$NOTES"')
    result = run_loom(repo, "run", "--local", "--stream", env=env_for(tmp_path, KP_PASSWORD=PASSWORD))
    assert result.code == 0, result.stderr
    assert result.step_lines("use", 1)[0] == "notes-ok"
    assert_nowhere("Notes-Secret-4e1d7", repo / ".loom" / ".runtime", result.stdout, result.stderr, skip=())
