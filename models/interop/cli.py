"""`gatehouse import ...` and `gatehouse export ...` (also `python -m models.interop ...`).

Exit codes: 0 done; 2 refused (unsupported or unreadable source, bad arguments); 3 the
imported or exported model failed its check against the source (nothing written); 4 the
ONNX packages are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from models import store
from models.lm import ARCHS

from . import onnx_export, pytorch_examples, state_dict
from .convert import VerificationFailed, import_source
from .source import ImportRefused

REFUSED, CHECK_FAILED, MISSING_EXTRA = 2, 3, 4


def _model_dir_arg(p: argparse.ArgumentParser) -> None:
    env = os.environ.get("GATEHOUSE_MODEL_DIR")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path(env) if env else None,
        required=not env,
        help="the model store (default: $GATEHOUSE_MODEL_DIR)",
    )


def _import_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatehouse import",
        description="Import a model trained elsewhere as a new version in the store, after "
        "checking it reproduces the source's log-probabilities within 1e-4.",
    )
    sub = p.add_subparsers(dest="source", required=True)
    pe = sub.add_parser(
        "pytorch-examples",
        help="a checkpoint of pytorch/examples' word_language_model (whole module or "
        "state_dict) and its corpus folder",
    )
    pe.add_argument("--checkpoint", type=Path, required=True, help="the model.pt it saved")
    pe.add_argument("--data", type=Path, required=True, help="its --data folder")
    pe.add_argument("--arch", choices=ARCHS, help="needed for a plain RNN's state_dict")
    sd = sub.add_parser("state-dict", help="a state_dict and a vocabulary file")
    sd.add_argument("--weights", type=Path, required=True, help=".safetensors or a torch file")
    sd.add_argument("--vocab", type=Path, required=True, help="JSON list or one word a line")
    sd.add_argument("--arch", choices=ARCHS, required=True)
    sd.add_argument("--dropout", type=float, default=0.0, help="kept for further training")
    sd.add_argument("--lowercase", action="store_true", help="the vocabulary is lowercased")
    sd.add_argument("--unk", default="<unk>", help="the vocabulary's unknown-word entry")
    sd.add_argument("--eos", default="<eos>", help="the vocabulary's end-of-line entry")
    sd.add_argument("--sample", type=Path, help="text to check on (default: random ids)")
    for q in (pe, sd):
        q.add_argument("--name", required=True, help="the model name to add a version to")
        _model_dir_arg(q)
    return p


def _fail(what: str, code: int, message: str) -> int:
    print(f"gatehouse {what}: {message}", file=sys.stderr)
    return code


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    # argparse exits on --help and on bad arguments; the callers want a return code.
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else REFUSED


def import_main(argv: list[str]) -> int:
    """`gatehouse import ...` (argv: what follows `import`); returns the exit code."""
    args = _parse(_import_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        store.parse_ref(args.name)
        if "@" in args.name:
            raise ValueError("--name takes a name, not a name@version")
    except ValueError as e:
        return _fail("import", REFUSED, str(e))
    unk, eos, lowercase = "<unk>", "<eos>", False
    try:
        if args.source == "pytorch-examples":
            src, ids = pytorch_examples.read(args.checkpoint, args.data, args.arch)
        else:
            itos = state_dict.read_vocab(args.vocab)
            weights = state_dict.read_weights(args.weights)
            src = state_dict.source_model(weights, itos, args.arch, args.dropout)
            src.origin.update(weights_path=str(args.weights), vocab_path=str(args.vocab))
            unk, eos, lowercase = args.unk, args.eos, args.lowercase
            text = None
            if args.sample is not None:
                try:
                    text = args.sample.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise ImportRefused(f"{args.sample}: unreadable: {e}") from e
            ids = state_dict.sample_ids(itos, text, unk, lowercase, eos)
        meta = {"corpus": {"description": f"imported ({src.origin.get('format')})"}}
        version, diff = import_source(
            src, ids, args.model_dir, args.name, meta, unk, eos, lowercase
        )
    except VerificationFailed as e:
        return _fail("import", CHECK_FAILED, f"refused: {e}")
    except (ImportRefused, store.StoreError, ValueError) as e:
        return _fail("import", REFUSED, f"refused: {e}")
    except OSError as e:  # the store cannot be written
        return _fail("import", REFUSED, f"cannot write the version: {e}")
    report = {"name": args.name, "version": version, "arch": src.arch}
    report.update(vocab_size=len(src.itos), max_abs_logprob_diff=diff, tokens=int(ids.numel()))
    print(json.dumps(report))
    return 0


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gatehouse export",
        description="Write a stored version out: its safetensors, meta and vocabulary, or an "
        "ONNX graph (dynamic batch and length, checked in onnxruntime) with the vocabulary.",
    )
    p.add_argument("ref", help="NAME or NAME@VERSION (default: the latest version)")
    p.add_argument("--format", choices=("onnx", "safetensors"), required=True)
    p.add_argument("--out", type=Path, help="folder to write into (default: ./NAME-vVERSION)")
    _model_dir_arg(p)
    return p


def _copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, store.FILE_MODE)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_main(argv: list[str]) -> int:
    """`gatehouse export ...` (argv: what follows `export`); returns the exit code."""
    args = _parse(_export_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        name, version = store.parse_ref(args.ref)
        loaded = store.load_version(args.model_dir, name, version)
    except (ValueError, store.StoreError) as e:
        return _fail("export", REFUSED, str(e))
    if args.format == "onnx":
        try:
            onnx_export.require_onnx()
        except onnx_export.OnnxMissing as e:
            return _fail("export", MISSING_EXTRA, str(e))
    out: Path = args.out or Path(f"{loaded.name}-v{loaded.version}")
    report: dict[str, object] = {"name": loaded.name, "version": loaded.version, "out": str(out)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for file in (store.META_FILE, store.VOCAB_FILE):
            _copy_atomic(loaded.path / file, out / file)
        if args.format == "safetensors":
            _copy_atomic(loaded.path / store.WEIGHTS_FILE, out / store.WEIGHTS_FILE)
            report["files"] = [store.WEIGHTS_FILE, store.META_FILE, store.VOCAB_FILE]
        else:
            diff = onnx_export.export_checked(loaded.model, out / "model.onnx")
            report.update(files=["model.onnx", store.META_FILE, store.VOCAB_FILE])
            report["max_abs_diff"] = diff
    except ValueError as e:
        return _fail("export", CHECK_FAILED, str(e))
    except OSError as e:
        return _fail("export", REFUSED, f"cannot write to {out}: {e}")
    print(json.dumps(report))
    return 0
