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

from loomrun.cache.keys import CacheKeyError, compute_key, conceal, conceal_text, fallback_keys
from loomrun.cache.policy import restores, saves
from loomrun.cache.store import CacheStore, SaveResult
from loomrun.cache.unpack import CacheEntryError
from loomrun.errors import LoomError
from loomrun.oserror import describe
from loomrun.protocol.messages import PROVIDER_ERROR
from loomrun.workflow.model import CacheSpec, KeyFiles, KeyPrefix, KeyTemplate
from loomrun.workflow.variables import SECRET_OPEN
from workers.providers.base import JobContext, Provider, ProviderError, workspace_is_local
from workers.report import OpenSection, Reporter, SectionFailed


def fill_secrets(spec: CacheSpec, env: dict[str, str]) -> CacheSpec:
    """The supervisor expanded the key with a placeholder for each job secret it names (it never
    sees their values): put the variable's value there now, before the key is concealed. A secret
    that was not delivered (optional, skipped) expands to nothing, like an unset variable would."""
    def fill(text: str) -> str:
        while (start := text.find(SECRET_OPEN)) >= 0:
            end = text.find("\0", start + len(SECRET_OPEN))
            if end < 0:
                break
            text = text[:start] + env.get(text[start + len(SECRET_OPEN):end], "") + text[end + 1:]
        return text

    key = spec.key
    if isinstance(key, str):
        key = fill(key)
    elif isinstance(key, KeyTemplate):
        key = KeyTemplate(fill(key.template))
    elif isinstance(key, (KeyFiles, KeyPrefix)):
        key = key._replace(prefix=fill(key.prefix))
    return spec._replace(key=key, fallback_keys=tuple(fill(k) for k in spec.fallback_keys))


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
                 head_sha: str, max_size: int | None = None) -> None:
        self.ctx = ctx
        self.max_size = max_size  # runtime.cache.maxSize: the store is bounded after this job's saves
        self.provider = provider
        self.rep = rep
        self.store = CacheStore(runtime_dir / "cache")
        self.head_sha = head_sha
        self.staging_root = runtime_dir / "tmp" / ctx.run_id / "cache" / ctx.job.name
        self.hits: list[str] = []
        self.caches = [c for c in ctx.job.caches if not c.disabled and c.paths]
        self._warned: set[str] = set()

    def _warn(self, sec: OpenSection, text: str) -> None:
        """A warning in the section's events, and on the terminal the first time (a key is resolved
        for the restore and again for the save: its warnings would show twice)."""
        if text in self._warned:
            sec.line(f"warning: {text}", "stderr")
            return
        self._warned.add(text)
        sec.warn(text)

    @property
    def direct(self) -> bool:
        """True when the job's workspace is the host snapshot itself."""
        return workspace_is_local(self.provider, self.ctx.job, self.ctx.mount_mode)

    def _resolve(self, spec: CacheSpec, sec: OpenSection) -> ResolvedCache | None:
        secrets = self.ctx.state.get("secret_values") or ()
        if self.ctx.job.secrets:
            spec = fill_secrets(spec, self.ctx.env)
        try:  # the supervisor expanded the job's keys already
            key, warnings = compute_key(spec, job_name=self.ctx.job.name, workspace=self.ctx.workspace)
            fallbacks, more = fallback_keys(spec, primary=key)
        except CacheKeyError as exc:
            sec.line(f"cache {spec.name or 'default'}: unusable key: {conceal_text(str(exc), secrets)}", "stderr")
            return None
        for warning in [*warnings, *more]:
            self._warn(sec, conceal_text(warning, secrets))
        if secrets:  # spec §7.3: a key holding a secret value is stored and shown under a digest name
            pepper = self.store.pepper
            key, fallbacks = conceal(key, secrets, pepper), [conceal(k, secrets, pepper) for k in fallbacks]
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
            self._warn(sec, f"cache {cache.label}: key {key} is quarantined; not restored "
                            f"(`loom cache release {key}` allows it again)")
            self.rep.notice(f"cache {key}: quarantined")
        for why in res.refused:  # a bad entry is a miss with a warning, never a failed job
            self._warn(sec, f"cache {cache.label}: entry {why}; treated as a miss")
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
                res = self._save_one(cache, sec)
                if res is None:
                    continue
                sec.line(f"cache {cache.label}: saved {cache.key}, {res.files} files, "
                         f"{res.total_size} bytes ({res.archive_size} compressed)")
                for warning in res.warnings:
                    self._warn(sec, warning)
                doc = res.as_dict()
                doc.update({"name": cache.label, "duration_ms": int(res.duration_s * 1000)})
                doc.pop("duration_s", None)
                results.append(doc)
            sec.details["caches"] = results
            if results and self.max_size is not None:
                self._bound(sec)

    def _bound(self, sec: OpenSection) -> None:
        """Spec §13: a save that pushed the store past maxSize evicts the least recently used."""
        assert self.max_size is not None
        try:
            gone, size = self.store.bound(self.max_size)
        except (LoomError, OSError) as exc:  # an unreadable quarantine list: nothing is evicted blind
            why = exc.message if isinstance(exc, LoomError) else describe(exc, self.store.root)
            self._warn(sec, f"cache store not bounded: {why}")
            return
        for entry in gone:
            sec.line(f"cache store over {self.max_size} bytes: evicted {entry.key} ({entry.size} bytes, "
                     f"least recently used)")
        if size > self.max_size:
            self._warn(sec, f"cache store holds {size} bytes, over runtime.cache.maxSize ({self.max_size}): "
                            "what is left is quarantined or in use")
        sec.details["store_size"] = size

    def _save_one(self, cache: ResolvedCache, sec: OpenSection) -> SaveResult | None:
        """Save one cache; a save that cannot be made is skipped with a warning (the job passes)."""
        source = self.ctx.workspace
        try:
            if not self.direct:
                source = Path(tempfile.mkdtemp(prefix="save-", dir=self._staging()))
                self.provider.export_paths(self.ctx, cache.spec.paths, (), source)
            return self.store.save(cache.key, source, cache.spec.paths, source_run=self.ctx.run_id)
        except (CacheEntryError, ProviderError, OSError) as exc:
            why = exc.message if isinstance(exc, ProviderError) else describe(exc, source)
            self._warn(sec, f"cache {cache.label}: not saved under {cache.key}: {why}")
            return None
        finally:
            if not self.direct and source != self.ctx.workspace:
                shutil.rmtree(source, ignore_errors=True)

    def _staging(self) -> Path:
        self.staging_root.mkdir(parents=True, exist_ok=True)
        return self.staging_root

