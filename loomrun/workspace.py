"""The isolated workspace snapshot (spec §3.1). Runs in the `loom` process (supervisor side).

Owns `.loom/.runtime/workspaces/<run_id>/`: making it before the first job and removing it.
In a git repo the snapshot is the working-tree content of every tracked or untracked-but-not-ignored
path (so HEAD plus modified, staged and new files; deleted files are absent). Outside git it is the
whole folder. `.loom/.runtime/` is never copied. Files are real copies, never hardlinks, because jobs
may write to them and the user's checkout must never change. Symlinks stay symlinks; file modes and
mtimes are kept (build tools compare mtimes); directory modes are not.
Submodules and nested repositories are copied as plain files (their own tracked + untracked files,
no `.git`); sockets, fifos and devices are skipped. An unreadable file or folder is a LoomError.
The top gets an empty `.git` folder (see `_mark_root`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from loomrun.errors import LoomError
from loomrun.repo import in_git_tree

RUNTIME_PREFIX = ".loom/.runtime"
_COPY_CHUNK = 1 << 30
_THREAD_MIN_FILES = 256
_GIT_TIMEOUT_S = 300
# Git variables that would point git at another repository than the one we snapshot.
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                 "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES")


class Snapshot(NamedTuple):
    """A made snapshot. `head_sha`/`short_sha` (12 hex digits) are None outside git and in a repo
    without commits; `branch` is None outside git and on a detached HEAD (an unborn branch is named).
    `files` counts regular files and symlinks; `bytes` sums the regular files' sizes."""

    path: Path
    head_sha: str | None
    short_sha: str | None
    branch: str | None
    is_git: bool
    files: int
    bytes: int


class _Entry(NamedTuple):
    rel: str
    kind: str  # "file", "link" or "dir"


class GitFacts(NamedTuple):
    """What a run needs to know of the repo's git state, asked once, before `workflow.rules` (which
    see them as predefined variables) and reused by the snapshot. `head_sha` is None in a repo
    without commits; `branch` is None on a detached HEAD (an unborn branch is named); `tag` is the
    newest tag pointing at HEAD; `default_branch` is the branch origin's HEAD names, if any."""

    head_sha: str | None
    branch: str | None
    tag: str | None = None
    default_branch: str | None = None


class _Unasked:
    """make_snapshot's `facts` when the caller has not asked git yet."""


_UNASKED = _Unasked()


def make_snapshot(repo_root: Path, dest: Path, facts: GitFacts | _Unasked | None = _UNASKED,
                  early: GitPrefetch | None = None) -> Snapshot:
    """Copy the repo's working content into `dest` (which must not exist or be empty). `facts`:
    `git_facts(repo_root)` when the caller already has them (None: not a git work tree); `early`:
    the file list, when started already."""
    root = repo_root.resolve()
    _prepare_dest(dest)
    try:
        info = git_facts(root, early) if isinstance(facts, _Unasked) else facts
        entries = _git_entries(root, early) if info is not None else _walk_entries(root, dest.resolve())
        files, size = _copy_all(root, dest, entries)
        _mark_root(dest)
    except BaseException:
        with contextlib.suppress(LoomError, OSError):  # the first error is the one worth reporting
            remove_snapshot(dest)
        raise
    head = info.head_sha if info else None
    return Snapshot(
        path=dest, head_sha=head, short_sha=head[:12] if head else None,
        branch=info.branch if info else None, is_git=info is not None, files=files, bytes=size,
    )


def _mark_root(dest: Path) -> None:
    """An empty `.git` folder at the snapshot's top, so that tools which honour .gitignore files on
    their own (ruff, ripgrep, fd: the `ignore` crate) take the workspace as a repository's root. They
    read the .gitignore files of every parent up to the repository's root, and the snapshot lives
    under `.loom/.runtime/`, whose .gitignore says `*` (spec §3.1): without the marker `ruff check .`
    in a job found no file at all and passed. git itself is not fooled: a `.git` that is not a
    repository is passed over, so `git` in a job still answers for the user's repository."""
    with contextlib.suppress(FileExistsError):
        (dest / ".git").mkdir()


