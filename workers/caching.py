"""The job's cache phases: `cache_restore` before the steps, `cache_save` after. Worker process.

Keys are computed from the job's variables and the run snapshot; a restore goes straight into the
workspace for host and bind-mounted jobs, or through a staging folder and the provider otherwise.
The cache store lives outside `logs/` and `receipts/`, so the worker writes it itself.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loomrun.cache.keys import CacheKeyError, compute_key, expand_fallbacks
from loomrun.cache.policy import restores, saves
from loomrun.cache.store import CacheStore
from loomrun.cache.unpack import CacheEntryError
from loomrun.errors import LoomError
from loomrun.protocol.messages import PROVIDER_ERROR
from loomrun.workflow.model import CacheSpec
from workers.providers.base import JobContext, Provider, workspace_is_local
from workers.report import OpenSection, Reporter, SectionFailed


@dataclass
class ResolvedCache:
    spec: CacheSpec
    key: str
    fallbacks: list[str]

    @property
    def label(self) -> str:
        return self.spec.name or "default"


class JobCaches:
    def __init__(self, ctx: JobContext, provider: Provider, rep: Reporter, runtime_dir: Path,
                 head_sha: str) -> None:
        self.ctx = ctx
        self.provider = provider
        self.rep = rep
        self.store = CacheStore(runtime_dir / "cache")
        self.head_sha = head_sha
        self.staging_root = runtime_dir / "tmp" / ctx.run_id / "cache" / ctx.job.name
        self.hits: list[str] = []
        self.caches = [c for c in ctx.job.caches if not c.disabled and c.paths]

    @property
    def direct(self) -> bool:
        """True when the job's workspace is the host snapshot itself."""
        return workspace_is_local(self.provider, self.ctx.job, self.ctx.mount_mode)

    def _resolve(self, spec: CacheSpec, sec: OpenSection) -> ResolvedCache | None:
        ids: dict[str, Any] = {"job_name": self.ctx.job.name, "job_id": self.ctx.job.name,
                               "run_id": self.ctx.run_id, "pipeline_id": self.ctx.pipeline_id,
                               "head_sha": self.head_sha}
        try:
            key, warnings = compute_key(spec, variables=self.ctx.env, workspace=self.ctx.workspace, **ids)
            fallbacks, more = expand_fallbacks(spec, primary=key, variables=self.ctx.env, **ids)
        except CacheKeyError as exc:
            sec.line(f"cache {spec.name or 'default'}: unusable key: {exc}", "stderr")
            return None
        for warning in [*warnings, *more]:
            sec.line(f"warning: {warning}", "stderr")
        return ResolvedCache(spec, key, fallbacks)

    # -- restore -------------------------------------------------------------------------------
    def restore(self) -> None:
        wanted = [c for c in self.caches if restores(c)]
        if not wanted:
            return
        with self.rep.phase("job.cache_restore"), self.rep.section("cache_restore") as sec:
            results = []
            for spec in wanted:
                cache = self._resolve(spec, sec)
                if cache is not None:
                    results.append(self._restore_one(cache, sec))
            sec.details["caches"] = results

    def _restore_one(self, cache: ResolvedCache, sec: OpenSection) -> dict[str, Any]:
        target = self.ctx.workspace if self.direct else Path(tempfile.mkdtemp(prefix="restore-",
                                                                              dir=self._staging()))
        try:
            res = self.store.restore([cache.key, *cache.fallbacks], target)
        except (LoomError, OSError) as exc:  # an unreadable quarantine list, a full disk mid-restore
            message = exc.message if isinstance(exc, LoomError) else f"{exc.strerror or exc} ({exc.filename})"
            raise SectionFailed(f"cache {cache.label}: cannot restore: {message}", PROVIDER_ERROR,
                                "LOOM_CACHE_RESTORE") from exc
        if res.hit and not self.direct:
            self.provider.import_tree(self.ctx, target)
        if not self.direct:
            shutil.rmtree(target, ignore_errors=True)
        for key in res.quarantined:
            sec.line(f"cache {cache.label}: {key} is quarantined; not restored")
            self.rep.notice(f"cache {key}: quarantined")
        for why in res.refused:
            sec.line(f"cache {cache.label}: refused {why}", "stderr")
        if res.hit:
            assert res.key is not None
            self.hits.append(res.key)
            how = "hit" if res.status == "hit" else f"fallback hit ({res.key})"
            sec.line(f"cache {cache.label}: {how}, {res.files} files, {res.total_size} bytes")
            self.rep.notice(f"cache {res.key}: {how}")
        else:
            sec.line(f"cache {cache.label}: miss ({cache.key})")
            self.rep.notice(f"cache {cache.key}: miss")
        doc = res.as_dict()
        doc.update({"name": cache.label, "primary_key": cache.key,
                    "duration_ms": int(res.duration_s * 1000)})
        doc.pop("duration_s", None)
        return doc

    # -- save ----------------------------------------------------------------------------------
    def save(self, status: str) -> None:
        wanted = [c for c in self.caches if saves(c, status == "success")]
        if not wanted:
            return
        with self.rep.phase("job.cache_save"), self.rep.section("cache_save") as sec:
            results = []
            for spec in wanted:
                cache = self._resolve(spec, sec)
                if cache is None:
                    continue
                source = self.ctx.workspace
                if not self.direct:
                    source = Path(tempfile.mkdtemp(prefix="save-", dir=self._staging()))
                    self.provider.export_paths(self.ctx, spec.paths, (), source)
                try:
                    res = self.store.save(cache.key, source, spec.paths, source_run=self.ctx.run_id)
                except CacheEntryError as exc:
                    raise SectionFailed(f"cache {cache.label}: cannot save {cache.key}: {exc}",
                                        PROVIDER_ERROR, "LOOM_CACHE_SAVE") from exc
                finally:
                    if not self.direct:
                        shutil.rmtree(source, ignore_errors=True)
                sec.line(f"cache {cache.label}: saved {cache.key}, {res.files} files, "
                         f"{res.total_size} bytes ({res.archive_size} compressed)")
                for warning in res.warnings:
                    sec.line(f"warning: {warning}", "stderr")
                doc = res.as_dict()
                doc.update({"name": cache.label, "duration_ms": int(res.duration_s * 1000)})
                doc.pop("duration_s", None)
                results.append(doc)
            sec.details["caches"] = results

    def _staging(self) -> Path:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        return self.staging_root

