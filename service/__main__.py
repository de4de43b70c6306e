"""`python -m service`: settings from flags and GATEHOUSE_* env vars, then the server."""

from __future__ import annotations

import sys

from .server import serve
from .settings import parse_args


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
