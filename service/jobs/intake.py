"""From a request body to a staged job: every check of a request (parsing, ranges, sizes),
then the corpus, size-checked.

Every refusal is an `ApiError` with a 4xx status and a message that says what is allowed.
Nothing is written for a request that is refused before its corpus is staged, and a staged
corpus that turns out too large is removed before the 413 goes out.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile

from models.builtin import BUILTIN_CORPORA
from models.train import TrainConfig

from ..errors import ApiError
from ..schemas.jobs import CorpusOptions, CorpusSpec, TrainRequest
from . import datasets, spool
from .bounds import TrainBounds, estimate_params
from .memory import estimate_training_memory

_UPLOAD_CHUNK = 1 << 20
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _problem(field: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", *field.split(".")], "msg": message, "type": kind}


def _refuse(problems: list[dict[str, Any]]) -> ApiError:
    text = "; ".join(f"{'.'.join(p['loc'][1:]) or 'body'}: {p['msg']}" for p in problems)
    return ApiError(422, text, detail=problems)


def validation_error(e: ValidationError, bounds: TrainBounds) -> ApiError:
    """pydantic's complaint, with the allowed range added wherever a bound applies."""
    problems = []
    for err in e.errors():
        loc = [str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid"))
        field = loc[-1] if loc else ""
        if field in bounds.fields():
            msg += f" (allowed: {bounds.describe(field)})"
        problems.append(_problem(".".join(loc), msg, str(err.get("type", "value_error"))))
    return _refuse(problems or [_problem("", "invalid request")])


def _validated(schema: Any, data: Any, bounds: TrainBounds) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, bounds) from e


def parse_json(data: Any, bounds: TrainBounds) -> TrainRequest:
    """A decoded JSON body as a request; it must name its corpus."""
    req: TrainRequest = _validated(TrainRequest, data, bounds)
    if req.corpus is None:
        raise _refuse([_problem("corpus", "required (text, builtin or dataset), or upload a file")])
    return req


def parse_form(
    items: Iterable[tuple[str, Any]], bounds: TrainBounds
) -> tuple[TrainRequest, CorpusOptions, UploadFile]:
    """A multipart body's parts as a request, its corpus options and the uploaded corpus."""
    upload: UploadFile | None = None
    fields: dict[str, Any] = {}
    for key, value in items:
        if key == "file":
            upload = upload or (value if isinstance(value, UploadFile) else None)
        elif not isinstance(value, str):
            raise _refuse([_problem(key, "only the `file` part may be a file")])
        else:
            fields[key] = value
    if upload is None:
        raise _refuse([_problem("file", "a multipart request needs the corpus in a `file` part")])
    if "corpus" in fields:
        raise _refuse([_problem("corpus", "with an upload the file is the corpus; drop `corpus`")])
    options = {k: fields.pop(k) for k in ("valid_fraction", "lowercase") if k in fields}
    opts: CorpusOptions = _validated(CorpusOptions, options, bounds)
    return _validated(TrainRequest, fields, bounds), opts, upload


def check_request(
    req: TrainRequest,
    bounds: TrainBounds,
    upload: CorpusOptions | None = None,
    memory_budget_mb: int | None = None,
) -> dict[str, Any]:
    """The hyperparameters to train with, all in range; else a 422 listing each problem.

    `upload`: the corpus options of a multipart request (form fields beside the file); a JSON
    request carries them in its `corpus`. `memory_budget_mb`: the most a job's estimated
    peak memory may be (service.jobs.memory), at the largest vocabulary it may end up with."""
    hp = req.hyperparameters()
    problems = [_problem(f, m, "range") for f, m in bounds.check(hp)]
    options, where = (upload, "") if upload is not None else (req.corpus, "corpus.")
    if options is not None:
        problems += [
            _problem(where + f, m, "range")
            for f, m in bounds.check({"valid_fraction": options.valid_fraction})
        ]
    if problems:
        raise _refuse(problems)
    # Without a cap the vocabulary is as large as the corpus makes it: cap it at the bound.
    hp["max_vocab"] = hp.get("max_vocab") or bounds.max_max_vocab
    eff = {**_DEFAULTS, **hp}
    if eff["tied"] and eff["embedding_size"] != eff["hidden_size"]:
        raise _refuse(
            [
                _problem(
                    "tied",
                    "tied weights need embedding_size == hidden_size "
                    f"(got {eff['embedding_size']} and {eff['hidden_size']})",
                )
            ]
        )
    # The vocabulary is only known once the worker has read the corpus: here the smallest
    # one possible unless max_vocab was given; the worker checks again with the real one.
    params = estimate_params(
        req.arch,
        req.max_vocab or 3,
        eff["embedding_size"],
        eff["hidden_size"],
        eff["num_layers"],
        eff["tied"],
    )
    if params > bounds.max_params:
        raise _refuse(
            [
                _problem(
                    "hidden_size",
                    f"the model would have at least {params} parameters; the limit is "
                    f"{bounds.max_params} "
                    "(GATEHOUSE_TRAIN_MAX_PARAMS): lower the sizes or max_vocab",
                    "range",
                )
            ]
        )
    try:
        TrainConfig(arch=req.arch, **hp)
    except (TypeError, ValueError) as e:
        raise _refuse([_problem("body", str(e))]) from e
    if memory_budget_mb is not None:
        _check_memory(req.arch, eff, memory_budget_mb)
    return hp


