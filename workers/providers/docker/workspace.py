"""The job's workspace on the engine: seeding the `ephemeral_volume`, copying trees in (caches,
artifacts) and files out (artifacts, caches, output fingerprints). Worker process.

On a local engine the volume is seeded from inside the container (`seed_by_copy`: one `cp -a` from
the snapshot bind-mounted read-only at `SEED_DIR`); `put_archive` stays the way for a remote engine
or an image that cannot copy. In `bind_mount` mode the workspace is the host folder itself.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docker.errors import APIError, DockerException, NotFound

from loomrun.globs import EMPTY_DIRS, check_pattern, match_paths
from loomrun.oserror import describe
from workers.providers.base import JobContext, ProviderError
from workers.providers.docker.engine import CHUNK, WORKDIR, reason
from workers.trees import copy_into, copy_paths

if TYPE_CHECKING:
    from workers.providers.docker.session import Session

SEED_DIR = "/.loom-seed"  # ephemeral_volume on a local engine: the snapshot, read-only, to copy from
GLOB_CHARS = frozenset("*?[")


# ---- seeding the ephemeral volume ------------------------------------------------------------


def seed_by_copy(api: Any, ctx: JobContext, session: Session) -> None:
    """Seed the volume from inside the container: the snapshot is bind-mounted read-only at
    `SEED_DIR` and one `cp -a` goes through the container's shell. `put_archive` makes dockerd
    untar through a chrooted helper: ~40 ms for a tiny workspace, and 4x a `tar | tar` for a
    200 MB one (measured). An image without `cp`, or a user who may not write /workspace, gets
    `put_archive` after all."""
    code, output = session.call(f"cp -a {SEED_DIR}/. {WORKDIR}/")
    if code != 0:
        if ctx.log is not None:
            ctx.log.line(f"seeding with cp failed (exit {code}: {output.strip()[:200]}); using put_archive")
        seed(api, ctx)


def seed(api: Any, ctx: JobContext) -> None:
    """Copy the workspace into the volume through the engine's archive API."""
    try:
        api.put_archive(ctx.state["container"], WORKDIR, tar_stream(ctx.workspace))
    except (APIError, DockerException) as exc:
        raise ProviderError(f"cannot seed the workspace volume: {reason(exc)}") from exc


# ---- trees in and out ------------------------------------------------------------------------


def import_into_volume(api: Any, ctx: JobContext, src: Path) -> None:
    """The engine untars onto /workspace: whatever is at a path of the tree is replaced (a folder
    onto a folder merges), links are written as links."""
    try:
        api.put_archive(ctx.state["container"], WORKDIR, tar_stream(src))
    except (APIError, DockerException) as exc:
        raise ProviderError(f"cannot restore into the job's workspace: {reason(exc)}") from exc


def import_into_folder(ctx: JobContext, src: Path) -> None:
    try:
        copy_into(src, ctx.workspace)
    except OSError as exc:  # paths relative to either tree: the source is deep in .loom/.runtime
        raise ProviderError(f"cannot restore into the job's workspace: {describe(exc, ctx.workspace, src)}") from exc


def export_from_folder(ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str], dest: Path) -> list[str]:
    try:
        return copy_paths(ctx.workspace, _matches(ctx.workspace, patterns, exclude), dest)[0]
    except OSError as exc:
        why = describe(exc, ctx.workspace, dest)
        raise ProviderError(f"cannot copy files out of the job's workspace: {why}") from exc


def export_from_volume(api: Any, ctx: JobContext, patterns: Sequence[str], exclude: Sequence[str],
                       dest: Path) -> list[str]:
    if not patterns:
        return []
    tops = _top_components(patterns)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".loom-export-") as tmp:
        root = Path(tmp) / "workspace"
        try:
            _fetch_workspace(api, ctx.state["container"], tops, Path(tmp), root)
        except (APIError, DockerException, tarfile.TarError) as exc:
            raise ProviderError(f"cannot copy files out of the job's workspace: {reason(exc)}") from exc
        found = _matches(root, patterns, exclude)
        for rel in found:  # a fresh staging folder: nothing to replace, so a rename will do
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / rel, dest / rel)
    return found


def _fetch_workspace(api: Any, cid: str, tops: list[str] | None, tmp: Path, root: Path) -> None:
    """Extract the part of /workspace the patterns can reach into `root` (all of it when unknown)."""
    if tops is None:
        _fetch(api, cid, WORKDIR, tmp)
        root.mkdir(exist_ok=True)
        return
    root.mkdir()
    for top in tops:
        _fetch(api, cid, f"{WORKDIR}/{top}", root)


# ---- archives --------------------------------------------------------------------------------

def tar_stream(src: Path) -> Iterator[bytes]:
    """The contents of `src` as a tar stream (GNU tar: several times faster than `tarfile` here)."""
    proc = subprocess.Popen(
        ["tar", "-C", str(src), "--numeric-owner", "-cf", "-", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := proc.stdout.read(CHUNK):
            yield chunk
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        if proc.wait() != 0:
            raise ProviderError(f"could not archive {src}: {err.splitlines()[0] if err else 'tar failed'}")


class _ChunkReader:
    """A read()-able view of the SDK's chunk iterator, for `tarfile` in stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        if size < 0:
            size = len(self._buf)
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


def _fetch(api: Any, container: str, path: str, into: Path) -> bool:
    """Extract `path` of the container (a file or folder, named by its basename) into `into`."""
    try:
        chunks, _stat = api.get_archive(container, path, chunk_size=CHUNK)
    except NotFound:
        return False
    with tarfile.open(fileobj=_ChunkReader(iter(chunks)), mode="r|") as archive:  # type: ignore[call-overload]
        archive.extractall(into, filter=_files_links_folders)
    return True


def _files_links_folders(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's `tar` filter, and no named pipes, devices or sockets (not even in a temporary folder)."""
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return None
    return tarfile.tar_filter(member, dest)


def _top_components(patterns: Sequence[str]) -> list[str] | None:
    """First path parts the patterns can match under, or None when one starts with a wildcard."""
    tops: set[str] = set()
    for pattern in patterns:
        first = check_pattern(pattern).split("/", 1)[0]
        if first in (".", "") or GLOB_CHARS & set(first):
            return None
        tops.add(first)
    return sorted(tops)


def _matches(root: Path, patterns: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Files and links the patterns match, and the empty folders they name or hold (the host
    provider's rule, `loomrun.globs`), but no named pipe, device or socket: they are no artifact,
    and a named pipe blocks whoever reads it next (the writer hashing it)."""
    return [rel for rel in match_paths(root, patterns, exclude, dirs=EMPTY_DIRS) if _copyable(root / rel)]


def _copyable(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)
