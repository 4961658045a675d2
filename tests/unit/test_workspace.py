"""The isolated workspace snapshot (spec §3.1) on real git repos and real folders."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loomrun.errors import LoomError
from loomrun.workspace import make_snapshot, remove_snapshot
from tests.helpers import git, git_children, init_repo, tree

NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _git_repo(root: Path) -> Path:
    init_repo(root, {
        "README.md": "hello\n",
        "src/app.py": "print('v1')\n",
        "src/gone.py": "deleted later\n",
        "src/staged.py": "staged v1\n",
        "run.sh": "#!/bin/sh\necho run\n",
        ".gitignore": "*.log\nbuild/\n",
        "docs/dir with space/a b.txt": "spaces\n",
    }, commit=False)
    os.chmod(root / "run.sh", 0o755)
    os.symlink("src/app.py", root / "link-to-app")
    os.symlink("missing-target", root / "dangling")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    (root / "src" / "app.py").write_text("print('modified, unstaged')\n")
    (root / "src" / "staged.py").write_text("staged v2\n")
    git(root, "add", "src/staged.py")
    (root / "src" / "gone.py").unlink()
    (root / "new.txt").write_text("untracked\n")
    (root / "debug.log").write_text("ignored\n")
    (root / "build").mkdir()
    (root / "build" / "out.o").write_text("ignored\n")
    (root / ".loom" / ".runtime" / "logs").mkdir(parents=True)
    (root / ".loom" / ".runtime" / "logs" / "x.jsonl").write_text("{}\n")
    (root / ".loom" / "workflow.yml").write_text("version: v1\n")
    return root


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    return _git_repo(tmp_path / "repo")


def test_git_snapshot_holds_working_content_of_tracked_and_untracked_files(git_repo: Path,
                                                                          tmp_path: Path) -> None:
    source_before = tree(git_repo)
    head = git(git_repo, "rev-parse", "HEAD").strip()
    snap = make_snapshot(git_repo, tmp_path / "snap")
    got = tree(snap.path)
    assert sorted(got) == sorted([
        ".gitignore", ".loom/workflow.yml", "README.md", "dangling", "docs/dir with space/a b.txt",
        "link-to-app", "new.txt", "run.sh", "src/app.py", "src/staged.py",
    ])
    assert got["src/app.py"][1] == b"print('modified, unstaged')\n"
    assert got["src/staged.py"][1] == b"staged v2\n"
    assert got["new.txt"][1] == b"untracked\n"
    assert got["link-to-app"] == ("link", "src/app.py", 0)
    assert got["dangling"] == ("link", "missing-target", 0)
    assert got["run.sh"][2] == 0o755
    assert got["README.md"][2] == _mode(git_repo / "README.md")
    assert list((snap.path / ".git").iterdir()) == []  # the root marker, never the repository itself
    assert (snap.head_sha, snap.short_sha, snap.branch, snap.is_git) == (head, head[:12], "main", True)
    assert snap.files == 10
    assert snap.bytes == sum(len(v[1]) for v in got.values() if v[0] == "file")
    assert tree(git_repo) == source_before
    assert git(git_repo, "status", "--porcelain") != ""  # still dirty: nothing was committed or reset


def test_snapshot_copies_are_independent_of_the_checkout(git_repo: Path, tmp_path: Path) -> None:
    snap = make_snapshot(git_repo, tmp_path / "snap")
    (snap.path / "README.md").write_text("changed by a job\n")
    (snap.path / "src" / "app.py").unlink()
    assert (git_repo / "README.md").read_text() == "hello\n"
    assert (git_repo / "src" / "app.py").exists()
    assert os.stat(git_repo / "README.md").st_nlink == 1


def test_mtimes_are_kept(git_repo: Path, tmp_path: Path) -> None:
    os.utime(git_repo / "README.md", ns=(1_000_000_000, 1_500_000_000_123))
    snap = make_snapshot(git_repo, tmp_path / "snap")
    assert os.stat(snap.path / "README.md").st_mtime_ns == 1_500_000_000_123


def test_odd_file_names(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "repo", {"plain.txt": "p\n"})
    names = ["new\nline.txt", "tab\tand space.txt", "ünïcödé.txt", "quote\"'.txt"]
    for name in names:
        (root / name).write_text(name)
    raw = os.fsencode(root) + b"/latin1-\xe9.bin"
    with open(raw, "wb") as fh:
        fh.write(b"\xff\x00binary")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "odd")
    snap = make_snapshot(root, tmp_path / "snap")
    for name in names:
        assert (snap.path / name).read_text() == name
    with open(os.fsencode(snap.path) + b"/latin1-\xe9.bin", "rb") as fh:
        assert fh.read() == b"\xff\x00binary"
    assert snap.files == len(names) + 2


def test_repo_without_commits(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "repo", {"a.txt": "a\n", "skip.tmp": "x\n", ".gitignore": "*.tmp\n"},
                     commit=False)
    git(root, "add", "a.txt")
    snap = make_snapshot(root, tmp_path / "snap")
    assert sorted(tree(snap.path)) == [".gitignore", "a.txt"]
    assert (snap.head_sha, snap.short_sha, snap.branch, snap.is_git) == (None, None, "main", True)


def test_detached_head_has_no_branch(git_repo: Path, tmp_path: Path) -> None:
    git(git_repo, "checkout", "-q", "--detach")
    snap = make_snapshot(git_repo, tmp_path / "snap")
    assert snap.branch is None
    assert snap.head_sha == git(git_repo, "rev-parse", "HEAD").strip()


def test_file_replaced_by_folder_and_index_only_deletion(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "repo", {"thing": "file\n", "kept.txt": "k\n"})
    (root / "thing").unlink()
    (root / "thing").mkdir()
    (root / "thing" / "inside.txt").write_text("now a folder\n")
    git(root, "rm", "-q", "--cached", "kept.txt")  # untracked now, but still on disk: kept
    snap = make_snapshot(root, tmp_path / "snap")
    assert tree(snap.path) == {
        "thing/inside.txt": ("file", b"now a folder\n", _mode(root / "thing" / "inside.txt")),
        "kept.txt": ("file", b"k\n", _mode(root / "kept.txt")),
    }


def test_submodule_and_nested_repo_are_copied_as_plain_files(tmp_path: Path) -> None:
    lib = init_repo(tmp_path / "lib", {"lib.txt": "library\n", ".gitignore": "*.o\n"})
    root = init_repo(tmp_path / "repo", {"main.txt": "main\n"})
    git(root, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "vendor/lib")
    git(root, "commit", "-q", "-m", "submodule")
    (root / "vendor" / "lib" / "local.txt").write_text("untracked in submodule\n")
    (root / "vendor" / "lib" / "junk.o").write_text("ignored in submodule\n")
    init_repo(root / "nested", {"n.txt": "nested\n"})
    snap = make_snapshot(root, tmp_path / "snap")
    assert sorted(tree(snap.path)) == [".gitmodules", "main.txt", "nested/n.txt", "vendor/lib/.gitignore",
                                       "vendor/lib/lib.txt", "vendor/lib/local.txt"]
    assert not (snap.path / "vendor" / "lib" / ".git").exists()
    assert not (snap.path / "nested" / ".git").exists()


def test_repo_root_below_git_top_level(tmp_path: Path) -> None:
    top = init_repo(tmp_path / "top", {"outside.txt": "o\n", "proj/in.txt": "i\n"})
    (top / "proj" / "new.txt").write_text("n\n")
    snap = make_snapshot(top / "proj", tmp_path / "snap")
    assert sorted(tree(snap.path)) == ["in.txt", "new.txt"]
    assert snap.is_git


def test_a_worktree_whose_git_is_a_file_is_git_aware(git_repo: Path, tmp_path: Path) -> None:
    git(git_repo, "worktree", "add", "-q", str(tmp_path / "wt"))
    assert (tmp_path / "wt" / ".git").is_file()
    (tmp_path / "wt" / "debug.log").write_text("ignored\n")
    snap = make_snapshot(tmp_path / "wt", tmp_path / "snap")
    assert snap.is_git and snap.head_sha == git(git_repo, "rev-parse", "HEAD").strip()
    assert "debug.log" not in tree(snap.path) and "README.md" in tree(snap.path)


def test_non_git_folder_copies_everything_but_the_runtime(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / ".loom" / ".runtime" / "workspaces" / "old").mkdir(parents=True)
    (root / ".loom" / ".runtime" / "workspaces" / "old" / "f").write_text("old snapshot\n")
    (root / ".loom" / "workflow.yml").write_text("version: v1\n")
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "sub" / "x.log").write_text("kept: no .gitignore applies outside git\n")
    (root / ".gitignore").write_text("*.log\n")
    (root / "tool").write_text("#!/bin/sh\n")
    os.chmod(root / "tool", 0o750)
    os.symlink("../tool", root / "sub" / "tool-link")
    before = tree(root)
    snap = make_snapshot(root, root / ".loom" / ".runtime" / "workspaces" / "run-1")
    assert sorted(tree(snap.path)) == [".gitignore", ".loom/workflow.yml", "sub/tool-link", "sub/x.log", "tool"]
    assert (snap.path / "sub" / "empty").is_dir()
    assert not (snap.path / ".loom" / ".runtime").exists()
    assert _mode(snap.path / "tool") == 0o750
    assert os.readlink(snap.path / "sub" / "tool-link") == "../tool"
    assert (snap.is_git, snap.head_sha, snap.branch, snap.files) == (False, None, None, 5)
    assert {k: v for k, v in tree(root).items() if "/workspaces/run-1/" not in k} == before


def test_git_runtime_is_never_copied_even_when_tracked(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "repo", {"a.txt": "a\n", ".loom/.runtime/tracked.json": "{}\n"})
    snap = make_snapshot(root, root / ".loom" / ".runtime" / "workspaces" / "r")
    assert sorted(tree(snap.path)) == ["a.txt"]


def test_destination_must_be_new_or_empty(git_repo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    dest.mkdir()
    make_snapshot(git_repo, dest)
    with pytest.raises(LoomError, match="already exists and is not empty"):
        make_snapshot(git_repo, dest)


def test_many_files_take_the_threaded_path(tmp_path: Path) -> None:
    files = {f"d{i % 7}/f{i}.txt": f"content {i}\n" * (i % 5) for i in range(600)}
    root = init_repo(tmp_path / "repo", files)
    snap = make_snapshot(root, tmp_path / "snap")
    got = tree(snap.path)
    assert {k: v[1].decode() for k, v in got.items() if isinstance(v[1], bytes)} == files
    assert snap.files == 600


def test_remove_snapshot_handles_read_only_folders_and_outside_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    os.chmod(outside, 0o555)
    snap = tmp_path / "snap"
    (snap / "a" / "b").mkdir(parents=True)
    (snap / "a" / "b" / "f").write_text("x")
    os.symlink(outside, snap / "a" / "link")
    os.chmod(snap / "a" / "b", 0o500)
    os.chmod(snap / "a", 0o500)
    try:
        remove_snapshot(snap)
        assert not snap.exists()
        assert _mode(outside) == 0o555  # a link out of the snapshot is never followed
        assert (outside / "keep.txt").exists()
        remove_snapshot(snap)  # already gone: nothing to do
    finally:
        os.chmod(outside, 0o755)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A folder any user can enter (tmp_path's parents are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="loom-ws-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def _snapshot_as_nobody(src: Path, dest: Path) -> tuple[int, str]:
    """make_snapshot in a forked child that dropped root (root reads every file): (exit code, message)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                make_snapshot(src, dest)
                code = 0
            except LoomError as exc:
                os.write(write_fd, exc.message.encode())
                code = 3
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), message


