"""Model versions on disk: `<model_dir>/<name>/<version>/` with weights, meta and vocabulary.

A version directory holds `model.safetensors`, `meta.json` and `vocab.json`. It is built in a
hidden temp directory next to the versions and renamed into place, so readers only ever see
complete versions. Loading reads safetensors and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import nonfinite
from models.json_values import json_safe
from models.lm import ARCHS, RNNLM, ModelConfig
from models.tokenizer import Tokenizer

# Use fullmatch: with match, `$` would also accept a trailing newline ("lstm\n").
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Canonical decimal only (no sign, no leading zero), so a ref maps to exactly one directory.
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")
TEMP_PREFIX = ".tmp-"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
VOCAB_FILE = "vocab.json"
STORE_FORMAT = 1
_MAX_RENAME_TRIES = 1000  # concurrent writers racing for numbers; bounded so it cannot spin
# The decoder weight is the embedding weight when tied; safetensors refuses shared tensors.
_TIED_KEY = "decoder.weight"
_TIED_SOURCE = "embedding.weight"
_REQUIRED_META: dict[str, type | tuple[type, ...]] = {
    "arch": str,
    "vocab_size": int,
    "embedding_size": int,
    "hidden_size": int,
    "num_layers": int,
    "dropout": (int, float),
    "tied": bool,
}


class StoreError(Exception):
    """A stored version is missing or broken; the message names the path and the problem."""


class ModelNotFoundError(StoreError, LookupError):
    """The name or version does not exist in the store."""


# eq=False: hashed and compared by identity, so one loaded version is one batching key (two
# loads of the same name@version, a version rewritten on disk, are two keys).
@dataclass(frozen=True, eq=False)
class LoadedModel:
    name: str
    version: int
    path: Path
    meta: dict[str, Any]
    config: ModelConfig
    model: RNNLM
    tokenizer: Tokenizer


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`"name"` -> (name, None); `"name@3"` -> (name, 3). Anything else raises ValueError.

    Versions are canonical decimals of at most 9 digits: `a@0`, `a@01`, `a@+1`, `a@` are
    rejected, so every accepted ref names exactly one directory.
    """
    if not isinstance(ref, str):
        raise ValueError(f"model reference must be a string, got {type(ref).__name__}")
    name, sep, version = ref.partition("@")
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: must match {NAME_RE.pattern}")
    if not sep:
        return name, None
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"invalid version {version!r} in {ref!r}: expected an integer >= 1")
    return name, int(version)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: must match {NAME_RE.pattern}")


def list_versions(model_dir: str | os.PathLike[str], name: str) -> list[int]:
    """Complete versions of `name`, ascending; temp and non-integer entries are ignored."""
    _check_name(name)
    base = Path(model_dir) / name
    try:
        entries = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        int(e.name)
        for e in entries
        if _VERSION_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    )


def _name_dirs(model_dir: str | os.PathLike[str]) -> list[str]:
    # Every valid name directory, including those with no complete version yet.
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if NAME_RE.fullmatch(e.name) and e.is_dir())


def list_names(model_dir: str | os.PathLike[str]) -> list[str]:
    """Names with at least one complete version, sorted."""
    return [n for n in _name_dirs(model_dir) if list_versions(model_dir, n)]


# Modes of what the store writes, whatever the writer's umask: a version written by one user
# (a trainer, an importer) must be readable by a server run as another (the image's user).
FILE_MODE = 0o644
DIR_MODE = 0o755


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, FILE_MODE)


