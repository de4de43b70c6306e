"""`python -m service`: settings from flags and GATEHOUSE_* env vars, then the server."""

from __future__ import annotations

import sys

from .exposure import hide_key_from_title
from .server import serve
from .settings import parse_args


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    if argv is None:  # the real command line: what ps shows
        hide_key_from_title()
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
