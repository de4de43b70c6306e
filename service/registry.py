"""The model registry: which versions are loaded, how a `name[@version]` resolves, hot pick-up.

Readers never lock: the table of latest versions is replaced whole (one assignment), so an
in-flight request keeps the `LoadedModel` it resolved even while a newer version takes over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from models import store
from models.store import LoadedModel, StoreError

from . import metrics
from .errors import ApiError
from .redact import version_message

log = logging.getLogger("gatehouse.registry")

# Older versions asked for by `name@N` stay loaded in a small LRU: pinned versions are cheap
# to serve again, but a client walking every version must not fill memory.
_EXTRA_VERSIONS = 4


@dataclass(frozen=True)
class _Failure:
    stamp: float  # mtime of the version dir when it failed: a rewrite earns another try
    reason: str  # told without host paths: it goes to clients


def _failed_to_load(name: str, reasons: list[tuple[int, str]], what: str = "model") -> ApiError:
    """503 for a name none of whose versions loaded: each version's reason, newest first."""
    told = "; ".join(reason for _, reason in reasons[::-1])
    return ApiError(
        503,
        f"{what} {name!r} failed to load: {told}",
        detail=[{"version": v, "error": reason} for v, reason in reasons],
    )


class ModelRegistry:
    def __init__(self, model_dir: Path, device: str, default_model: str) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.default_name = default_model
        self._latest: dict[str, LoadedModel] = {}
        self._extra: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._lock = threading.Lock()  # one loader at a time; readers never take it
        self.on_load: list = []  # callables(LoadedModel) run after a version is loaded

    # ---- reading ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return bool(self._latest)

    def loaded(self) -> list[LoadedModel]:
        return [self._latest[n] for n in sorted(self._latest)]

    def default(self) -> LoadedModel | None:
        """The default model; another one only when the store has no such name at all.

        A default whose versions all failed to load is no default to stand in for: the
        requests that name no model fail with the reason (`resolve`) instead.
        """
        latest = self._latest
        if self.default_name in latest:
            return latest[self.default_name]
        if self.broken(self.default_name):
            return None
        return latest[min(latest)] if latest else None

    def is_default(self, name: str) -> bool:
        d = self.default()
        return d is not None and d.name == name

    def failure(self, name: str, version: int) -> str | None:
        f = self._failures.get((name, version))
        return f.reason if f else None

    def broken(self, name: str) -> list[tuple[int, str]]:
        """(version, reason) of each version of `name` that failed to load, ascending."""
        return sorted((v, f.reason) for (n, v), f in list(self._failures.items()) if n == name)

    def broken_names(self) -> dict[str, list[tuple[int, str]]]:
        """Names in the store with no loadable version: what failed for each."""
        latest = self._latest
        names = {n for n, _ in list(self._failures)}
        return {n: self.broken(n) for n in sorted(names) if n not in latest}

    def resolve(self, ref: str | None) -> LoadedModel:
        """`None` (default model), `name` (latest) or `name@version`; 404 when unknown."""
        if ref is None:
            found = self.default()
            if found is None:
                reasons = self.broken(self.default_name)
                if reasons and self.default_name not in self._latest:
                    raise _failed_to_load(self.default_name, reasons, "the default model")
                raise ApiError(503, "no model is loaded yet", headers={"Retry-After": "5"})
            return found
        try:
            name, version = store.parse_ref(ref)
        except ValueError as e:
            raise ApiError(422, str(e)) from e
        latest = self._latest.get(name)
        if version is None or (latest is not None and latest.version == version):
            if latest is None:
                reasons = self.broken(name)
                if reasons:
                    raise _failed_to_load(name, reasons)
                raise ApiError(404, f"unknown model {name!r}")
            return latest
        return self._load_pinned(name, version)

    def _load_pinned(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        found = self._extra.get(key)
        if found is not None:
            self._extra.move_to_end(key)
            return found
        if version not in store.list_versions(self.model_dir, name):
            raise ApiError(404, f"unknown model version {name}@{version}")
        with self._lock:
            found = self._extra.get(key) or self._load(name, version, latest=False)
        if found is None:
            reason = self.failure(name, version) or "unreadable"
            raise ApiError(503, f"model {name}@{version} failed to load: {reason}")
        self._extra[key] = found
        while len(self._extra) > _EXTRA_VERSIONS:
            self._extra.popitem(last=False)
        return found

    # ---- loading ---------------------------------------------------------------------
    def _load(self, name: str, version: int, latest: bool = True) -> LoadedModel | None:
        path = self.model_dir / name / str(version)
        try:
            stamp = path.stat().st_mtime
        except OSError:
            return None
        failed = self._failures.get((name, version))
        if failed is not None and failed.stamp == stamp:
            return None
        start = time.perf_counter()
        try:
            loaded = store.load_version(self.model_dir, name, version, device=self.device)
        except (StoreError, OSError, RuntimeError, ValueError) as e:
            told = version_message(str(e), self.model_dir, name, version)
            self._failures[(name, version)] = _Failure(stamp, told)
            log.error("skipping broken model version %s@%s: %s", name, version, e)
            metrics.model_load_failed(name, "corrupt")
            return None
        seconds = time.perf_counter() - start
        self._failures.pop((name, version), None)
        for hook in self.on_load:
            hook(loaded)
        log.info(
            "loaded model %s@%s (%s, %s params) on %s in %.2fs",
            name,
            version,
            loaded.config.arch,
            loaded.model.num_params(),
            self.device,
            seconds,
        )
        if latest:
            params = loaded.model.num_params()
            metrics.model_loaded(name, loaded.config.arch, version, self.device, params, seconds)
        return loaded

    def refresh(self) -> list[LoadedModel]:
        """Load what is new in the store: the newest loadable version of each name.

        Blocking (disk and torch work): call it from a thread, not the event loop.
        """
        new: list[LoadedModel] = []
        with self._lock:
            latest = dict(self._latest)
            names = store.list_names(self.model_dir) if self.model_dir.is_dir() else []
            on_disk = {name: store.list_versions(self.model_dir, name) for name in names}
            # A broken version removed from the store is no longer a failure to report.
            for key in [k for k in self._failures if k[1] not in on_disk.get(k[0], ())]:
                del self._failures[key]
            for name in names:
                current = latest.get(name)
                for version in reversed(on_disk[name]):
                    if current is not None and version <= current.version:
                        break
                    loaded = self._load(name, version)
                    if loaded is not None:
                        latest[name] = loaded
                        new.append(loaded)
                        break
            for name in [n for n in latest if n not in names]:
                log.warning("model %s disappeared from the store; no longer served", name)
                del latest[name]
                metrics.model_unloaded(name)
            self._latest = latest  # one assignment: readers see the old table or the new
        return new

    def has_models_on_disk(self) -> bool:
        return bool(self.model_dir.is_dir() and store.list_names(self.model_dir))

    def versions(self, name: str) -> list[int]:
        return store.list_versions(self.model_dir, name)
