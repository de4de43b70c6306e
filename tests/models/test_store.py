"""Model versions on disk: round trips, numbering, crash safety and rejection of broken files."""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import store
from models.lm import RNNLM, ModelConfig
from models.store import (
    ModelNotFoundError,
    StoreError,
    cleanup_temp,
    list_names,
    list_versions,
    load_version,
    parse_ref,
    read_meta,
    save_version,
)
from models.tokenizer import Tokenizer, Vocab

WORDS = ["the", "clouds", "are", "in", "sky", "i", "speak", "fluent", "french", "."]
VOCAB = len(WORDS) + 2  # plus <unk>, <eos>


def _tokenizer() -> Tokenizer:
    return Tokenizer(Vocab(["<unk>", "<eos>", *WORDS]), lowercase=True)


def _model(arch: str = "lstm", tied: bool = False, hidden: int = 16, seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch, VOCAB, hidden, hidden, num_layers=2, dropout=0.2, tied=tied)
    model = RNNLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-zero biases, so a dropped one would show
    return model.eval()


def _ids() -> torch.Tensor:
    return torch.tensor([[2, 3, 4, 5, 2, 6, 0, 1, 7]])


def _entries(path: Path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_save_then_load_predicts_identically(tmp_path: Path, arch: str, tied: bool) -> None:
    model = _model(arch, tied)
    version = save_version(tmp_path, "m", model, _tokenizer(), {"metrics": {"val_ppl": 12.5}})
    assert version == 1
    loaded = load_version(tmp_path, "m")
    assert (loaded.name, loaded.version, loaded.path) == ("m", 1, tmp_path / "m" / "1")
    assert not loaded.model.training
    assert loaded.config == model.cfg
    with torch.no_grad():
        assert torch.equal(loaded.model(_ids())[0], model(_ids())[0])
    if tied:
        assert loaded.model.decoder.weight is loaded.model.embedding.weight
    assert loaded.model.num_params() == model.num_params()
    assert loaded.tokenizer.vocab.itos == _tokenizer().vocab.itos
    assert loaded.tokenizer.lowercase is True
    assert _entries(loaded.path) == ["meta.json", "model.safetensors", "vocab.json"]
    assert stat.S_IMODE(loaded.path.stat().st_mode) == 0o755


def test_tied_weights_stored_once(tmp_path: Path) -> None:
    save_version(tmp_path, "m", _model("gru", tied=True), _tokenizer(), {})
    keys = set(load_file(tmp_path / "m" / "1" / "model.safetensors"))
    assert "embedding.weight" in keys and "decoder.weight" not in keys


def test_meta_contents(tmp_path: Path) -> None:
    model = _model("gru", tied=True)
    caller = {"metrics": {"val_ppl": 9.5, "test_ppl": float("inf")}, "arch": "lies", "seed": 3}
    save_version(tmp_path, "m", model, _tokenizer(), caller)
    meta = json.loads((tmp_path / "m" / "1" / "meta.json").read_text())
    assert meta["metrics"] == {"val_ppl": 9.5, "test_ppl": None}  # JSON has no inf
    assert meta["seed"] == 3
    expected = {
        "arch": "gru",  # the store's knowledge wins over the caller's
        "vocab_size": VOCAB,
        "embedding_size": 16,
        "hidden_size": 16,
        "num_layers": 2,
        "dropout": 0.2,
        "tied": True,
        "params": model.num_params(),
        "torch_version": torch.__version__,
        "name": "m",
        "version": 1,
        "lowercase": True,
    }
    assert {k: meta[k] for k in expected} == expected
    assert meta["created_at"].endswith("Z") and meta["created_at"][4] == "-"
    assert read_meta(tmp_path, "m", 1) == meta
    vocab = json.loads((tmp_path / "m" / "1" / "vocab.json").read_text())
    assert Tokenizer.from_dict(vocab).vocab.itos == ["<unk>", "<eos>", *WORDS]


def test_version_numbering_and_listing(tmp_path: Path) -> None:
    assert list_names(tmp_path) == [] and list_versions(tmp_path, "m") == []
    for expected in (1, 2, 3):
        assert save_version(tmp_path, "m", _model(seed=expected), _tokenizer(), {}) == expected
    save_version(tmp_path, "other", _model(), _tokenizer(), {})
    # Noise a listing must ignore: non-canonical numbers, files, temp dirs, bad names.
    for junk in ("01", "x", "0", ".tmp-abc"):
        (tmp_path / "m" / junk).mkdir()
    (tmp_path / "m" / "7").write_text("not a dir")
    (tmp_path / "Bad").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".tmp-x").mkdir()
    assert list_versions(tmp_path, "m") == [1, 2, 3]
    assert list_names(tmp_path) == ["m", "other"]
    assert load_version(tmp_path, "m").version == 3
    assert load_version(tmp_path, "m", 2).meta["version"] == 2
    with pytest.raises(ModelNotFoundError):
        load_version(tmp_path, "m", 4)
    with pytest.raises(ModelNotFoundError):
        load_version(tmp_path, "empty")
    with pytest.raises(ModelNotFoundError):
        load_version(tmp_path, "nope")
    with pytest.raises(ModelNotFoundError):
        read_meta(tmp_path, "m", 9)


