"""`loom check` / `loom compile` as real processes on real workflow files (spec §1.2, §1.3, §2, §10).

One invalid workflow per rule, each breaking only that rule: the exact stderr line and the receipt's
error item are asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_python

H = "version: v1\nstages: [build, test]\n"  # lines 1-2
J = "build:\n  stage: build\n  target: linux\n  script: [echo hi]\n"  # lines 3-6 after H
T = "test:\n  stage: test\n  target: linux\n  script: [echo t]\n"  # lines 7-10 after H + J


def job(name: str, stage: str = "build", extra: str = "") -> str:
    return f"{name}:\n  stage: {stage}\n  target: linux\n  script: [echo {name}]\n{extra}"


# (id, workflow text, extra files, line, message, pointer, file label)
CASES: list[tuple[str, str, dict[str, str], int, str, str, str]] = [
    ("version-missing", "stages: [build]\n" + J, {}, 1, 'missing required key "version"', "", "workflow.yml"),
    ("version-wrong", "version: v2\nstages: [build]\n" + J, {}, 1, 'expected "v1" for "version", got "v2"',
     "/version", "workflow.yml"),
    ("stages-missing", "version: v1\n" + J, {}, 1, 'missing required key "stages"', "", "workflow.yml"),
    ("stages-empty", "version: v1\nstages: []\n" + J, {}, 2, '"stages" must not be empty', "/stages",
     "workflow.yml"),
    ("stages-type", "version: v1\nstages: build\n" + J, {}, 2, 'expected sequence for "stages", got string',
     "/stages", "workflow.yml"),
    ("stage-name", "version: v1\nstages: [build, Test]\n" + J, {}, 2,
     r'invalid stage name "Test"; stage names must match ^[a-z][a-z0-9_-]{0,31}$', "/stages/1", "workflow.yml"),
    ("stage-duplicate", "version: v1\nstages: [build, build]\n" + J, {}, 2, 'duplicate stage "build"',
     "/stages/1", "workflow.yml"),
    ("job-name", H + J + "Lint:\n  stage: build\n", {}, 7,
     r'invalid job name "Lint"; job names must match ^\.?[a-z][a-z0-9_-]{0,63}$', "/Lint", "workflow.yml"),
    ("job-name-long", H + J + ("a" * 65) + ": {}\n", {}, 7,
     f'invalid job name "{"a" * 65}"; job names must match ' r"^\.?[a-z][a-z0-9_-]{0,63}$", "/" + "a" * 65,
     "workflow.yml"),
    ("no-runnable-job", H + ".tpl:\n  stage: build\n", {}, 1, "workflow has no runnable job", "", "workflow.yml"),
    ("job-not-mapping", H + J + "lint: echo\n", {}, 7, 'expected mapping for job "lint", got string', "/lint",
     "workflow.yml"),
    ("unknown-keyword", H + J + "  when: manual\n", {}, 7, 'unknown key "when" in job "build"', "/build/when",
     "workflow.yml"),
    ("missing-stage", H + "build:\n  target: linux\n  script: [echo]\n", {}, 3,
     'missing required key "stage" in job "build"', "/build", "workflow.yml"),
    ("missing-target", H + "build:\n  stage: build\n  script: [echo]\n", {}, 3,
     'missing required key "target" in job "build"', "/build", "workflow.yml"),
    ("missing-script", H + "build:\n  stage: build\n  target: linux\n", {}, 3,
     'missing required key "script" in job "build"', "/build", "workflow.yml"),
    ("stage-undeclared", H + job("build", "deploy"), {}, 4, 'stage "deploy" of job "build" is not declared in stages',
     "/build/stage", "workflow.yml"),
    ("stage-type", H + "build:\n  stage: [build]\n  target: linux\n  script: [x]\n", {}, 4,
     'expected string for "stage", got sequence', "/build/stage", "workflow.yml"),
    ("target-unknown", H + "build:\n  stage: build\n  target: windows\n  script: [x]\n", {}, 5,
     'unknown target "windows"; only "linux" exists', "/build/target", "workflow.yml"),
    ("script-string", H + "build:\n  stage: build\n  target: linux\n  script: echo hi\n", {}, 6,
     'expected sequence for "script", got string', "/build/script", "workflow.yml"),
    ("script-empty", H + "build:\n  stage: build\n  target: linux\n  script: []\n", {}, 6,
     '"script" must not be empty', "/build/script", "workflow.yml"),
    ("script-entry-type", H + "build:\n  stage: build\n  target: linux\n  script:\n    - 42\n", {}, 7,
     'expected string for script entry 1, got integer', "/build/script/0", "workflow.yml"),
    ("script-entry-empty", H + "build:\n  stage: build\n  target: linux\n  script: ['']\n", {}, 6,
     'script entry 1 must not be empty', "/build/script/0", "workflow.yml"),
    ("script-newline", H + "build:\n  stage: build\n  target: linux\n  script:\n    - |\n      a\n      b\n", {}, 7,
     "script entry 1 contains a newline", "/build/script/0", "workflow.yml"),
    ("extends-missing", H + job("build", extra="  extends: .nope\n"), {}, 7,
     'extends target ".nope" of job "build" does not exist', "/build/extends", "workflow.yml"),
    ("extends-type", H + job("build", extra="  extends: 3\n"), {}, 7,
     'expected string or sequence for "extends", got integer', "/build/extends", "workflow.yml"),
    ("extends-cycle", H + J + ".a:\n  extends: .b\n.b:\n  extends: .a\n", {}, 8,
     "WF_SCHEMA_V1 /.a/extends: resolve extends cycle by removing one extends edge: .a -> .b -> .a",
     "/.a/extends", "workflow.yml"),
    ("needs-type", H + job("build", extra="  needs: lint\n"), {}, 7, 'expected sequence for "needs", got string',
     "/build/needs", "workflow.yml"),
    ("needs-unknown", H + job("build", extra="  needs: [lint]\n"), {}, 7, 'job "build" needs unknown job "lint"',
     "/build/needs/0", "workflow.yml"),
    ("needs-template", H + job("build", extra="  needs: [.t]\n") + ".t:\n  stage: build\n", {}, 7,
     'job "build" needs unknown job ".t"', "/build/needs/0", "workflow.yml"),
    ("needs-later-stage", H + job("build", extra="  needs: [test]\n") + T, {}, 7,
     'job "build" needs "test", which is in a later stage', "/build/needs/0", "workflow.yml"),
    ("needs-cycle", H + job("a", extra="  needs: [b]\n") + job("b", extra="  needs: [a]\n"), {}, 7,
     "needs cycle: a -> b -> a", "/a/needs", "workflow.yml"),
    ("needs-duplicate", H + J + job("c", extra="  needs: [build, build]\n"), {}, 11,
     'duplicate "build" in needs', "/c/needs/1", "workflow.yml"),
    ("image-type", H + job("build", extra="  image: 3\n"), {}, 7,
     'expected string or mapping for "image", got integer', "/build/image", "workflow.yml"),
    ("image-unknown-key", H + job("build", extra="  image: {name: alpine, pull: always}\n"), {}, 7,
     'unknown key "pull" in image', "/build/image/pull", "workflow.yml"),
    ("image-no-name", H + job("build", extra="  image: {build: {context: .}}\n"), {}, 7,
     'missing required key "image.name" in job "build"', "/build/image", "workflow.yml"),
    ("image-build-context", H + job("build", extra="  image: {name: x, build: {dockerfile: D}}\n"), {}, 7,
     'missing required key "image.build.context" in job "build"', "/build/image/build", "workflow.yml"),
    ("image-build-path", H + job("build", extra="  image: {name: x, build: {context: ../up}}\n"), {}, 7,
     'path "../up" must be relative to the workspace and hold no ".."', "/build/image/build/context",
     "workflow.yml"),
    ("services-type", H + job("build", extra="  image: alpine\n  services: postgres\n"), {}, 8,
     'expected sequence for "services", got string', "/build/services", "workflow.yml"),
    ("services-no-name", H + job("build", extra="  image: alpine\n  services:\n    - alias: db\n"), {}, 9,
     'missing required key "name" in services[0]', "/build/services/0", "workflow.yml"),
    ("services-host-job", H + job("build", extra="  services:\n    - name: postgres:16\n"), {}, 8,
     'services need an image: job "build" runs on the host', "/build/services", "workflow.yml"),
    ("variables-type", H + job("build", extra="  variables: [A]\n"), {}, 7,
     'expected mapping for "variables", got sequence', "/build/variables", "workflow.yml"),
    ("variables-name", H + job("build", extra="  variables:\n    lower: x\n"), {}, 8,
     'invalid variable name "lower"; names must match ^[A-Z_][A-Z0-9_]*$', "/build/variables/lower",
     "workflow.yml"),
    ("variables-value", H + job("build", extra="  variables:\n    N: 3\n"), {}, 8,
     'expected string for variable "N", got integer', "/build/variables/N", "workflow.yml"),
    ("root-variables-value", H + "variables:\n  ON_CI: true\n" + J, {}, 4,
     'expected string for variable "ON_CI", got boolean', "/variables/ON_CI", "workflow.yml"),
    ("default-variables-value", H + "default:\n  variables:\n    X: null\n" + J, {}, 5,
     'expected string for variable "X", got null', "/default/variables/X", "workflow.yml"),
    ("default-secrets", H + "default:\n  secrets:\n    TOKEN: {ref: env://TOKEN}\n" + J, {}, 4,
     'secrets are not allowed in "default"', "/default/secrets", "workflow.yml"),
    ("default-unknown", H + "default:\n  colour: red\n" + J, {}, 4, 'unknown key "colour" in "default"',
     "/default/colour", "workflow.yml"),
    ("secrets-type", H + job("build", extra="  secrets: [TOKEN]\n"), {}, 7,
     'expected mapping for "secrets", got sequence', "/build/secrets", "workflow.yml"),
    ("secrets-no-ref", H + job("build", extra="  secrets:\n    TOKEN: {file: true}\n"), {}, 8,
     'missing required key "ref" in secret "TOKEN"', "/build/secrets/TOKEN", "workflow.yml"),
    ("secrets-bad-ref", H + job("build", extra="  secrets:\n    TOKEN: {ref: vault://x}\n"), {}, 8,
     'invalid secret ref for "TOKEN": unknown secret scheme "vault"; use env://, keepass:// or op://',
     "/build/secrets/TOKEN/ref", "workflow.yml"),
    ("secrets-ref-no-scheme", H + job("build", extra="  secrets:\n    TOKEN: {ref: TOKEN}\n"), {}, 8,
     'invalid secret ref for "TOKEN": a secret ref is <scheme>://...; write env://NAME, '
     "keepass://<alias>#<entry>:<field> or op://<vault>/<item>/<field>", "/build/secrets/TOKEN/ref", "workflow.yml"),
    ("secrets-env-name", H + job("build", extra="  secrets:\n    TOKEN: {ref: 'env://1X'}\n"), {}, 8,
     'invalid secret ref for "TOKEN": env:// needs a variable name (letters, digits, _), as in env://DEPLOY_TOKEN',
     "/build/secrets/TOKEN/ref", "workflow.yml"),
    ("secrets-keepass-no-hash", H + job("build", extra="  secrets:\n    TOKEN: {ref: 'keepass://team/app'}\n"),
     {}, 8, 'invalid secret ref for "TOKEN": keepass:// needs "#" between the alias and the entry path, as in '
     "keepass://team/app#services/deploy:password", "/build/secrets/TOKEN/ref", "workflow.yml"),
    ("secrets-keepass-no-field", H + job("build", extra="  secrets:\n    TOKEN: {ref: 'keepass://a#deploy'}\n"),
     {}, 8, 'invalid secret ref for "TOKEN": keepass:// needs ":<field>" after the entry path (password, username, '
     "url, notes or a custom field)", "/build/secrets/TOKEN/ref", "workflow.yml"),
    ("secrets-keepass-empty-group", H + job("build", extra="  secrets:\n    T: {ref: 'keepass://a#x//y:password'}\n"),
     {}, 8, 'invalid secret ref for "T": keepass:// entry path has an empty segment ("//")', "/build/secrets/T/ref",
     "workflow.yml"),
    ("secrets-op-no-field", H + job("build", extra="  secrets:\n    TOKEN: {ref: 'op://vault/item'}\n"), {}, 8,
     'invalid secret ref for "TOKEN": op:// needs a vault, an item path and a field, each non-empty: '
     "op://<vault>/<item>/<field>", "/build/secrets/TOKEN/ref", "workflow.yml"),
    ("secrets-file-type", H + job("build", extra="  secrets:\n    TOKEN: {ref: env://T, file: 'yes'}\n"), {}, 8,
     'expected boolean for "secrets.TOKEN.file", got string', "/build/secrets/TOKEN/file", "workflow.yml"),
    ("secrets-unknown-key", H + job("build", extra="  secrets:\n    TOKEN: {ref: env://T, mask: true}\n"), {},
     8, 'unknown key "mask" in secret "TOKEN"', "/build/secrets/TOKEN/mask", "workflow.yml"),
    ("cache-unknown-key", H + job("build", extra="  cache:\n    paths: [.c]\n    untracked: true\n"), {}, 9,
     "remove unknown cache key; allowed keys are name, disabled, paths, key, fallback_keys, policy, when",
     "/build/cache/untracked", "workflow.yml"),
    ("cache-type", H + job("build", extra="  cache: .c\n"), {}, 7,
     'expected mapping or sequence or null for "cache", got string', "/build/cache", "workflow.yml"),
    ("cache-no-paths", H + job("build", extra="  cache:\n    key: k\n"), {}, 8,
     'missing required key "cache.paths" in job "build"', "/build/cache", "workflow.yml"),
    ("cache-list-no-name", H + job("build", extra="  cache:\n    - paths: [.c]\n"), {}, 8,
     'missing required key "name" in cache[0]', "/build/cache/0", "workflow.yml"),
    ("cache-list-duplicate", H + job("build", extra="  cache:\n    - {name: a, paths: [x]}\n"
                                                     "    - {name: a, paths: [y]}\n"), {}, 9,
     'duplicate cache name "a"', "/build/cache/1/name", "workflow.yml"),
    ("cache-list-no-paths", H + job("build", extra="  cache:\n    - {name: a}\n"), {}, 8,
     'missing required key "paths" in cache[0]', "/build/cache/0", "workflow.yml"),
    ("cache-policy", H + job("build", extra="  cache: {paths: [x], policy: always}\n"), {}, 7,
     'invalid value "always" for "cache.policy"; expected pull, push, pull-push', "/build/cache/policy",
     "workflow.yml"),
    ("cache-when", H + job("build", extra="  cache: {paths: [x], when: never}\n"), {}, 7,
     'invalid value "never" for "cache.when"; expected on_success, on_failure, always', "/build/cache/when",
     "workflow.yml"),
    ("cache-path-absolute", H + job("build", extra="  cache: {paths: [/etc]}\n"), {}, 7,
     'path "/etc" must be relative to the workspace and hold no ".."', "/build/cache/paths/0", "workflow.yml"),
    ("cache-key-form", H + job("build", extra="  cache: {paths: [x], key: {prefix: p, template: t}}\n"), {}, 7,
     "cache.key must be a string, {prefix, files}, {prefix} or {template}", "/build/cache/key", "workflow.yml"),
    ("cache-fallback-type", H + job("build", extra="  cache: {paths: [x], fallback_keys: k}\n"), {}, 7,
     'expected sequence for "cache.fallback_keys", got string', "/build/cache/fallback_keys", "workflow.yml"),
    ("artifacts-type", H + job("build", extra="  artifacts: [dist]\n"), {}, 7,
     'expected mapping for "artifacts", got sequence', "/build/artifacts", "workflow.yml"),
    ("artifacts-dotdot", H + job("build", extra="  artifacts: {paths: [../out]}\n"), {}, 7,
     'path "../out" must be relative to the workspace and hold no ".."', "/build/artifacts/paths/0",
     "workflow.yml"),
    ("artifacts-absolute", H + job("build", extra="  artifacts: {paths: [dist], exclude: [/tmp]}\n"), {}, 7,
     'path "/tmp" must be relative to the workspace and hold no ".."', "/build/artifacts/exclude/0",
     "workflow.yml"),
    ("artifacts-when", H + job("build", extra="  artifacts: {paths: [d], when: sometimes}\n"), {}, 7,
     'invalid value "sometimes" for "artifacts.when"; expected on_success, on_failure, always',
     "/build/artifacts/when", "workflow.yml"),
    ("artifacts-no-paths", H + job("build", extra="  artifacts: {when: always}\n"), {}, 7,
     'missing required key "artifacts.paths" in job "build"', "/build/artifacts", "workflow.yml"),
    ("artifacts-unknown", H + job("build", extra="  artifacts: {paths: [d], expire_in: 1d}\n"), {}, 7,
     'unknown key "expire_in" in artifacts', "/build/artifacts/expire_in", "workflow.yml"),
    ("timeout-invalid", H + job("build", extra="  timeout: soon\n"), {}, 7,
     "invalid \"timeout\": invalid duration 'soon'; write e.g. \"90s\", \"10m\" or \"1h 30m\"", "/build/timeout",
     "workflow.yml"),
    ("timeout-zero", H + job("build", extra="  timeout: 0\n"), {}, 7,
     'invalid "timeout": a duration must be greater than zero', "/build/timeout", "workflow.yml"),
    ("timeout-too-long", H + job("build", extra="  timeout: 600h\n"), {}, 7,
     'invalid "timeout": 600h is longer than the most loom can wait (24d)', "/build/timeout", "workflow.yml"),
    ("timeout-huge-integer", H + job("build", extra="  timeout: " + "9" * 30 + "\n"), {}, 7,
     f'invalid "timeout": {"9" * 30} is longer than the most loom can wait (24d)', "/build/timeout", "workflow.yml"),
    ("limits-memory-int64", H + job("build", extra="  limits: {memory: 9000000t}\n"), {}, 7,
     'invalid "limits.memory": 9000000t is more than the largest size Docker and cgroups take (8 EiB)',
     "/build/limits/memory", "workflow.yml"),
    ("limits-memory-overflow", H + job("build", extra="  limits: {memory: " + "9" * 400 + "t}\n"), {}, 7,
     f"invalid \"limits.memory\": memory size '{'9' * 400}t' is too large", "/build/limits/memory", "workflow.yml"),
    ("limits-pids-int64", H + job("build", extra="  limits: {pids: 9223372036854775808}\n"), {}, 7,
     'invalid "limits.pids": 9223372036854775808; more than the largest count Docker and cgroups take '
     "(9223372036854775807)", "/build/limits/pids", "workflow.yml"),
    ("script-entry-too-long", H + "build:\n  stage: build\n  target: linux\n  script:\n    - echo " + "x" * 131068
     + "\n", {}, 7, "script entry 1 is 131,073 bytes; a step may be at most 128 KiB (the kernel's limit for one "
     "argument)", "/build/script/0", "workflow.yml"),
    ("variables-cycle", H + job("build", extra="  variables:\n    A: $B\n    B: x${A}\n"), {}, 8,
     "variable cycle: A -> B -> A", "/build/variables/A", "workflow.yml"),
    ("variables-bomb", H + "variables:\n  V0: '0123456789'\n"
     + "".join(f"  V{i}: $V{i - 1}$V{i - 1}\n" for i in range(1, 41)) + J, {}, 18,
     'variable "V14" expands to more than 128 KiB, the most one environment variable may hold (the kernel\'s '
     "MAX_ARG_STRLEN)", "/variables/V14", "workflow.yml"),
    ("variables-too-long", H + job("build", extra="  variables:\n    BIG: " + "x" * 131069 + "\n"), {}, 8,
     'variable "BIG" expands to more than 128 KiB, the most one environment variable may hold (the kernel\'s '
     "MAX_ARG_STRLEN)", "/build/variables/BIG", "workflow.yml"),
    ("paths-expand-absolute", H + job("build", extra="  variables: {OUT: /tmp}\n  artifacts: {paths: [$OUT/x]}\n"),
     {}, 8, 'path "$OUT/x" expands to "/tmp/x", which must be relative to the workspace and hold no ".."',
     "/build/artifacts/paths/0", "workflow.yml"),
    ("cache-files-expand-dotdot", H + job("build", extra="  variables: {UP: ..}\n  cache:\n    paths: [c]\n"
                                              "    key: {files: ['${UP}/lock']}\n"), {}, 10,
     'path "${UP}/lock" expands to "../lock", which must be relative to the workspace and hold no ".."',
     "/build/cache/key/files/0", "workflow.yml"),
    # spec §2.5: each variable stays under 128 KiB, but what they expand into in a path or key passes 1 MiB
    ("artifacts-path-expands-past-1mib", H + job("build", extra=f"  variables: {{A: {'a' * 100_000}}}\n"
                                                     f"  artifacts: {{paths: ['{'$A' * 11}']}}\n"), {}, 8,
     f'"{"$A" * 11}" expands to more than 1 MiB', "/build/artifacts/paths/0", "workflow.yml"),
    ("cache-path-expands-past-1mib", H + job("build", extra=f"  variables: {{A: {'a' * 100_000}}}\n  cache:\n"
                                                 f"    paths: ['x/{'$A' * 11}']\n    key: k\n"), {}, 9,
     f'"x/{"$A" * 11}" expands to more than 1 MiB', "/build/cache/paths/0", "workflow.yml"),
    ("cache-key-expands-past-1mib", H + job("build", extra=f"  variables: {{A: {'a' * 100_000}}}\n  cache:\n"
                                                f"    paths: [c]\n    key: 'k-{'${A}' * 11}'\n"), {}, 10,
     f'"k-{"${A}" * 11}" expands to more than 1 MiB', "/build/cache/key", "workflow.yml"),
    ("image-expands-empty", H + job("build", extra="  variables: {IMG: ''}\n  image: $IMG\n"), {}, 8,
     'image "$IMG" expands to an empty name', "/build/image", "workflow.yml"),
    ("limits-type", H + job("build", extra="  limits: 2g\n"), {}, 7, 'expected mapping for "limits", got string',
     "/build/limits", "workflow.yml"),
    ("limits-memory", H + job("build", extra="  limits: {memory: lots}\n"), {}, 7,
     "invalid \"limits.memory\": invalid memory size 'lots'; write e.g. \"512m\" or \"2g\"",
     "/build/limits/memory", "workflow.yml"),
    ("limits-cpus", H + job("build", extra="  limits: {cpus: '-1'}\n"), {}, 7,
     "invalid \"limits.cpus\": '-1'; expected a number > 0", "/build/limits/cpus", "workflow.yml"),
    ("limits-pids", H + job("build", extra="  limits: {pids: 0}\n"), {}, 7,
     'invalid "limits.pids": 0; expected an integer > 0', "/build/limits/pids", "workflow.yml"),
    ("limits-unknown", H + job("build", extra="  limits: {disk: 1g}\n"), {}, 7, 'unknown key "disk" in limits',
     "/build/limits/disk", "workflow.yml"),
    ("allow-failure-type", H + job("build", extra="  allow_failure: 'yes'\n"), {}, 7,
     'expected boolean for "allow_failure", got string', "/build/allow_failure", "workflow.yml"),
    ("runner-pool-type", H + job("build", extra="  runner_pool: [a]\n"), {}, 7,
     'expected string for "runner_pool", got sequence', "/build/runner_pool", "workflow.yml"),
    ("include-path", H + "include:\n  - local: templates/base.yml\n" + J, {}, 4,
     "WF_SCHEMA_V1 /include/0/local: set include.local to .loom/templates/<name>.yml or .yaml",
     "/include/0/local", "workflow.yml"),
    ("include-dotdot", H + "include:\n  - local: .loom/templates/../x.yml\n" + J, {}, 4,
     "WF_SCHEMA_V1 /include/0/local: set include.local to .loom/templates/<name>.yml or .yaml",
     "/include/0/local", "workflow.yml"),
    ("include-type", H + "include: .loom/templates/a.yml\n" + J, {}, 3,
     'expected sequence for "include", got string', "/include", "workflow.yml"),
    ("include-missing", H + "include:\n  - local: .loom/templates/none.yml\n" + J, {}, 4,
     'include file ".loom/templates/none.yml" not found', "/include/0/local", "workflow.yml"),
    ("include-runnable", H + "include:\n  - local: .loom/templates/t.yml\n" + J,
     {".loom/templates/t.yml": ".ok:\n  target: linux\nlint:\n  stage: build\n"}, 3,
     'included files hold template jobs only; "lint" is not a template', "/lint", "t.yml"),
    ("include-nested", H + "include:\n  - local: .loom/templates/t.yml\n" + J,
     {".loom/templates/t.yml": "include:\n  - local: .loom/templates/u.yml\n"}, 1,
     "includes do not nest: remove include from .loom/templates/t.yml", "/include", "t.yml"),
    ("include-fifo", H + "include:\n  - local: .loom/templates/t.yml\n" + J, {".loom/templates/t.yml": "fifo"}, 0,
     "cannot read {repo}/.loom/templates/t.yml: not a regular file (a FIFO)", "", "t.yml"),
    ("include-link-outside", H + "include:\n  - local: .loom/templates/t.yml\n" + J,
     {".loom/templates/t.yml": "link:/etc/hostname"}, 4,
     'include file ".loom/templates/t.yml" is a link to a file outside the repository', "/include/0/local",
     "workflow.yml"),
    ("include-duplicate", H + "include:\n  - local: .loom/templates/t.yml\n" + J + ".base:\n  target: linux\n",
     {".loom/templates/t.yml": ".base:\n  target: linux\n"}, 1,
     'duplicate job name ".base" (also defined in workflow.yml)', "/.base", "t.yml"),
    ("include-shape", H + "include:\n  - local: .loom/templates/t.yml\n" + J,
     {".loom/templates/t.yml": ".base:\n  script: run\n"}, 2,
     'expected sequence for "script", got string', "/.base/script", "t.yml"),
    ("rules-if-syntax", H + "workflow:\n  rules:\n    - if: '$A =='\n" + J, {}, 5,
     "invalid if expression: expected $VARIABLE, a quoted string or null at column 6, found end of expression",
     "/workflow/rules/0/if", "workflow.yml"),
    ("rules-when", H + "workflow:\n  rules:\n    - {if: '$A', when: sometimes}\n" + J, {}, 5,
     'invalid value "sometimes" for "when"; expected always, never', "/workflow/rules/0/when", "workflow.yml"),
    ("rules-regex", H + "workflow:\n  rules:\n    - if: '$A =~ /(/'\n" + J, {}, 5,
     "invalid if expression: invalid regex /(/: missing ), unterminated subpattern at position 0",
     "/workflow/rules/0/if", "workflow.yml"),
    ("workflow-unknown", H + "workflow:\n  name: x\n" + J, {}, 4, 'unknown key "name" in workflow',
     "/workflow/name", "workflow.yml"),
    ("yaml-anchor", H + job("build", extra="  variables: &v {A: b}\n"), {}, 7,
     'YAML anchor "&v" is not allowed', "", "workflow.yml"),
    ("yaml-alias", H + ".t: &t {target: linux}\n" + J, {}, 3, 'YAML anchor "&t" is not allowed', "", "workflow.yml"),
    ("yaml-tag", H + job("build", extra="  timeout: !!str 90\n"), {}, 7,
     'explicit YAML tag "!!str" is not allowed', "", "workflow.yml"),
    ("yaml-syntax", H + "build: [\n", {}, 4, "invalid YAML: expected the node content, but found '<stream end>'",
     "", "workflow.yml"),
    ("yaml-duplicate-key", H + J + "build:\n  stage: test\n", {}, 7, 'duplicate key "build"', "", "workflow.yml"),
    ("yaml-root-list", "- a\n- b\n", {}, 1, "expected mapping at the top of the file, got sequence", "",
     "workflow.yml"),
    ("yaml-empty", "", {}, 1, "workflow is empty; expected a mapping with version, stages and jobs", "",
     "workflow.yml"),
    ("yaml-two-docs", H + J + "---\na: 1\n", {}, 7,
     "invalid YAML: but found another document", "", "workflow.yml"),
]


def loom(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOOM_DEBUG"}
    return subprocess.run([sys.executable, "-m", "loomrun", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def make_repo(tmp_path: Path, text: str | bytes, files: dict[str, str] | None = None) -> Path:
    (tmp_path / ".loom").mkdir()
    wf = tmp_path / ".loom" / "workflow.yml"
    if isinstance(text, bytes):
        wf.write_bytes(text)
    else:
        wf.write_text(text)
    for rel, content in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if content == "fifo":
            os.mkfifo(tmp_path / rel)
        elif content.startswith("link:"):
            (tmp_path / rel).symlink_to(content[len("link:"):])
        else:
            (tmp_path / rel).write_text(content)
    return tmp_path


def receipts(repo: Path) -> list[Path]:
    return sorted((repo / ".loom" / ".runtime" / "receipts").glob("*-check-*.json"))


@pytest.mark.parametrize(("text", "files", "line", "message", "pointer", "label"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_rejects_each_rule(tmp_path: Path, text: str, files: dict[str, str], line: int, message: str,
                                 pointer: str, label: str) -> None:
    repo = make_repo(tmp_path, text, files)
    message = message.replace("{repo}", str(repo))
    out = loom(repo, "check")
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    shown = f"{label}:{line} {message}" if line else f"{label}: {message}"
    assert lines[0] == shown, out.stderr
    assert len(lines) == 4, out.stderr
    assert lines[1] == ""
    [receipt] = receipts(repo)
    assert lines[2] == f"receipt: {receipt.relative_to(repo)}"
    assert lines[3] == "loom check failed (exit code 1)"
    doc = json.loads(receipt.read_text())
    assert doc["status"] == "failure" and doc["exit_code"] == 1 and doc["kind"] == "loom-check"
    [item] = doc["workflow_schema_v1"]["errors"]
    assert item["message"] == message and item["line"] == line and item["pointer"] == pointer
    assert item["code"] in ("WF_SCHEMA_V1", "WF_YAML", "WF_IO")
    assert (item["column"] >= 1 or not line) and item["hint"]
    assert (repo / ".loom" / ".runtime" / ".gitignore").read_text() == "*\n"
    comp = loom(repo, "compile")
    assert comp.returncode == 1 and comp.stdout == ""
    assert comp.stderr.splitlines() == [shown]


FULL = """\
version: v1
stages: [build, test]
include:
  - local: .loom/templates/base.yml
