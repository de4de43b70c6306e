"""Host paths out of what clients read: error messages name files relative to the model
store or the data directory (`<model-dir>/lstm/3/meta.json`), never where they lie on the
host. The server's log keeps the full paths."""

from __future__ import annotations

from pathlib import Path

from .settings import Settings


def _roots(settings: Settings) -> list[tuple[str, str]]:
    roots: list[tuple[Path, str]] = [(settings.model_dir, "<model-dir>")]
    if settings.data_dir is not None:
        roots.append((settings.data_dir, "<data-dir>"))
    pairs: list[tuple[str, str]] = []
    for path, label in roots:
        for form in {str(path), str(path.expanduser().resolve())}:
            if form not in ("", "/", "."):
                pairs.append((form.rstrip("/"), label))
    home = str(Path.home())
    if home not in ("", "/"):
        pairs.append((home, "~"))
    # Longest first: the model store usually lies inside the home directory.
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def hide_host_paths(text: str, settings: Settings) -> str:
    for root, label in _roots(settings):
        text = text.replace(root, label)
    return text
