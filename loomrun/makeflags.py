"""`MAKEFLAGS` as GNU make reads it, for the jobserver (spec §13). PURE; used by the supervisor
(is `loom` itself running under a jobserver?) and by workers (each job's `MAKEFLAGS`).

make's own layout: an optional first word of single-letter flags without a dash (`ks`), then
options (`-j4`, `--jobserver-auth=3,4`), then ` -- ` and command-line variable definitions,
which are left as they are. Only the last `--jobserver-auth=` counts (the make manual, "Job
Slots"); make before 4.2 spelled it `--jobserver-fds=`.
"""

from __future__ import annotations

_AUTH_PREFIXES = ("--jobserver-auth=", "--jobserver-fds=")


def _is_jobs(word: str) -> bool:
    """`-j` or `-jN` (no regex: this module is on `loom run`'s start-up path)."""
    return word.startswith("-j") and (len(word) == 2 or word[2:].isdigit())


def _split(makeflags: str) -> tuple[list[str], str]:
    """(the option words, the ` -- VAR=value` tail as written)."""
    head, sep, tail = f" {makeflags} ".partition(" -- ")
    return head.split(), (f"-- {tail.strip()}" if sep else "")


def jobserver_auths(makeflags: str) -> list[str]:
    """The value of every `--jobserver-auth=` (`fifo:PATH` or `R,W`), in order."""
    return [word.split("=", 1)[1] for word in _split(makeflags)[0] if word.startswith(_AUTH_PREFIXES)]


def jobserver_auth(makeflags: str) -> str | None:
    """The value of the last `--jobserver-auth=`, the one make uses, or None."""
    auths = jobserver_auths(makeflags)
    return auths[-1] if auths else None


def jobs_word(makeflags: str) -> str | None:
    """The `-jN` word make passed along (`-j` alone means unlimited), or None."""
    for word in _split(makeflags)[0]:
        if _is_jobs(word):
            return word
    return None


def without_jobserver(makeflags: str, drop_jobs: bool = False) -> str:
    """`makeflags` without its jobserver words (and its `-jN` too with `drop_jobs`)."""
    words, tail = _split(makeflags)
    kept = [w for w in words if not w.startswith(_AUTH_PREFIXES) and not (drop_jobs and _is_jobs(w))]
    return " ".join([*kept, tail] if tail else kept)


def with_jobserver(makeflags: str, slots: int, auths: list[str]) -> str:
    """`makeflags` drawing from a jobserver: `-jN` (`-j` when the pool's size is unknown) and one
    `--jobserver-auth=` per form in `auths`, the one for the oldest make last (it is the one every
    make uses). The job's own flags and variables are kept."""
    words, tail = _split(without_jobserver(makeflags, drop_jobs=True))
    ours = [f"-j{slots}" if slots > 0 else "-j", *(f"--jobserver-auth={a}" for a in auths)]
    lead = 1 if words and not words[0].startswith("-") else 0  # make reads a dashless word only first
    return " ".join(w for w in [*words[:lead], *ours, *words[lead:], tail] if w)
