"""Named datasets in the operator's data directory: `<name>.txt` files and directories.

A request names a dataset; the name is looked up among the entries this module lists and is
never joined into a path itself, so no request can reach outside the data directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str  # "file" or "dir"
    path: Path
    bytes: int
    files: int
    splits: bool  # a directory with train.txt and valid.txt: used as given, no held-out cut

    def text_files(self) -> list[Path]:
        if self.kind == "file":
            return [self.path]
        return sorted(p for p in self.path.rglob("*.txt") if p.is_file())

    def public(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "bytes": self.bytes,
            "files": self.files,
            "splits": self.splits,
        }


def _dir_dataset(name: str, path: Path) -> Dataset | None:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        return None
    splits = all((path / f).is_file() for f in SPLIT_FILES[:2])
    return Dataset(name, "dir", path, sum(f.stat().st_size for f in files), len(files), splits)


def list_datasets(data_dir: Path | None) -> list[Dataset]:
    """Every usable dataset, by name; an unset or missing directory has none."""
    if data_dir is None:
        return []
    try:
        entries = sorted(os.scandir(data_dir), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    found: dict[str, Dataset] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_file() and entry.name.endswith(".txt"):
                name = entry.name[: -len(".txt")]
                if DATASET_RE.match(name) and name not in found:
                    found[name] = Dataset(name, "file", path, entry.stat().st_size, 1, False)
            elif entry.is_dir() and DATASET_RE.match(entry.name) and entry.name not in found:
                ds = _dir_dataset(entry.name, path)
                if ds is not None:
                    found[entry.name] = ds
        except OSError:
            continue  # unreadable entries are not datasets
    return [found[n] for n in sorted(found)]


def find_dataset(data_dir: Path | None, name: str) -> Dataset | None:
    if not isinstance(name, str) or not DATASET_RE.match(name):
        return None
    return next((d for d in list_datasets(data_dir) if d.name == name), None)