workflow:
  rules:
    - if: '$CI_COMMIT_BRANCH == "main" || ($MODE =~ /^rel/i && !$SKIP)'
      when: always
    - when: never
variables:
  ROOT: r
default:
  target: linux
  variables:
    D: d
build:
  extends: .docker
  stage: build
  script:
    - >-
      echo folded
      onto one line
    - echo "$ROOT"
  image:
    build: {context: ., dockerfile: ci/Dockerfile}
  services:
    - name: postgres:16
      alias: db
      variables: {POSTGRES_PASSWORD: pw}
  cache:
    - {name: deps, paths: [.deps], key: {prefix: deps, files: [lock.txt]}, fallback_keys: [deps-main]}
    - {name: spare, disabled: true}
  artifacts: {paths: [dist/**], exclude: [dist/tmp], when: always}
  secrets:
    TOKEN: {ref: env://TOKEN, file: false, required: false}
  runner_pool: fast
  invariant: hermetic
test:
  stage: test
  needs: [build]
  script: [echo test]
  cache: {paths: [.c], key: {template: "$job_name-v1"}, policy: pull, when: always}
  timeout: 90s
  limits: {memory: 512m, cpus: 2, pids: 64}
  allow_failure: true
"""
BASE = """\
.docker:
  image: {name: app:dev}
  variables: {T: t}
"""


def test_compile_full_workflow(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, FULL, {".loom/templates/base.yml": BASE})
    out = loom(repo, "compile")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    ir = json.loads(out.stdout)
    assert ir["schema"] == "loom.graph-ir.v1" and ir["stages"] == ["build", "test"]
    build, test = ir["nodes"]
    assert list(build) == ["id", "stage", "target", "image", "script", "variables", "cache", "services",
                           "secrets", "artifacts", "runner_pool", "invariant"]
    assert build["image"] == {"name": "app:dev", "build": {"context": ".", "dockerfile": "ci/Dockerfile"}}
    assert build["script"] == ["echo folded onto one line", 'echo "$ROOT"']
    assert build["variables"] == [{"key": "ROOT", "value": "r"}, {"key": "D", "value": "d"},
                                  {"key": "T", "value": "t"}]
    assert build["cache"] == [
        {"name": "deps", "paths": [".deps"], "policy": "pull-push", "when": "on_success",
         "key": {"prefix": "deps", "files": ["lock.txt"]}, "fallback_keys": ["deps-main"]},
        {"name": "spare", "disabled": True, "paths": [], "policy": "pull-push", "when": "on_success"}]
    assert build["services"] == [{"name": "postgres:16", "alias": "db",
                                  "variables": [{"key": "POSTGRES_PASSWORD", "value": "pw"}]}]
    assert build["secrets"] == {"TOKEN": {"ref": "env://TOKEN", "file": False, "required": False}}
    assert build["artifacts"] == {"paths": ["dist/**"], "exclude": ["dist/tmp"], "when": "always"}
    assert (build["runner_pool"], build["invariant"]) == ("fast", "hermetic")
    assert test == {
        "id": "test", "stage": "test", "target": "linux", "script": ["echo test"],
        "variables": [{"key": "ROOT", "value": "r"}, {"key": "D", "value": "d"}],
        "cache": {"paths": [".c"], "policy": "pull", "when": "always", "key": {"template": "$job_name-v1"}},
        "needs": ["build"], "timeout": 90, "limits": {"memory": 512 * 1024 * 1024, "cpus": 2.0, "pids": 64},
        "allow_failure": True}
    assert ir["edges"] == [{"from": "build", "to": "test"}]
    check = loom(repo, "check")
    assert check.returncode == 0, check.stderr
    [receipt] = receipts(repo)
    assert check.stderr.splitlines() == ["loom check passed", f"receipt: {receipt.relative_to(repo)}"]
    doc = json.loads(receipt.read_text())
    assert doc["workflow_schema_v1"] == {"workflow_path": str(repo / ".loom" / "workflow.yml"), "valid": True,
                                         "errors": [], "warnings": []}
    assert (doc["schema_version"], doc["status"], doc["exit_code"]) == ("v1", "success", 0)
    assert doc["command"] == ["loom", "check"]


def test_compile_warning_and_workflow_flag(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.yml"
    other.write_text("version: v1\nstages: [build, deploy]\n" + J)
    out = loom(tmp_path, "compile", "--workflow", str(other))
    assert out.returncode == 0
    assert out.stderr == 'warning: stage "deploy" has no jobs\n'
    assert [n["id"] for n in json.loads(out.stdout)["nodes"]] == ["build"]


def test_check_finds_repo_from_subfolder_and_prints_a_receipt_path_that_works_there(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, H + J + T)
    deep = repo / "src" / "deep"
    deep.mkdir(parents=True)
    out = loom(deep, "check")
    assert out.returncode == 0, out.stderr
    passed, shown = out.stderr.splitlines()
    assert passed == "loom check passed"
    assert shown.startswith("receipt: ../../.loom/.runtime/receipts/")
    [receipt] = receipts(repo)
    assert (deep / shown[len("receipt: "):]).resolve() == receipt.resolve()


def test_check_lists_every_error_in_one_pass_sorted_by_line(tmp_path: Path) -> None:
    """A bad extends target, a shape error, an unknown keyword, a bad needs and a variable cycle,
    in five jobs: each is reported, in line order (an extends error no longer hides the rest)."""
    text = (H
            + "zeta:\n  stage: test\n  target: linux\n  script: [echo]\n  needs: [nope]\n"  # 3-7
            + "build:\n  extends: .missing\n  stage: build\n  script: [x]\n"  # 8-11
            + "vars:\n  stage: build\n  target: linux\n  script: [x]\n  variables: {A: $B, B: $A}\n"  # 12-16
            + "alpha:\n  stage: build\n  target: linux\n  script: 3\n  colour: red\n"  # 17-21
            + "uses:\n  stage: test\n  target: linux\n  script: [x]\n  needs: [build]\n")  # 22-26
    repo = make_repo(tmp_path, text)
    out = loom(repo, "check")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[:-3] == [
        'workflow.yml:7 job "zeta" needs unknown job "nope"',
        'workflow.yml:9 extends target ".missing" of job "build" does not exist',
        "workflow.yml:16 variable cycle: A -> B -> A",
        'workflow.yml:20 expected sequence for "script", got integer',
        'workflow.yml:21 unknown key "colour" in job "alpha"',
    ]
    [receipt] = receipts(repo)
    errors = json.loads(receipt.read_text())["workflow_schema_v1"]["errors"]
    assert [e["line"] for e in errors] == [7, 9, 16, 20, 21]
    comp = loom(repo, "compile")
    assert comp.returncode == 1 and comp.stderr.splitlines() == lines[:-3]


def test_check_accepts_workflow_like_run_and_compile(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, H + J)
    (repo / "ci").mkdir()
    (repo / "ci" / "other.yml").write_text(H + J + "  colour: red\n")
    out = loom(repo / "ci", "check", "--workflow", "other.yml")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0] == 'other.yml:7 unknown key "colour" in job "build"'
    [receipt] = receipts(repo)  # the repo is the folder holding .loom/, above the workflow
    assert lines[2] == f"receipt: ../{receipt.relative_to(repo)}"
    doc = json.loads(receipt.read_text())
    assert doc["command"] == ["loom", "check", "--workflow", "other.yml"]
    assert doc["workflow_schema_v1"]["workflow_path"] == str(repo / "ci" / "other.yml")
    assert loom(repo, "check", "--workflow", ".loom/workflow.yml").returncode == 0


def test_check_outside_any_repo_checks_but_writes_nothing(tmp_path: Path) -> None:
    """A workflow in no git repo and under no folder holding .loom/ is checked, but loom never makes a
    .loom/.runtime of its own choosing for it."""
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "wf.yml").write_text(H + J + T)
    out = loom(tmp_path, "check", "--workflow", str(lone / "wf.yml"))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"loom check: {lone / 'wf.yml'} is in no git repository and no folder above it holds .loom/; loom keeps "
        "receipts and logs in a repository's .loom/.runtime, so there is nowhere to keep them"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["lone", "wf.yml"]
    assert loom(tmp_path, "compile", "--workflow", str(lone / "wf.yml")).returncode == 0  # compile writes nothing


@pytest.mark.parametrize("command", ["check", "compile"])
def test_a_fifo_or_device_as_the_workflow_is_refused_at_once(tmp_path: Path, command: str) -> None:
    """Opening a FIFO blocks until a writer comes; every command would hang. timeout=60 in `loom`
    makes a hang fail the test instead of the suite."""
    (tmp_path / ".loom").mkdir()
    os.mkfifo(tmp_path / ".loom" / "workflow.yml")
    out = loom(tmp_path, command)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (f"workflow.yml: cannot read {tmp_path / '.loom' / 'workflow.yml'}: "
                                          "not a regular file (a FIFO)")
    dev = loom(tmp_path, command, "--workflow", "/dev/zero")
    assert dev.returncode == 1
    assert dev.stderr.splitlines()[0] == "zero: cannot read /dev/zero: not a regular file (a character device)"
    assert not Path("/dev/.loom").exists()


def test_a_file_that_is_not_a_workflow_is_never_quoted(tmp_path: Path) -> None:
    """`--workflow` pointed at some other file (a password file, say): the error says it is not a
    workflow, and never echoes a byte of it, whether or not it parses as YAML."""
    repo = make_repo(tmp_path, H + J)
    (repo / "secrets.txt").write_text("root: hunter2\ndeploy: s3cr3t-t0ken\n")
    (repo / "broken.txt").write_text("user hunter2: [unclosed\n\t- s3cr3t-t0ken\n")
    for name, line in (("secrets.txt", 1), ("broken.txt", 2)):
        for command in ("check", "compile"):
            out = loom(repo, command, "--workflow", name)
            assert out.returncode == 1
            assert "hunter2" not in out.stderr and "s3cr3t" not in out.stderr and "root" not in out.stderr
            assert out.stderr.splitlines()[0] == (f'{name}:{line} not a loom workflow: no top-level "version" or '
                                                  '"stages" key')


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo-through-file"])
def test_compile_bad_paths(tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        target = tmp_path / "nope.yml"
    elif kind == "directory":
        target = tmp_path / "dir.yml"
        target.mkdir()
    else:  # root can read anything, so "unreadable" is a path through a regular file
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "workflow.yml"
    out = loom(tmp_path, "compile", "--workflow", str(target))
    assert "Traceback" not in out.stderr
    if kind == "directory":  # click's own path check: a usage error, exit 2 (spec §1.1 exit codes)
        assert out.returncode == 2 and "is a directory" in out.stderr
        return
    assert out.returncode == 1
    assert out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith(f"{target.name}: cannot read {target}: ")
    assert "Traceback" not in out.stderr


def test_check_workflow_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / ".loom" / "workflow.yml").mkdir(parents=True)
    out = loom(tmp_path, "check")
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert lines[0] == f"workflow.yml: cannot read {tmp_path / '.loom' / 'workflow.yml'}: Is a directory"
    assert lines[-1] == "loom check failed (exit code 1)"
    [receipt] = receipts(tmp_path)
    assert json.loads(receipt.read_text())["workflow_schema_v1"]["errors"][0]["code"] == "WF_IO"


def test_check_without_workflow_anywhere(tmp_path: Path) -> None:
    out = loom(tmp_path, "check")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"loom check: no .loom/workflow.yml found in {tmp_path} or any parent folder"]


def test_check_binary_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, b"version: v1\n\xff\xfe\x00binary")
    out = loom(repo, "check")
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == "workflow.yml:2 workflow is not UTF-8 text (invalid byte at offset 12)"


def test_check_unwritable_runtime(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, H + J)
    (repo / ".loom" / ".runtime").write_text("not a folder")
    out = loom(repo, "check")
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith("loom check: cannot write ")
    assert "Traceback" not in out.stderr


def test_check_path_never_imports_heavy_modules(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, H + J + T)
    code = ("import sys\nfrom click.testing import CliRunner\nfrom loomrun.cli import cli\n"
            "r = CliRunner().invoke(cli, ['check'])\nassert r.exit_code == 0, r.output\n"
            "r = CliRunner().invoke(cli, ['compile'])\nassert r.exit_code == 0, r.output\n"
            "bad = [m for m in ('docker', 'psutil', 'zstandard', 'loomrun.supervisor', 'filelock') "
            "if m in sys.modules]\nprint(','.join(bad))\n")
    out = run_python(code, repo)
    assert out.stdout.strip() == ""


def test_config_init_and_show(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, H + J)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("LOOM_DOCKER_WORKSPACE_MOUNT", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loomrun", *args], cwd=repo, capture_output=True, text=True,
                              timeout=60, env=env, check=False)

    assert run("config", "init").returncode == 0
    assert "workspaceMount: ephemeral_volume" in (repo / ".loom" / "config.yml").read_text()
    again = run("config", "init")
    assert again.returncode == 1 and "already exists; use --force" in again.stderr
    assert run("config", "init", "--force").returncode == 0
    assert run("config", "init", "--user").returncode == 0
    assert (tmp_path / "home" / ".config" / "loom" / "config.yml").exists()
    (repo / ".loom" / "config.yml").write_text("runtime: {docker: {workspaceMount: bind_mount}}\n")
    show = run("config", "show")
    assert show.returncode == 0
    assert show.stdout.splitlines()[:3] == [
        "runtime:", "  docker:", f"    workspaceMount: bind_mount  # from {repo / '.loom' / 'config.yml'}"]
    env["LOOM_DOCKER_WORKSPACE_MOUNT"] = "nope"
    bad = run("config", "show")
    assert bad.returncode == 1
    assert bad.stderr.strip() == ("loom config show: invalid workspaceMount 'nope' from environment variable "
                                  "LOOM_DOCKER_WORKSPACE_MOUNT; expected bind_mount or ephemeral_volume")


def _config_env(home: Path) -> dict[str, str]:
    drop = ("LOOM_DOCKER_WORKSPACE_MOUNT", "LOOM_JOBSERVER", "RAY_ADDRESS", "LOOM_DEBUG")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "HOME": str(home)}


def test_config_show_prints_every_field_and_its_layer(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    repo = make_repo(tmp_path / "repo", H + J)
    user = tmp_path / "home" / ".config" / "loom" / "config.yml"
    user.parent.mkdir(parents=True)
    user.write_text("runtime: {retention: {runs: 7}}\nproviders:\n  keepass:\n    aliases:\n"
                    "      team/app: {path: v/app.kdbx, passwordEnv: APP_PW}\n")
    (repo / ".loom" / "config.yml").write_text("runtime: {cache: {maxSize: 512m}}\nproviders:\n  keepass:\n"
                                               "    aliases:\n      team/app: {keyfileEnv: APP_KEY}\n")
    env = {**_config_env(tmp_path / "home"), "LOOM_JOBSERVER": "off"}
    out = subprocess.run([sys.executable, "-m", "loomrun", "config", "show"], cwd=repo, capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    project = repo / ".loom" / "config.yml"
    assert out.stdout.splitlines() == [
        "runtime:", "  docker:", "    workspaceMount: ephemeral_volume  # from default",
        "  retention:", f"    runs: 7  # from {user}", '    maxAge: "14d"  # from default',
        "  cache:", f'    maxSize: "512m"  # from {project}',
        '  jobserver: "off"  # from env LOOM_JOBSERVER',
        "remote:", "  ray:", "    address: null  # from default",
        "providers:", "  keepass:", "    aliases:", '      "team/app":',
        f'        path: "{user.parent / "v" / "app.kdbx"}"  # from {user}',
        f'        passwordEnv: "APP_PW"  # from {user}', f'        keyfileEnv: "APP_KEY"  # from {project}',
        "  op:", '    serviceAccountTokenEnv: "OP_SERVICE_ACCOUNT_TOKEN"  # from default',
    ]


def test_config_starter_shows_the_new_keys_and_loads_as_the_defaults(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, H + J)
    env = _config_env(tmp_path / "home")
    init = subprocess.run([sys.executable, "-m", "loomrun", "config", "init"], cwd=repo, capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert init.returncode == 0, init.stderr
    text = (repo / ".loom" / "config.yml").read_text()
    for key in ("retention: {runs: 50, maxAge: 14d}", "cache: {maxSize: 5g}", 'jobserver: "on"', "#   ray:",
                "#     serviceAccountTokenEnv:", "keyfileEnv"):
        assert key in text
    show = subprocess.run([sys.executable, "-m", "loomrun", "config", "show"], cwd=repo, capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert show.returncode == 0, show.stderr
    project = repo / ".loom" / "config.yml"
    assert f"    runs: 50  # from {project}" in show.stdout.splitlines()
    assert f'  jobserver: "on"  # from {project}' in show.stdout.splitlines()


@pytest.mark.parametrize(("args", "stderr"), [(("version",), ""), (("compile",), "loom compile: Broken pipe\n")])
def test_output_into_a_closed_pipe_ends_in_one_line_at_most(tmp_path: Path, args: tuple[str, ...], stderr: str) -> None:
    """`loom compile | head -c0`: the reader is gone before loom writes. loom leaves without
    interpreter teardown (`_entry._leave`, flushing first): no traceback, no 'Exception ignored',
    exit 1 (click's convention for a closed stdout), and for a long output loom's own one line."""
    repo = make_repo(tmp_path, "version: v1\nstages: [build]\n" + "".join(job(f"j{i:03d}") for i in range(400)))
    r, w = os.pipe()
    os.close(r)  # the reader went away: every write gets EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "loomrun", *args], cwd=repo, stdout=w, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=60)
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (1, stderr)


@pytest.mark.parametrize("args", [("version",), ("--version",), ("--help",), ("compile",), ("config", "show")])
def test_output_onto_a_full_disk_is_one_line_and_exit_1(tmp_path: Path, args: tuple[str, ...]) -> None:
    """stdout on a full disk (/dev/full): one line naming the error, exit 1, never a traceback."""
    repo = make_repo(tmp_path, H + J)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "loomrun", *args], cwd=repo, stdout=full, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(": No space left on device"), proc.stderr
    assert "Traceback" not in proc.stderr
