#!/usr/bin/env bash
# THE test command: `scripts/test.sh [pytest args...]`, from any folder.
#
# Works on a fresh Debian 12 as root with only Python 3.11 + pip: makes (or refreshes) a venv at
# .venv, installs loomrun with its test extras and the optional secrets providers (keepass, op),
# brings up Docker through scripts/docker-up.sh when that script exists, then runs ruff, mypy
# (strict on loomrun/ and workers/) and pytest. Every stage runs even when an earlier one failed;
# the exit code is non-zero if any failed.
#
# Environment:
#   LOOM_TEST_NO_VENV=1     use the current interpreter ($PYTHON or python3) instead of .venv
#   LOOM_TEST_REINSTALL=1   reinstall the package even when pyproject.toml did not change
#   PYTHON                  the interpreter that creates the venv (default: python3)
#   CI=true                 a skipped test counts as a failure; a failing docker-up.sh is fatal
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

stage() { printf '\n=== %s ===\n' "$*"; }
warn() { echo "test.sh: $*" >&2; }
die() { echo "test.sh: error: $*" >&2; exit 1; }

apt_install() {
    # Only as root with apt-get (a fresh CI machine); elsewhere the caller reports what is missing.
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
    # The tests build real git repositories.
    if ! command -v git >/dev/null 2>&1; then
        echo "installing git with apt-get"
        apt_install git ca-certificates || die "git is required and could not be installed"
    fi
    # The remote tests (tests/remote) run a Ray cluster in a network namespace of their own:
    # unshare/nsenter (util-linux) and ip (iproute2).
    if ! command -v ip >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then
        echo "installing iproute2 and util-linux with apt-get"
        apt_install iproute2 util-linux || warn "ip/nsenter missing: the remote tests will skip (fail with CI=true)"
    fi
    # The jobserver tests run real GNU make (Debian 12: make 4.3); `scripts/bench.py hosts` compiles with gcc.
    if ! command -v make >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then
        echo "installing make and gcc with apt-get"
        apt_install make gcc || warn "make or gcc is missing: the jobserver tests skip (and fail with CI=true)"
    fi
    # Terminal output is tested in a real terminal: a detached tmux pane read with capture-pane.
    if ! command -v tmux >/dev/null 2>&1; then
        echo "installing tmux with apt-get"
        apt_install tmux || die "tmux is required (terminal tests) and could not be installed"
    fi
    # Shell completion is tried in the shells it is for: bash (there), zsh and fish.
    if ! command -v zsh >/dev/null 2>&1 || ! command -v fish >/dev/null 2>&1; then
        echo "installing zsh and fish with apt-get"
        apt_install zsh fish || warn "zsh or fish is missing: their completion tests skip (and fail with CI=true)"
    fi
}

ensure_browser() {
    # The report tests open `loom report`'s HTML in Debian's chromium, headless.
    if ! command -v chromium >/dev/null 2>&1; then
        echo "installing chromium with apt-get"
        apt_install chromium \
            || warn "chromium could not be installed; the report's browser tests will skip (and fail with CI=true)"
    fi
}

make_venv() {
    local py="$1"
    if "$py" -m venv .venv 2>/dev/null; then
        return
    fi
    rm -rf .venv
    # Debian ships venv's ensurepip in a separate package.
    local minor
    minor="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if apt_install "python${minor}-venv" && "$py" -m venv .venv; then
        return
    fi
    rm -rf .venv
    echo "no ensurepip: venv without pip, using the interpreter's own pip"
    "$py" -m venv --without-pip --system-site-packages .venv
}

setup_python() {
    local base="${PYTHON:-python3}"
    command -v "$base" >/dev/null 2>&1 || die "$base not found"
    if [ "${LOOM_TEST_NO_VENV:-0}" = 1 ]; then
        stage "python: current interpreter $(command -v "$base")"
        PY="$base"
        export PIP_BREAK_SYSTEM_PACKAGES=1  # asked for explicitly: install into this interpreter
    else
        stage "python: venv .venv"
        if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            rm -rf .venv
            echo "creating .venv with $base"
            make_venv "$base"
        fi
        PY=.venv/bin/python
    fi
    "$PY" --version
    local stamp=".venv/.loom-test-installed" want
    if [ "${LOOM_TEST_NO_VENV:-0}" = 1 ]; then
        stamp=""
    fi
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ -n "$stamp" ] && [ "${LOOM_TEST_REINSTALL:-0}" != 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        echo "loomrun[test,keepass,op,ray] already installed for this pyproject.toml"
    else
        # keepass, op: the secrets providers (spec §7); ray: the remote tests run a real Ray cluster (§12)
        echo "pip install -e '.[test,keepass,op,ray]'"
        "$PY" -m pip install -q --disable-pip-version-check -e '.[test,keepass,op,ray]'
        if [ -n "$stamp" ]; then
            echo "$want" > "$stamp"
        fi
    fi
}

docker_up() {
    [ -f scripts/docker-up.sh ] || return 0
    stage "docker: scripts/docker-up.sh"
    if ! bash scripts/docker-up.sh; then
        [ "${CI:-}" = true ] && die "scripts/docker-up.sh failed (CI=true: Docker is required)"
        warn "scripts/docker-up.sh failed; Docker tests will skip (and fail with CI=true)"
    fi
}

FAILED=()
run_stage() {
    local name="$1"
    shift
    stage "$name"
    local rc=0
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        FAILED+=("$name (exit $rc)")
    fi
    return 0
}

run_pytest() {
    local rc=0
    "$PY" -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        warn "pytest collected no tests (exit 5): counted as a failure"
    fi
    return "$rc"
}

ensure_tools
ensure_browser
setup_python
docker_up
run_stage "ruff check ." "$PY" -m ruff check .
run_stage "mypy (strict: loomrun/, workers/)" "$PY" -m mypy
run_stage "pytest $*" run_pytest "$@"

stage "summary"
if [ "${#FAILED[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all stages passed"