def remove_snapshot(path: Path) -> None:
    """Remove a snapshot tree, including read-only folders a job may have left in it."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
        return
    except OSError:
        _make_dirs_writable(path)
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise LoomError(f"cannot remove workspace {path}: {exc.strerror or exc}") from None


def _make_dirs_writable(path: Path) -> None:
    # chmod never follows a symlink here: a job could point one at a folder outside the snapshot.
    os.chmod(path, 0o700)
    for dirpath, dirnames, _ in os.walk(path, onerror=lambda _e: None):
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)


def _prepare_dest(dest: Path) -> None:
    try:
        dest.mkdir(parents=True)
    except FileExistsError:
        if not dest.is_dir() or any(dest.iterdir()):
            raise LoomError(f"workspace {dest} already exists and is not empty") from None
    except OSError as exc:
        raise LoomError(f"cannot create workspace {dest}: {exc.strerror or exc}") from None


# --- git -------------------------------------------------------------------------------------------

def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    env["GIT_OPTIONAL_LOCKS"] = "0"  # reading must not take index.lock in the user's repo
    return env


def _git(root: Path, *args: str, early: GitPrefetch | None = None) -> subprocess.CompletedProcess[bytes]:
    done = early.take(root, args) if early is not None else None
    if done is not None:
        return done
    try:
        return subprocess.run(
            ["git", *args], cwd=root, env=_git_env(), capture_output=True, timeout=_GIT_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        raise _too_long(root, args) from None


def _too_long(root: Path, args: Sequence[str]) -> LoomError:
    return LoomError(f"git {args[0]} in {root} took longer than {_GIT_TIMEOUT_S}s")


_FACTS = ("rev-parse", "--is-inside-work-tree", "HEAD^{commit}", "--abbrev-ref", "refs/remotes/origin/HEAD")
_REFS = ("for-each-ref", "--points-at=HEAD", "--sort=-creatordate", "--format=%(HEAD)%(refname)",
         "refs/heads", "refs/tags")
_LS_FILES = ("ls-files", "-z", "--cached", "--others", "--exclude-standard")


class GitPrefetch:
    """The git processes a run asks in `configure` (`git_facts`) and `snapshot` (the file list),
    started together at the start of its `load`, so that they run on the other core while the
    supervisor loads the workflow instead of one after the other, each waited for (measured:
    configure and snapshot ~9 ms shorter, the load ~6 ms longer, for starting them). The run asks
    `git_facts` and `make_snapshot` with it; each question finds its answer here (`take`) or asks
    git then, as without it. What was not taken (a run that failed to load, a repo without commits,
    `workflow.rules` skipping the pipeline) is killed and reaped by `close`, which the run calls
    whatever happens. Answers are those of the start of the load: of the run's start, as a
    snapshot is."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.procs: dict[tuple[str, ...], subprocess.Popen[bytes]] = {}

    @classmethod
    def of(cls, root: Path) -> GitPrefetch | None:
        """None outside a git work tree (nothing to ask, as in `git_facts`). `start` it then: the
        caller holds it before any process exists, so `close` finds every one."""
        return cls(root) if in_git_tree(root) else None

    def start(self) -> None:
        env = _git_env()
        for args in (_FACTS, _REFS, _LS_FILES):
            try:
                self.procs[args] = subprocess.Popen(["git", *args], cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError:  # no git, no fork: asked again when needed, which says why
                break

    def take(self, root: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess[bytes] | None:
        """The answer of `git args` in `root`, when it was started here (once); else None."""
        proc = self.procs.get(args)
        if proc is None or os.path.realpath(root) != self.root:
            return None
        del self.procs[args]
        try:
            out, err = proc.communicate(timeout=_GIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise _too_long(root, args) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close(self) -> None:
        """Kill and reap what was not taken."""
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                proc.kill()
            proc.communicate()
        self.procs.clear()


def git_facts(root: Path, early: GitPrefetch | None = None) -> GitFacts | None:
    """HEAD, branch, tag and origin's default branch of the repo holding `root`; None when `root`
    is not in a git work tree. Two git processes in a repo with commits (one rev-parse answers
    "work tree?", HEAD and origin's HEAD together; one for-each-ref the branch and tags at HEAD),
    none outside git; `early`: their answers, when started already."""
    if not in_git_tree(root):
        # git looks for a repository by the same walk up (its GIT_DIR & co. are dropped): a tree
        # with no `.git` anywhere above it is not in one, and asking would cost a process.
        return None
    try:
        # rev-parse prints each answer in turn and stops at the first name that does not resolve
        # (no commit yet, no origin/HEAD): what it printed before that still holds.
        out = _git(root, *_FACTS, early=early)
    except FileNotFoundError:
        if (root / ".git").exists():
            raise LoomError(f"{root} is a git repository but the git command is not installed") from None
        return None
    lines = out.stdout.decode(errors="replace").splitlines()
    if not lines or lines[0] not in ("true", "false"):
        message = out.stderr.decode(errors="replace").strip()
        if "not a git repository" in message:
            return None
        first = message.splitlines()[0] if message else f"exit code {out.returncode}"
        raise LoomError(f"cannot read git repository {root}: {first}")
    if lines[0] != "true":  # inside a .git folder or a bare repo
        return None
    head = lines[1] if len(lines) > 1 and _SHA.fullmatch(lines[1]) else None
    origin = lines[2] if len(lines) > 2 and _SHA.fullmatch(lines[1]) else ""
    default = origin[len("origin/"):] or None if origin.startswith("origin/") else None
    if head is None:  # no commit yet: the branch still has a name
        branch = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
        name = os.fsdecode(branch.stdout.strip()) or None if branch.returncode == 0 else None
        return GitFacts(None, name, None, default)
    refs = _git(root, *_REFS, early=early)
    current, tags = None, []
    for line in os.fsdecode(refs.stdout).splitlines():
        if line.startswith("*refs/heads/"):
            current = line[len("*refs/heads/"):]
        elif line.startswith(" refs/tags/"):
            tags.append(line[len(" refs/tags/"):])
    return GitFacts(head, current, tags[0] if tags else None, default)


_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


def _git_entries(root: Path, early: GitPrefetch | None = None) -> list[_Entry]:
    return list(_git_entries_under(root, "", early))


def _git_entries_under(top: Path, prefix: str, early: GitPrefetch | None = None) -> Iterator[_Entry]:
    """Tracked + untracked-not-ignored paths of the work tree at `top`, as seen on disk."""
    listing = _git(top, *_LS_FILES, early=early)
    if listing.returncode != 0:
        message = listing.stderr.decode(errors="replace").strip()
        raise LoomError(f"git ls-files failed in {top}: {message or listing.returncode}")
    seen: set[str] = set()
    for raw in listing.stdout.split(b"\0"):
        if not raw:
            continue
        rel = os.fsdecode(raw).rstrip("/")
        if rel in seen or _is_runtime(prefix + rel):
            continue
        seen.add(rel)
        entry = _entry_for(top, rel)
        if entry is None:
            continue  # deleted in the working tree
        if entry.kind == "dir":
            # A submodule or a nested repository: its own working content, copied as plain files.
            yield _Entry(prefix + rel, "dir")
            if (top / rel / ".git").exists():
                yield from _git_entries_under(top / rel, f"{prefix}{rel}/")
            continue
        yield _Entry(prefix + rel, entry.kind)


def _entry_for(top: Path, rel: str) -> _Entry | None:
    try:
        st = os.lstat(top / rel)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a parent folder was replaced by a file
    return _kind_entry(rel, st.st_mode)


def _kind_entry(rel: str, mode: int) -> _Entry | None:
    if stat.S_ISLNK(mode):
        return _Entry(rel, "link")
    if stat.S_ISREG(mode):
        return _Entry(rel, "file")
    if stat.S_ISDIR(mode):
        return _Entry(rel, "dir")
    return None  # sockets, fifos, devices: nothing a job can use from a snapshot


def _is_runtime(rel: str) -> bool:
    return rel == RUNTIME_PREFIX or rel.startswith(RUNTIME_PREFIX + "/")


# --- outside git -----------------------------------------------------------------------------------

def _walk_entries(root: Path, dest: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        for item in _scan(root / rel_dir):
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            if _is_runtime(rel) or Path(item.path) == dest:
                continue
            entry = _kind_entry(rel, item.stat(follow_symlinks=False).st_mode)
            if entry is None:
                continue
            entries.append(entry)
            if entry.kind == "dir":
                stack.append(rel)
    return entries


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise LoomError(f"cannot snapshot {folder}: {exc.strerror or exc}") from None


# --- copying ---------------------------------------------------------------------------------------

def _copy_all(root: Path, dest: Path, entries: list[_Entry]) -> tuple[int, int]:
    """Folders first (in the caller's thread), then files and links split across a few threads.

    Measured on 20,000 files / 200 MB (scripts/bench.py workspace): one future per file is twice
    as slow as a plain loop (GIL churn); a few threads each walking its own share is on par with a
    loop on tmpfs and faster on a real disk, where the copies wait on I/O with the GIL released.
    """
    made: set[str] = {""}
    work: list[_Entry] = []
    for entry in entries:
        _make_parents(dest, entry.rel.rpartition("/")[0], made)
        if entry.kind == "dir":
            _make_parents(dest, entry.rel, made)
        else:
            work.append(entry)
    threads = 1 if len(work) < _THREAD_MIN_FILES else min(4, max(2, os.cpu_count() or 2))
    failed = threading.Event()

    def copy_share(share: list[_Entry]) -> int:
        total = 0
        for entry in share:
            if failed.is_set():
                break
            try:
                total += _copy_entry(root, dest, entry)
            except BaseException:
                failed.set()
                raise
        return total

    if threads == 1:
        return len(work), copy_share(work)
    from concurrent.futures import ThreadPoolExecutor  # big trees only: small runs skip its imports

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loom-snapshot") as pool:
        try:
            sizes = list(pool.map(copy_share, [work[i::threads] for i in range(threads)]))
        except BaseException:  # ^C or a copy error: the other threads stop at their next file
            failed.set()
            raise
    return len(work), sum(sizes)


def _make_parents(dest: Path, rel: str, made: set[str]) -> None:
    if rel in made:
        return
    _make_parents(dest, rel.rpartition("/")[0], made)
    try:
        os.mkdir(dest / rel)
    except FileExistsError:
        pass
    made.add(rel)


def _copy_entry(root: Path, dest: Path, entry: _Entry) -> int:
    src, dst = root / entry.rel, dest / entry.rel
    try:
        if entry.kind == "link":
            os.symlink(os.readlink(src), dst)
            return 0
        return _copy_file(src, dst)
    except OSError as exc:
        raise LoomError(f"cannot snapshot {src}: {exc.strerror or exc}") from None


def _copy_file(src: Path, dst: Path) -> int:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd_in)
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _copy_data(fd_in, fd_out, st.st_size)
            os.fchmod(fd_out, stat.S_IMODE(st.st_mode))
            os.utime(fd_out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return st.st_size


def _copy_data(fd_in: int, fd_out: int, size: int) -> None:
    """In-kernel copy (copy_file_range, reflinks where the filesystem can); plain reads as a fallback."""
    if size == 0:
        return
    try:
        while os.copy_file_range(fd_in, fd_out, _COPY_CHUNK):
            pass
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
            raise
    os.lseek(fd_in, 0, os.SEEK_SET)
    os.lseek(fd_out, 0, os.SEEK_SET)
    os.ftruncate(fd_out, 0)
    while chunk := os.read(fd_in, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd_out, view):]