def _make_dirs(path: Path) -> None:
    """mkdir -p, each directory it creates made DIR_MODE whatever the umask."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:  # another writer made it in the meantime: theirs to set
        return
    os.chmod(path, DIR_MODE)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dump_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def _weights_to_save(model: RNNLM) -> dict[str, torch.Tensor]:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tied:
        state.pop(_TIED_KEY)
    return state


def save_version(
    model_dir: str | os.PathLike[str],
    name: str,
    model: RNNLM,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
) -> int:
    """Write a new version of `name` and return its number (1, 2, ...).

    `meta.json` is the caller's `meta` plus what the store knows (architecture, sizes, params,
    torch version, created_at, name, version); the store's keys win on conflict. Either the
    complete version appears or nothing visible does.
    """
    _check_name(name)
    cfg = model.cfg
    if len(tokenizer.vocab) != cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer.vocab)} words but the model's vocab_size is "
            f"{cfg.vocab_size}"
        )
    record: dict[str, Any] = json_safe(dict(meta or {}))
    record.update(cfg.to_dict())
    record.update(
        params=model.num_params(),
        torch_version=torch.__version__,
        created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        name=name,
        store_format=STORE_FORMAT,
    )
    if hasattr(tokenizer, "lowercase"):
        record["lowercase"] = bool(tokenizer.lowercase)
    _dump_json(record)  # fail on unserialisable meta before touching the disk
    vocab_bytes = _dump_json(tokenizer.to_dict())

    base = Path(model_dir) / name
    _make_dirs(base)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base))
    try:
        # mkdtemp makes it private (0700), and safetensors writes its file 0600.
        os.chmod(tmp, DIR_MODE)
        save_file(_weights_to_save(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        os.chmod(tmp / WEIGHTS_FILE, FILE_MODE)
        fsync_path(tmp / WEIGHTS_FILE)
        _write_bytes(tmp / VOCAB_FILE, vocab_bytes)
        candidate = 0
        for _ in range(_MAX_RENAME_TRIES):
            existing = list_versions(model_dir, name)
            candidate = max(existing[-1] + 1 if existing else 1, candidate + 1)
            record["version"] = candidate
            # Rewritten on each try: the version inside must match the directory it lands in.
            _write_bytes(tmp / META_FILE, _dump_json(record))
            fsync_path(tmp)
            target = base / str(candidate)
            try:
                os.rename(tmp, target)
            except OSError as e:
                # Another writer took this number first (rename onto a non-empty directory
                # fails): take the next one.
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR) or target.exists():
                    continue
                raise
            break
        else:
            raise StoreError(f"{base}: no free version number after {_MAX_RENAME_TRIES} tries")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(base)
    return candidate


def write_version(
    model_dir: str | os.PathLike[str],
    name: str,
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
) -> int:
    """Write a new version from a config and its weights (`RNNLM`'s state_dict keys; a tied
    model may leave out `decoder.weight`); returns its number.

    The entry point for tools that produce a model outside Gatehouse's trainer (the importers
    in `models.interop`): the weights are checked against the config exactly as loading will
    check them, so what is written is what the server will serve.
    """
    _check_name(name)
    tensors = dict(weights)
    if config.tied and _TIED_KEY in tensors:
        if not torch.equal(tensors[_TIED_KEY], tensors.get(_TIED_SOURCE, torch.empty(0))):
            raise StoreError(f"weights for {name!r}: tied, but {_TIED_KEY!r} differs")
        del tensors[_TIED_KEY]
    tensors = _check_weights(f"weights for {name!r}", tensors, config)
    model = RNNLM(config)
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return save_version(model_dir, name, model.eval(), tokenizer, meta)


def cleanup_temp(model_dir: str | os.PathLike[str], min_age_s: float = 3600.0) -> list[Path]:
    """Remove temp directories left by crashed writers; returns what was removed.

    Only directories untouched for `min_age_s` go, so a save in progress in another process
    is left alone.
    """
    removed: list[Path] = []
    now = time.time()
    for name in _name_dirs(model_dir):
        try:
            entries = list(os.scandir(Path(model_dir) / name))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:  # its writer finished or another sweeper got it
                continue
            if age < min_age_s:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: unreadable: {e}") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise StoreError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _version_dir(model_dir: str | os.PathLike[str], name: str, version: int) -> Path:
    _check_name(name)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}")
    path = Path(model_dir) / name / str(version)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path}: no version {version} of model {name!r}")
    return path


def _validate_meta(path: Path, meta: dict[str, Any]) -> None:
    for key, kind in _REQUIRED_META.items():
        if key not in meta:
            raise StoreError(f"{path}: missing key {key!r}")
        value = meta[key]
        # bool is an int subclass: a `true` vocab_size must not pass as 1.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise StoreError(f"{path}: {key!r} has the wrong type ({type(value).__name__})")
    if meta["arch"] not in ARCHS:
        raise StoreError(f"{path}: unknown arch {meta['arch']!r}")


def read_meta(model_dir: str | os.PathLike[str], name: str, version: int) -> dict[str, Any]:
    """meta.json of one version, validated, without touching the weights."""
    path = _version_dir(model_dir, name, version) / META_FILE
    meta = _read_json_object(path)
    _validate_meta(path, meta)
    return meta


def _load_weights(path: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Read and check the weights against the config before any real model is allocated."""
    try:
        tensors = load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise StoreError(f"{path}: unreadable safetensors file: {e}") from e
    return _check_weights(str(path), tensors, config)


def _check_weights(
    where: str, tensors: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    # Shapes from a model on the meta device: no memory, so a lying meta.json cannot make us
    # allocate a huge model before the weights are checked.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in RNNLM(config).state_dict().items()}
    if config.tied:
        if _TIED_KEY in tensors:
            raise StoreError(f"{where}: tied model stores {_TIED_KEY!r} separately")
        if _TIED_SOURCE in tensors:
            tensors[_TIED_KEY] = tensors[_TIED_SOURCE]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise StoreError(
            f"{where}: weights do not match the config: missing {missing}, unexpected {unexpected}"
        )
    for key, shape in expected.items():
        got = tensors[key]
        if tuple(got.shape) != shape:
            raise StoreError(f"{where}: {key!r} has shape {tuple(got.shape)}, config needs {shape}")
        if not got.dtype.is_floating_point:
            raise StoreError(f"{where}: {key!r} has non-float dtype {got.dtype}")
    bad = nonfinite(tensors)
    if bad:
        raise StoreError(f"{where}: non-finite values (NaN or infinity) in {', '.join(bad)}")
    return tensors


def load_version(
    model_dir: str | os.PathLike[str],
    name: str,
    version: int | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load one version (the latest when `version` is None) in eval mode on `device`."""
    if version is None:
        versions = list_versions(model_dir, name)
        if not versions:
            raise ModelNotFoundError(f"{Path(model_dir) / name}: no versions of model {name!r}")
        version = versions[-1]
    path = _version_dir(model_dir, name, version)
    meta = read_meta(model_dir, name, version)
    try:
        config = ModelConfig.from_dict(meta)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{path / META_FILE}: invalid model config: {e}") from e

    vocab_path = path / VOCAB_FILE
    try:
        tokenizer = Tokenizer.from_dict(_read_json_object(vocab_path))
    except StoreError:
        raise
    except Exception as e:  # whatever a malformed vocabulary makes from_dict raise
        raise StoreError(f"{vocab_path}: invalid vocabulary: {e}") from e
    if len(tokenizer.vocab) != config.vocab_size:
        raise StoreError(
            f"{vocab_path}: {len(tokenizer.vocab)} words, but meta.json says vocab_size "
            f"{config.vocab_size}"
        )

    tensors = _load_weights(path / WEIGHTS_FILE, config)
    model = RNNLM(config)
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return LoadedModel(name, version, path, meta, config, model, tokenizer)
