"""docs/configuration.md cannot drift from `Settings`: its table is the generated one, and its
example config file loads without an unknown key or an invalid value."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from service import settings_docs
from service.settings_load import load


def test_table_is_the_generated_one() -> None:
    text = settings_docs.DOC.read_text()
    assert settings_docs.current_block(text) == settings_docs.block(), (
        "docs/configuration.md is out of date: run python -m service.settings_docs --write"
    )


def test_example_config_file_loads_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEHOUSE_"):
            monkeypatch.delenv(name)
    (example,) = re.findall(r"```toml\n(.*?)```", settings_docs.DOC.read_text(), re.S)
    path = tmp_path / "gatehouse.toml"
    path.write_text(example)
    warnings: list[str] = []
    settings = load({}, str(path), warn=warnings.append)
    assert warnings == []
    assert settings.max_batch_size == 32 and settings.protect_inference is True


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text(f"before\n{settings_docs.BEGIN}\nstale\n{settings_docs.END}\nafter\n")
    settings_docs.write(page)
    assert page.read_text() == f"before\n{settings_docs.block()}\nafter\n"
