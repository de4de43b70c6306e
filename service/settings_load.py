"""Settings from the command line, the environment and a TOML file, with one-line complaints.

A bad value stops the start with exit status 2 and one line naming the setting, where the value
came from and what is allowed; an unknown `GATEHOUSE_*` variable or file key is a warning
naming it (and the likeliest intended name), since a typo there is otherwise silently ignored.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from pydantic import ValidationError

from .redact import without_credentials
from .settings import ENV_PREFIX, Settings, build, env_name
from .settings_flags import add_settings_flags, allowed_text, flag_name, is_secret

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_ENV = ENV_PREFIX + "CONFIG"


class SettingsProblem(Exception):
    """A setting that cannot be used; str() is the one line to show."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (usage is one `--help` away), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"a TOML file of settings: max_batch_size = 32 for --max-batch-size ({CONFIG_ENV})",
    )


def settings_parser(prog: str, description: str | None = None) -> OneLineParser:
    # No abbreviations: a misspelt flag must fail, not quietly become another one.
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False)
    add_config_flag(parser)
    add_settings_flags(parser)
    return parser


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsProblem(f"config file {path}: not found") from None
    except OSError as e:
        raise SettingsProblem(f"config file {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SettingsProblem(f"config file {path}: not valid TOML: {e}") from None


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


OtherNames = Callable[[], Iterable[str]]


def unknown_names(
    environ: Mapping[str, str],
    file_values: Mapping[str, Any],
    config_path: str | None = None,
    other_env: OtherNames = tuple,
) -> list[str]:
    """A warning per `GATEHOUSE_*` variable and file key that no setting reads.

    `other_env` names the variables other settings classes read; it is asked only when a
    variable is not one of `Settings`' (it may be costly to import).
    """
    fields = Settings.model_fields
    known_env = {env_name(f) for f in fields} | {CONFIG_ENV}
    unknown = [n for n in sorted(environ) if n.upper().startswith(ENV_PREFIX)]
    unknown = [n for n in unknown if n.upper() not in known_env]
    if unknown:
        known_env |= {n.upper() for n in other_env()}
    out = []
    for name in unknown:
        upper = name.upper()
        if upper not in known_env:
            out.append(f"unknown variable {name} ignored{_suggest(upper, known_env)}")
    for key in file_values:
        if key not in fields:
            hint = _suggest(key.replace("-", "_"), fields)
            out.append(f"config file {config_path}: unknown key {key!r} ignored{hint}")
    return out


def _source(
    field: str, flags: Mapping[str, Any], environ: Mapping[str, str], path: str | None
) -> str:
    if field in flags:
        return flag_name(field)
    if any(k.upper() == env_name(field) for k in environ):
        return env_name(field)
    return f"config file {path}" if path else "default"


def explain(
    error: ValidationError,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_path: str | None,
) -> str:
    """The first invalid setting as one line: name, value, source, what is allowed."""
    fields = Settings.model_fields
    for detail in error.errors():
        field = str(detail["loc"][0]) if detail["loc"] else ""
        if field in fields:
            where = _source(field, flags, environ, config_path)
            value = detail.get("input")
            shown = "***" if is_secret(fields[field]) else repr(value)
            shown = without_credentials(shown)  # a store URL's password stays out of it
            if detail["type"] == "value_error":  # a field's own check says what it wants
                reason = str(detail["msg"]).removeprefix("Value error, ")
                return f"invalid {field} = {shown} (from {where}): {reason}"
            return (
                f"invalid {field} = {shown} (from {where}): must be {allowed_text(fields[field])}"
            )
    return f"invalid settings: {error.errors()[0]['msg']}"


def load(
    flags: Mapping[str, Any],
    config_path: str | None = None,
    other_env: OtherNames = tuple,
    warn: Callable[[str], None] = lambda _: None,
) -> Settings:
    """Settings from flags, os.environ and file; `warn` hears of unknown names (before any
    error). Raises SettingsProblem for an unreadable file or an invalid value.
    """
    environ = os.environ
    config_path = config_path or environ.get(CONFIG_ENV) or None
    file_values = read_config(config_path) if config_path else {}
    for line in unknown_names(environ, file_values, config_path, other_env):
        warn(line)
    try:
        return build(flags, file_values)
    except ValidationError as e:
        raise SettingsProblem(explain(e, flags, environ, config_path)) from None


def settings_from_args(
    args: argparse.Namespace, prog: str, other_env: OtherNames = tuple
) -> Settings:
    """The parsed flags plus env and file; warnings on stderr, exit 2 on a bad value."""
    given = vars(args)
    flags = {k: v for k, v in given.items() if k in Settings.model_fields}

    def warn(line: str) -> None:
        print(f"{prog}: warning: {line}", file=sys.stderr)

    try:
        return load(flags, given.get("config"), other_env=other_env, warn=warn)
    except SettingsProblem as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_args(
    argv: list[str] | None = None, prog: str = "python -m service", other_env: OtherNames = tuple
) -> Settings:
    """Flags win over env vars over the config file; a flag left out keeps what those say."""
    parser = settings_parser(prog, "Serve, inspect and train recurrent language models over HTTP.")
    return settings_from_args(parser.parse_args(argv), prog, other_env)