def test_number_taken_by_another_writer_moves_on(tmp_path: Path, monkeypatch) -> None:
    save_version(tmp_path, "m", _model(), _tokenizer(), {})
    real = store.list_versions
    looks: list[list[int]] = []

    def stale_first(model_dir: Path, name: str) -> list[int]:
        # The first look misses version 1, as if another writer renamed it in just after.
        looks.append([] if not looks else real(model_dir, name))
        return looks[-1]

    monkeypatch.setattr(store, "list_versions", stale_first)
    assert save_version(tmp_path, "m", _model(seed=5), _tokenizer(), {}) == 2
    assert looks == [[], [1]]  # it tried 1, found it taken, looked again
    assert read_meta(tmp_path, "m", 2)["version"] == 2
    assert read_meta(tmp_path, "m", 1)["version"] == 1
    assert _entries(tmp_path / "m") == ["1", "2"]


def test_concurrent_writers_get_distinct_numbers(tmp_path: Path) -> None:
    models = [_model(seed=s) for s in range(6)]
    barrier = threading.Barrier(len(models))

    def save(model: RNNLM) -> int:
        barrier.wait()
        return save_version(tmp_path, "m", model, _tokenizer(), {})

    with ThreadPoolExecutor(len(models)) as pool:
        versions = list(pool.map(save, models))
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert _entries(tmp_path / "m") == ["1", "2", "3", "4", "5", "6"]
    for version, model in zip(versions, models, strict=True):
        assert read_meta(tmp_path, "m", version)["version"] == version
        loaded = load_version(tmp_path, "m", version).model
        with torch.no_grad():
            assert torch.equal(loaded(_ids())[0], model(_ids())[0])


def _fail_on_call(n: int, exc: BaseException):
    calls = {"count": 0}
    real = store._write_bytes

    def write(path: Path, data: bytes) -> None:
        calls["count"] += 1
        if calls["count"] == n:
            raise exc
        real(path, data)

    return write


@pytest.mark.parametrize("failing_write", [1, 2])  # vocab.json, then meta.json
def test_crash_while_saving_leaves_nothing_visible(
    tmp_path: Path, monkeypatch, failing_write: int
) -> None:
    save_version(tmp_path, "m", _model(), _tokenizer(), {})
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store, "_write_bytes", _fail_on_call(failing_write, disk_full))
    with pytest.raises(OSError) as info:
        save_version(tmp_path, "m", _model(seed=1), _tokenizer(), {})
    assert info.value.errno == errno.ENOSPC
    assert _entries(tmp_path / "m") == ["1"]  # no version 2, no temp litter
    assert list_versions(tmp_path, "m") == [1]