def _check_memory(arch: str, eff: dict[str, Any], budget_mb: int) -> None:
    # The corpus is not read yet: max_vocab is the largest vocabulary the job can have.
    need = estimate_training_memory(
        arch,
        eff["max_vocab"],
        eff["embedding_size"],
        eff["hidden_size"],
        eff["num_layers"],
        eff["tied"],
        eff["batch_size"],
        eff["bptt"],
        eff.get("optimizer", "adam"),
        eff["dropout"],
    )
    if need.total <= budget_mb << 20:
        return
    raise _refuse(
        [
            _problem(
                "batch_size",
                f"training would need an estimated {need.describe()} at a vocabulary of up "
                f"to {eff['max_vocab']} words, over the memory budget of {budget_mb} MiB "
                "(GATEHOUSE_TRAIN_MEMORY_BUDGET_MB): lower batch_size, bptt, the sizes or "
                "max_vocab",
                "memory",
            )
        ]
    )


def _options(opts: CorpusOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if opts.valid_fraction is not None:
        out["valid_fraction"] = opts.valid_fraction
    if opts.lowercase is not None:
        out["lowercase"] = opts.lowercase
    return out


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"corpus over the limit of {limit} bytes (the operator sets GATEHOUSE_MAX_CORPUS_BYTES)",
    )


async def stage_json_corpus(
    staging: spool.Staging, spec: CorpusSpec, data_dir: Any
) -> dict[str, Any]:
    """Put a JSON request's corpus into the staging directory; returns its description."""
    opts = _options(spec)
    if spec.builtin is not None:
        if spec.builtin not in BUILTIN_CORPORA:
            known = ", ".join(sorted(BUILTIN_CORPORA))
            raise _refuse(
                [
                    _problem(
                        "corpus.builtin",
                        f"unknown built-in corpus {spec.builtin!r}; known: {known}",
                    )
                ]
            )
        return {
            "kind": "builtin",
            "name": spec.builtin,
            "seed": 0,
            "description": f"built-in corpus {spec.builtin!r}",
            **opts,
        }
    if spec.text is not None:
        try:
            await asyncio.to_thread(staging.write_text, spec.text)
        except spool.TooLarge as e:
            raise _too_large(e.limit) from e
        size = staging.bytes
        return {"kind": "text", "bytes": size, "description": f"inline text ({size} bytes)", **opts}
    name = spec.dataset or ""
    found = datasets.find_dataset(data_dir, name)
    if found is None:
        known = ", ".join(d.name for d in datasets.list_datasets(data_dir)) or "none"
        raise _refuse([_problem("corpus.dataset", f"unknown dataset {name!r}; known: {known}")])
    if found.bytes > staging.max_bytes:
        raise _too_large(staging.max_bytes)
    if found.kind == "file":
        pairs = [(found.path, spool.CORPUS_FILE)]
    else:
        pairs = [
            (p, f"{spool.CORPUS_DIR}/{p.relative_to(found.path).as_posix()}")
            for p in found.text_files()
        ]
    try:
        await asyncio.to_thread(staging.copy_files, pairs)
    except spool.TooLarge as e:  # the files grew since they were listed
        raise _too_large(e.limit) from e
    return {
        "kind": "dataset",
        "name": found.name,
        "bytes": staging.bytes,
        "files": found.files,
        "splits": found.splits,
        "dir": found.kind == "dir",
        "description": f"dataset {found.name!r}",
        **opts,
    }


def _label(filename: str | None) -> str:
    # The client's file name is a label only (never a path): printable, short.
    clean = "".join(c for c in (filename or "upload") if c.isprintable())
    return clean[-100:] or "upload"


async def stage_upload(
    staging: spool.Staging, upload: UploadFile, opts: CorpusOptions
) -> dict[str, Any]:
    """Copy an uploaded file into the staging directory, counting bytes as they come."""
    try:
        while chunk := await upload.read(_UPLOAD_CHUNK):
            staging.write_chunk(chunk)
    except spool.TooLarge as e:
        raise _too_large(e.limit) from e
    finally:
        staging.close_upload()
    if staging.bytes == 0:
        raise _refuse([_problem("file", "the uploaded corpus is empty")])
    label = _label(upload.filename)
    return {
        "kind": "upload",
        "filename": label,
        "bytes": staging.bytes,
        "description": f"upload {label!r} ({staging.bytes} bytes)",
        **_options(opts),
    }
