"""The train CLI's old import path; it lives in models/train/cli.py."""

from models.train.cli import _config, _parser, main

__all__ = ["_config", "_parser", "main"]
