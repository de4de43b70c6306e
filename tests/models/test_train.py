import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from models.checkpoint import checkpoint_path
from models.corpus import Corpus
from models.lm import RNNLM, ModelConfig
from models.train import (
    STOP_CANCEL,
    STOP_CHECKPOINT,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    build_meta,
    train,
)
from models.trainer import set_gate_bias

pytestmark = pytest.mark.numerics

TIMING_KEYS = {"tokens_per_s", "seconds"}


def small(**kw) -> TrainConfig:
    base = dict(
        arch="lstm",
        embedding_size=16,
        hidden_size=24,
        batch_size=4,
        bptt=12,
        lr=1e-2,
        epochs=2,
        seed=1,
        device="cpu",
        progress_interval_s=0.0,
        num_threads=1,  # tiny models: a second intra-op thread only adds overhead
    )
    return TrainConfig(**{**base, **kw})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


@pytest.mark.parametrize(
    "extra",
    [
        {"arch": "rnn"},
        {"arch": "lstm"},
        {"arch": "gru"},
        {"arch": "rnn", "num_layers": 2, "dropout": 0.2, "embedding_size": 24, "tied": True},
        {"arch": "gru", "optimizer": "sgd", "lr": 1.0},
    ],
)
def test_training_lowers_loss(tiny: Corpus, extra: dict) -> None:
    res = train(small(epochs=3, **extra), tiny)
    first, last = res.history[0], res.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert res.metrics["val_ppl"] < 0.5 * len(tiny.tokenizer.vocab)  # far better than uniform
    assert math.isfinite(res.metrics["val_ppl"])
    assert res.metrics["steps"] == 3 * math.ceil((tiny.train.numel() // 4 - 1) / 12)
    assert not res.model.training


def test_same_seed_same_result_and_other_seed_differs(tiny: Corpus) -> None:
    a = train(small(dropout=0.3), tiny)
    b = train(small(dropout=0.3), tiny)
    c = train(small(dropout=0.3, seed=2), tiny)
    assert same_weights(weights(a.model), weights(b.model))
    assert a.metrics["val_ppl"] == b.metrics["val_ppl"]
    assert strip_timing(a.history) == strip_timing(b.history)
    assert not same_weights(weights(a.model), weights(c.model))


def _stopper(at_steps: list[int], request: str):
    """should_stop asking for `request` once the reported step reaches each of `at_steps`."""
    seen = {"step": 0}
    pending = sorted(at_steps)

    def callback(progress: dict) -> None:
        seen["step"] = progress["step"]

    def should_stop() -> str | None:
        if pending and seen["step"] >= pending[0]:
            pending.pop(0)
            return request
        return None

    return callback, should_stop


@pytest.mark.parametrize(
    "extra",
    [
        {"arch": "gru", "dropout": 0.3},
        {
            "arch": "lstm",
            "schedule": "cosine",
            "decay_start": 0.3,
            "keep_best": False,
            "gate_bias": 2.0,
            "num_layers": 2,
            "dropout": 0.1,
        },
    ],
)
def test_resume_from_checkpoints_equals_uninterrupted_run(
    tiny: Corpus, tmp_path: Path, extra: dict
) -> None:
    cfg = small(epochs=3, **extra)
    whole = train(cfg, tiny)
    steps_per_epoch = whole.metrics["steps"] // 3
    # Stop mid-epoch 1, then mid-epoch 3, each time with a checkpoint; then run to the end.
    stops = [steps_per_epoch // 2, 2 * steps_per_epoch + 3]
    callback, should_stop = _stopper(stops, STOP_CHECKPOINT)
    ckdir = str(tmp_path / "ck")
    for expected_step in stops:
        with pytest.raises(TrainingCancelled) as info:
            train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=ckdir)
        assert info.value.checkpointed and info.value.step == expected_step
        assert checkpoint_path(ckdir).is_file()
    resumed = train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=ckdir)
    assert same_weights(weights(whole.model), weights(resumed.model))
    assert strip_timing(resumed.history) == strip_timing(whole.history)
    assert resumed.metrics["val_ppl"] == whole.metrics["val_ppl"]
    assert resumed.metrics["steps"] == whole.metrics["steps"]
    # A finished checkpoint resumes to the same finished result.
    again = train(cfg, tiny, checkpoint_dir=ckdir)
    assert same_weights(weights(whole.model), weights(again.model))


def test_checkpoint_written_each_epoch_and_refused_for_another_config(
    tiny: Corpus, tmp_path: Path
) -> None:
    durable_at_epoch_end = []

    def callback(progress: dict) -> None:
        if progress["event"] == "epoch":
            durable_at_epoch_end.append(checkpoint_path(tmp_path).is_file())

    train(small(epochs=2), tiny, callback=callback, checkpoint_dir=str(tmp_path))
    assert durable_at_epoch_end == [True, True]
    assert checkpoint_path(tmp_path).is_file()
    with pytest.raises(TrainingError, match="different config"):
        train(small(epochs=2, hidden_size=32), tiny, checkpoint_dir=str(tmp_path))


def test_checkpoint_from_before_a_setting_existed_resumes_while_it_has_its_default(
    tiny: Corpus, tmp_path: Path
) -> None:
    """A checkpoint written before `weight_drop` existed (its config lacks the key) is the same
    run as one with weight drop at its default: it resumes; asked with weight drop on, it is
    another config and is refused."""
    from models.checkpoint import load_checkpoint, save_checkpoint

    cfg = small(epochs=2)
    whole = train(cfg, tiny)
    ckdir = tmp_path / "ck"
    callback, should_stop = _stopper([whole.metrics["steps"] // 2], STOP_CHECKPOINT)
    with pytest.raises(TrainingCancelled):
        train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=str(ckdir))
    loaded = load_checkpoint(ckdir)
    assert loaded is not None
    tensors, state = loaded
    del state["config"]["weight_drop"]  # as an older trainer wrote it
    save_checkpoint(ckdir, tensors, state)
    with pytest.raises(TrainingError, match="different config"):
        train(small(epochs=2, weight_drop=0.3), tiny, checkpoint_dir=str(ckdir))
    resumed = train(cfg, tiny, checkpoint_dir=str(ckdir))
    assert same_weights(weights(whole.model), weights(resumed.model))


def test_cancel_stops_promptly_without_checkpoint(tiny: Corpus, tmp_path: Path) -> None:
    callback, should_stop = _stopper([3], STOP_CANCEL)
    with pytest.raises(TrainingCancelled) as info:
        train(small(), tiny, callback, should_stop, checkpoint_dir=str(tmp_path))
    assert info.value.step == 3 and not info.value.checkpointed
    assert not checkpoint_path(tmp_path).exists()
    # Asking for a checkpoint without a checkpoint_dir is a plain cancel.
    callback, should_stop = _stopper([2], STOP_CHECKPOINT)
    with pytest.raises(TrainingCancelled) as info:
        train(small(), tiny, callback, should_stop)
    assert info.value.step == 2 and not info.value.checkpointed


@pytest.mark.parametrize("lr", [1e10, 1e38])  # a huge finite loss, then an infinite one
def test_divergence_raises_readable_training_error(tiny: Corpus, lr: float) -> None:
    cfg = small(arch="rnn", optimizer="sgd", lr=lr, clip=0.0, unigram_bias=False, max_steps=6)
    with pytest.raises(TrainingError, match="diverged: the loss became"):
        train(cfg, tiny)


def test_progress_reports(tiny: Corpus) -> None:
    events: list[dict] = []
    res = train(small(epochs=2), tiny, callback=events.append)
    steps = [e for e in events if e["event"] == "step"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert steps and len(epochs) == 2 and events[-1]["event"] == "done"
    keys = {"step", "total_steps", "epoch", "loss", "ppl", "tokens_per_s", "eta_s", "progress"}
    assert keys <= steps[0].keys()
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and 0 < progress[0] and progress[-1] == 1.0
    assert [e["val_ppl"] for e in epochs] == [h["val_ppl"] for h in res.history]
    assert all(e["tokens_per_s"] > 0 and e["eta_s"] >= 0 for e in steps)


def test_max_steps_caps_training_and_records_partial_epoch(tiny: Corpus) -> None:
    res = train(small(epochs=5, max_steps=4), tiny)
    assert res.metrics["steps"] == 4
    assert len(res.history) == 1 and res.history[0]["partial"] is True


def test_build_meta_is_json_and_complete(tiny: Corpus) -> None:
    res = train(small(max_steps=2), tiny)
    meta = build_meta(res, tiny)
    json.dumps(meta, allow_nan=False)
    assert meta["hyperparameters"]["lr"] == 1e-2 and meta["corpus"]["sha256"] == tiny.sha256
    for key in ("val_ppl", "tokens_per_s", "train_seconds", "steps"):
        assert key in meta["metrics"]


@pytest.mark.parametrize(
    "bad",
    [
        {"arch": "transformer"},
        {"optimizer": "rmsprop"},
        {"batch_size": 0},
        {"bptt": 0},
        {"max_steps": 0},
        {"lr": -1.0},
        {"tied": True, "embedding_size": 8, "hidden_size": 16},
        {"dropout": 1.0},
        {"device": "tpu"},
    ],
)
def test_bad_config_raises_value_error(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_cosine_schedule_holds_then_anneals(tiny: Corpus) -> None:
    lrs: list[float] = []
    cfg = small(schedule="cosine", decay_start=0.5, min_lr_ratio=0.1, max_steps=20)
    train(cfg, tiny, callback=lambda p: p["event"] == "step" and lrs.append(p["lr"]))
    assert len(lrs) == 20
    assert lrs[:10] == [pytest.approx(1e-2)] * 10
    assert all(a >= b for a, b in itertools.pairwise(lrs)) and lrs[-1] == pytest.approx(1e-3)


def test_keep_best_false_ends_with_the_last_weights(tiny: Corpus) -> None:
    res = train(small(epochs=2, keep_best=False), tiny)
    assert res.metrics["val_ppl"] == res.history[-1]["val_ppl"]


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_gate_bias_sets_the_keep_gate_of_every_layer(arch: str) -> None:
    model = RNNLM(ModelConfig(arch=arch, vocab_size=5, hidden_size=4, num_layers=2))
    set_gate_bias(model, 2.5)
    for layer in range(2):
        b_ih = getattr(model.rnn, f"bias_ih_l{layer}")
        b_hh = getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.equal(b_ih[4:8], torch.full((4,), 2.5))
        assert torch.equal(b_hh[4:8], torch.zeros(4))