def test_unreadable_file_is_a_clear_error(world_dir: Path) -> None:
    src = world_dir / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.txt").write_text("ok\n")
    (src / "sub" / "secret.txt").write_text("no\n")
    os.chmod(src / "sub" / "secret.txt", 0o000)
    out_dir = world_dir / "out"
    out_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(out_dir, NOBODY, NOBODY)
    code, message = _snapshot_as_nobody(src, out_dir / "snap")
    assert (code, message) == (3, f"cannot snapshot {src / 'sub' / 'secret.txt'}: Permission denied")
    assert not (out_dir / "snap").exists()  # a failed snapshot leaves nothing half-made


def test_unreadable_git_repo_is_a_clear_error(world_dir: Path) -> None:
    """As another user, git refuses the repo (dubious ownership): one line, not a silent plain copy."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run git as another user")  # CI runs as root: counted as failure there
    src = init_repo(world_dir / "repo", {"a.txt": "a\n"})
    out_dir = world_dir / "out"
    out_dir.mkdir()
    os.chown(out_dir, NOBODY, NOBODY)
    code, message = _snapshot_as_nobody(src, out_dir / "snap")
    assert code == 3
    assert message.startswith(f"cannot read git repository {src}: ")
    assert "dubious ownership" in message


def test_git_asked_early_answers_as_git_asked_then_and_leaves_no_process(git_repo: Path, tmp_path: Path) -> None:
    """GitPrefetch (a run's `load` starts the git processes of `configure` and `snapshot`): the
    same facts and the same snapshot as asking then, whether the caller passes the repo's path as
    given or resolved; every process is reaped once taken."""
    from loomrun.workspace import GitPrefetch, git_facts

    git(git_repo, "tag", "v1.0")
    plain = make_snapshot(git_repo, tmp_path / "plain")
    early = GitPrefetch.of(git_repo)
    assert early is not None
    early.start()
    assert sorted(early.procs) and len(git_children()) == 3
    facts = git_facts(git_repo, early)
    assert facts == git_facts(git_repo) and facts is not None and facts.tag == "v1.0"
    snap = make_snapshot(git_repo / "src" / "..", tmp_path / "early", facts, early)  # resolved there
    assert early.procs == {} and git_children() == []  # all three taken, each reaped
    assert tree(snap.path) == tree(plain.path)
    assert (snap.head_sha, snap.branch) == (plain.head_sha, plain.branch)


def test_git_asked_early_but_never_taken_is_killed_and_reaped(tmp_path: Path) -> None:
    """A run that ends before its snapshot (a workflow that does not load, `workflow.rules`), or a
    repo without commits (no for-each-ref): `close` leaves no process, not even a zombie."""
    from loomrun.workspace import GitPrefetch, git_facts

    root = init_repo(tmp_path / "repo", {"a.txt": "a\n"}, commit=False)
    early = GitPrefetch.of(root)
    assert early is not None
    early.start()
    facts = git_facts(root, early)  # no commit yet: the branch comes from symbolic-ref instead
    assert facts is not None and (facts.head_sha, facts.branch) == (None, "main")
    assert len(early.procs) == 2  # for-each-ref and ls-files, not taken
    early.close()
    assert early.procs == {} and git_children() == []
    assert GitPrefetch.of(tmp_path) is None  # not a git work tree: nothing is started
