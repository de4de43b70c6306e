"""`python -m service` and `gatehouse serve`: settings from flags, env and file, then serve."""

from __future__ import annotations

import sys
from pathlib import Path

# `python -m` puts the working directory first on sys.path: a user's own `models.py` there
# would shadow this project's `models` package. The folder holding this package goes first.
_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

from .settings_load import parse_args  # noqa: E402


def other_env_names() -> list[str]:
    """`GATEHOUSE_*` variables read by other settings than `Settings`: not unknown ones."""
    from .jobs.bounds import TrainBounds  # imports torch: only when a name needs checking

    prefix = TrainBounds.model_config.get("env_prefix", "")
    return [prefix.upper() + name.upper() for name in TrainBounds.model_fields]


def main(argv: list[str] | None = None, prog: str = "python -m service") -> int:
    settings = parse_args(argv, prog, other_env_names)
    # Masks a `--api-key` value of this process's own command line (sys.argv), whichever
    # entry point parsed it; without one it does nothing.
    from .exposure import hide_key_from_title

    hide_key_from_title()
    # The server (and torch) load once the settings are known to be good: `--help` and a bad
    # value answer at once. N workers: the supervisor runs N servers (service.server.serve_on).
    if settings.workers > 1:
        from .supervisor import serve_workers

        return serve_workers(settings)
    from .server import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
