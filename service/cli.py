"""`gatehouse`: one command for serving, training, evaluating, comparing and moving models.

Each subcommand is the existing entry point it names (`python -m service`, `python -m
models.train`, ...), imported only when chosen, so `gatehouse --version` does not load torch.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Callable
from importlib import import_module, metadata

USAGE = "usage: gatehouse [-h] [--version] COMMAND [ARGS ...]"

# name -> (one-line summary, "module:function" taking argv (and prog where it shows one)).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve the models over HTTP", "service.__main__:main"),
    "worker": ("run training jobs from a shared PostgreSQL job store", "service.jobs.claimer:main"),
    "train": ("train a model and save it as a new version", "models.train.cli:main"),
    "evaluate": ("perplexity of a stored model on a text", "models.evaluate:main"),
    "compare": ("train RNN, LSTM and GRU on one corpus and compare", "models.compare:main"),
    "import": ("bring a model in from another format", "models.interop.cli:import_main"),
    "export": ("write a stored model out to another format", "models.interop.cli:export_main"),
    "models": ("list the store's models and versions", "service.cli:models_main"),
    "version": ("print the version", "service.cli:version_main"),
}
# The entry points that name themselves in --help and errors take the name to show.
_TAKES_PROG = {"serve", "worker", "train", "evaluate", "compare", "models"}


def version_text() -> str:
    def installed(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    python = ".".join(map(str, sys.version_info[:3]))
    return f"gatehouse {installed('gatehouse')} (torch {installed('torch')}, python {python})"


def version_main(argv: list[str]) -> int:
    if argv:
        print(f"gatehouse version: error: takes no arguments, got {argv[0]!r}", file=sys.stderr)
        return 2
    print(version_text())
    return 0


def models_main(argv: list[str], prog: str = "gatehouse models") -> int:
    """The store's models: name, versions, and the newest version's arch and val_ppl."""
    from models import store

    from .settings_load import OneLineParser, SettingsProblem, add_config_flag, load

    p = OneLineParser(prog=prog, description="List the models and versions in the store.")
    p.add_argument("--model-dir", help="the store (default: as `gatehouse serve` would use)")
    add_config_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = p.parse_args(argv)
    flags = {"model_dir": args.model_dir} if args.model_dir else {}
    try:
        model_dir = load(flags, getattr(args, "config", None)).model_dir
    except SettingsProblem as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    rows = []
    for name in store.list_names(model_dir):
        versions = store.list_versions(model_dir, name)
        if not versions:
            continue
        try:
            meta = store.read_meta(model_dir, name, versions[-1])
        except store.StoreError as e:
            meta = {"arch": f"unreadable: {e}"}
        ppl = (meta.get("metrics") or {}).get("val_ppl")
        rows.append({"name": name, "versions": versions, "arch": meta.get("arch"), "val_ppl": ppl})
    if args.json:
        print(json.dumps({"model_dir": str(model_dir), "models": rows}))
        return 0
    print(f"store: {model_dir}")
    if not rows:
        print("no models")
    for r in rows:
        ppl = f"{r['val_ppl']:.2f}" if isinstance(r["val_ppl"], (int, float)) else "-"
        shown = ",".join(map(str, r["versions"]))
        print(f"{r['name']:<20} versions {shown:<12} arch {r['arch']:<6} val_ppl {ppl}")
    return 0


def _entry(command: str) -> Callable[..., int] | None:
    module_name, func = COMMANDS[command][1].split(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as e:
        # Only the entry point's own module may be absent (an optional part); a dependency
        # missing inside it is a real error and keeps its traceback.
        if e.name is None or not module_name.startswith(e.name):
            raise
        return None
    return getattr(module, func)


def help_text() -> str:
    lines = [USAGE, "", "Serve, inspect and train recurrent language models.", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (summary, _) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help  show this help and exit",
        "  --version   print the version and exit",
        "",
        "`gatehouse COMMAND --help` shows a command's flags and their defaults.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return 0 if argv else 2
    if argv[0] == "--version":
        return version_main(argv[1:])
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"gatehouse: error: unknown command {command!r}{hint}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    entry = _entry(command)
    if entry is None:
        print(
            f"gatehouse {command}: error: not available in this installation "
            f"({COMMANDS[command][1].split(':')[0]} is missing)",
            file=sys.stderr,
        )
        return 2
    if command in _TAKES_PROG:
        return entry(rest, prog=f"gatehouse {command}")
    return entry(rest)


def run() -> None:
    """The console script."""
    sys.exit(main())


__all__ = ["COMMANDS", "main", "models_main", "run", "version_main"]


if __name__ == "__main__":  # `python -m service.cli serve ...`, as the console script
    run()
