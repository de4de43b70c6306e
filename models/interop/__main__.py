"""`python -m models.interop import ...` / `python -m models.interop export ...`."""

from __future__ import annotations

import sys

from .cli import export_main, import_main

_USAGE = "usage: python -m models.interop {import,export} ..."


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("import", "export"):
        print(_USAGE, file=sys.stderr)
        return 2
    entry = import_main if argv[0] == "import" else export_main
    return entry(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