def test_crash_in_weights_or_rename_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "save_file", no_space)
    with pytest.raises(OSError):
        save_version(tmp_path, "m", _model(), _tokenizer(), {})
    assert _entries(tmp_path / "m") == [] and list_names(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setattr(store.os, "rename", lambda a, b: no_space())
    with pytest.raises(OSError):
        save_version(tmp_path, "m", _model(), _tokenizer(), {})
    assert _entries(tmp_path / "m") == []


def test_interrupt_cleans_up_too(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store, "_write_bytes", _fail_on_call(2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_version(tmp_path, "m", _model(), _tokenizer(), {})
    assert _entries(tmp_path / "m") == []


def test_killed_writer_leaves_only_a_hidden_temp_dir(tmp_path: Path, monkeypatch) -> None:
    # A SIGKILL runs no cleanup: emulate it by failing mid-save with cleanup disabled.
    monkeypatch.setattr(store, "_write_bytes", _fail_on_call(2, OSError(errno.EIO, "killed")))
    monkeypatch.setattr(store.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(OSError):
        save_version(tmp_path, "m", _model(), _tokenizer(), {})
    monkeypatch.undo()
    (leftover,) = _entries(tmp_path / "m")
    assert leftover.startswith(".")
    assert list_versions(tmp_path, "m") == [] and list_names(tmp_path) == []
    with pytest.raises(ModelNotFoundError):
        load_version(tmp_path, "m")
    assert cleanup_temp(tmp_path) == []  # too fresh: might be a save in progress
    assert cleanup_temp(tmp_path, min_age_s=0) == [tmp_path / "m" / leftover]
    assert _entries(tmp_path / "m") == []
    assert save_version(tmp_path, "m", _model(), _tokenizer(), {}) == 1


def test_save_rejects_bad_input_without_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_version(tmp_path, "../evil", _model(), _tokenizer(), {})
    small = Tokenizer(Vocab(["<unk>", "<eos>", "the"]))
    with pytest.raises(ValueError, match="vocab_size"):
        save_version(tmp_path, "m", _model(), small, {})
    with pytest.raises(TypeError):
        save_version(tmp_path, "m", _model(), _tokenizer(), {"bad": object()})
    assert _entries(tmp_path) == []


def test_loading_never_unpickles(tmp_path: Path, monkeypatch) -> None:
    save_version(tmp_path, "m", _model(tied=True), _tokenizer(), {})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, attr, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert load_version(tmp_path, "m").version == 1


# --- broken versions -----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    save_version(tmp_path, "m", _model(), _tokenizer(), {})
    return tmp_path / "m" / "1"


def _edit_meta(version_dir: Path, **changes) -> None:
    meta = json.loads((version_dir / "meta.json").read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del meta[key]
        else:
            meta[key] = value
    (version_dir / "meta.json").write_text(json.dumps(meta))


_DELETE = object()


def _assert_store_error(model_dir: Path, culprit: str) -> None:
    with pytest.raises(StoreError) as info:
        load_version(model_dir, "m", 1)
    assert culprit in str(info.value)
    assert not isinstance(info.value, ModelNotFoundError)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "", "\xff"])
def test_corrupt_meta(saved: Path, text: str) -> None:
    (saved / "meta.json").write_text(text, encoding="latin-1")
    _assert_store_error(saved.parent.parent, str(saved / "meta.json"))


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_size": _DELETE},
        {"arch": "transformer"},
        {"vocab_size": "12"},
        {"num_layers": True},
        {"tied": 1},
        {"dropout": None},
        {"num_layers": 0},
        {"tied": True},  # sizes are equal here, but then decoder.weight is an extra tensor
        {"embedding_size": 8, "tied": True},
    ],
)
def test_invalid_meta_values(saved: Path, changes: dict) -> None:
    _edit_meta(saved, **changes)
    _assert_store_error(saved.parent.parent, str(saved))


def test_missing_files(saved: Path) -> None:
    for name in ("meta.json", "vocab.json", "model.safetensors"):
        backup = (saved / name).read_bytes()
        (saved / name).unlink()
        _assert_store_error(saved.parent.parent, str(saved / name))
        (saved / name).write_bytes(backup)
    assert load_version(saved.parent.parent, "m", 1).version == 1


@pytest.mark.parametrize("keep", [0, 4, 20, 0.5, -4])
def test_truncated_weights(saved: Path, keep: float) -> None:
    path = saved / "model.safetensors"
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    _assert_store_error(saved.parent.parent, str(path))


def test_weights_of_other_shapes(saved: Path) -> None:
    _edit_meta(saved, hidden_size=8, embedding_size=8)
    _assert_store_error(saved.parent.parent, "shape")


def test_weights_with_missing_or_extra_tensors(saved: Path) -> None:
    path = saved / "model.safetensors"
    tensors = load_file(path)
    tensors.pop("rnn.bias_hh_l1")
    save_file(tensors, path)
    _assert_store_error(saved.parent.parent, "rnn.bias_hh_l1")
    tensors["rnn.bias_hh_l1"] = torch.zeros(64)
    tensors["extra"] = torch.zeros(1)
    save_file(tensors, path)
    _assert_store_error(saved.parent.parent, "extra")


def test_weights_with_integer_dtype(saved: Path) -> None:
    path = saved / "model.safetensors"
    tensors = load_file(path)
    tensors["decoder.bias"] = tensors["decoder.bias"].long()
    save_file(tensors, path)
    _assert_store_error(saved.parent.parent, "dtype")


@pytest.mark.parametrize(
    "vocab", ["[]", "{}", '{"vocab": {"itos": ["a", "b"]}}', '{"vocab": {"itos": 5}}', "nope"]
)
def test_corrupt_vocab(saved: Path, vocab: str) -> None:
    (saved / "vocab.json").write_text(vocab)
    _assert_store_error(saved.parent.parent, str(saved / "vocab.json"))


def test_vocab_size_mismatch(saved: Path) -> None:
    small = Tokenizer(Vocab(["<unk>", "<eos>", "the"]))
    (saved / "vocab.json").write_text(json.dumps(small.to_dict()))
    _assert_store_error(saved.parent.parent, "vocab_size")


# --- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("lstm", ("lstm", None)),
        ("my-gru_2", ("my-gru_2", None)),
        ("a@3", ("a", 3)),
        ("0@10", ("0", 10)),
        ("a" * 64 + "@999999999", ("a" * 64, 999999999)),
    ],
)
def test_parse_ref_accepts(ref: str, expected: tuple) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize(
    "ref",
    [
        "", "A", "Lstm", "a@", "a@0", "a@01", "a@+1", "a@-1", "a@1.0", "a@ 1", "a@1@2", "@1",
        "../x", "a/b", ".tmp", "-a", "_a", "a b", "a\n", "a" * 65, "a@1234567890", "a@١",
    ],
)  # fmt: skip
def test_parse_ref_rejects(ref: str) -> None:
    with pytest.raises(ValueError):
        parse_ref(ref)


@pytest.mark.parametrize("name", ["../x", "A", "", ".tmp-1"])
def test_invalid_names_rejected_everywhere(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        list_versions(tmp_path, name)
    with pytest.raises(ValueError):
        load_version(tmp_path, name)
