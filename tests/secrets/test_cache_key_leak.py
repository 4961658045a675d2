"""Leak 2 of issue 12 (spec §7.3): a secret used in a cache key is never written or printed — not
in the cache store (entry folder, metadata), the logs, the receipt, `loom cache list` or the
terminal — and the key still hits on the next run."""

from __future__ import annotations

from pathlib import Path

from tests.process.runner import loom_env, make_repo, run_loom
from tests.secrets.conftest import assert_nowhere

TOKEN = "Tk-9f27-cache-secret"

WORKFLOW = """
version: v1
stages: [s]
build:
  stage: s
  target: linux
  secrets:
    TOKEN: {ref: "env://APP_TOKEN", file: false}
  cache:
    key: "deps-$TOKEN"
    fallback_keys: ["old-$TOKEN"]
    paths: [deps]
  script:
    - if [ -f deps/lib.txt ]; then echo restored; else mkdir -p deps && echo built > deps/lib.txt; fi
"""


def test_secret_in_a_cache_key_is_never_stored_or_printed_and_still_hits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", WORKFLOW)
    env = loom_env(APP_TOKEN=TOKEN)
    first = run_loom(repo, "run", "--local", "-v", "--stream", env=env)
    assert first.code == 0, first.stderr
    second = run_loom(repo, "run", "--local", "-v", "--stream", env=env)
    assert second.code == 0, second.stderr
    assert second.step_lines("build", 1) == ["restored"]  # the concealed name is stable: a hit
    listing = run_loom(repo, "cache", "list", env=env)
    assert listing.code == 0, listing.stderr

    runtime = repo / ".loom" / ".runtime"
    assert_nowhere(TOKEN, runtime, first.stdout, first.stderr, second.stdout, second.stderr,
                   listing.stdout, listing.stderr, skip=())
    [entry] = (runtime / "cache" / "entries").iterdir()
    assert entry.name.startswith("%secret-") and len(entry.name) == len("%secret-") + 64
    [line] = listing.stdout.splitlines()[1:]
    shown = line.split()[0]
    assert shown.startswith("deps-[REDACTED:SECRET_TOKEN]@"), listing.stdout
    assert f'cache {shown}: hit' in second.stderr
    restore = second.job_manifest("build")  # the hit is recorded under the same concealed key
    assert restore["status"] == "success"

    other = run_loom(repo, "run", "--local", "-v", env=loom_env(APP_TOKEN=TOKEN + "-rotated"))
    assert other.code == 0, other.stderr
    assert "miss" in other.stderr  # another value is another key, never the old entry
    names = {p.name for p in (runtime / "cache" / "entries").iterdir()}
    assert len(names) == 2 and all(n.startswith("%secret-") for n in names)


def test_conceal_and_the_entry_folder() -> None:
    from loomrun.cache.keys import conceal
    from loomrun.cache.store import key_dirname

    pepper = b"p" * 32
    secrets = [("SHORT", "abc"), ("LONG", "abcdef")]
    assert conceal("plain-key", secrets, pepper) == "plain-key"
    hidden = conceal("k-abcdef-abc", secrets, pepper)
    assert hidden.startswith("k-[REDACTED:SECRET_LONG]-[REDACTED:SECRET_SHORT]@") and "abc" not in hidden
    assert conceal("k-abcdef-abc", secrets, pepper) == hidden  # stable: the next run hits
    assert conceal("k-abcdef-abc", secrets, b"q" * 32) != hidden  # keyed by the store's own key
    assert conceal("k-abcdef-abx", [("LONG", "abcdef")], pepper).split("@")[0] == "k-[REDACTED:SECRET_LONG]-abx"
    assert key_dirname(hidden).startswith("%secret-") and "REDACTED" not in key_dirname(hidden)
    assert key_dirname("plain-key") == "plain-key"
