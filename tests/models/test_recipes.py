"""Named recipes: their settings, the train CLI under them, and resuming under them."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models import store
from models.averaging import IterateAverage
from models.builtin import builtin_text
from models.corpus import Corpus
from models.evaluate import nll_sum
from models.recipes import RECIPES, recipe_settings
from models.train import STOP_CHECKPOINT, TrainConfig, TrainingCancelled, train
from models.train.cli import main

pytestmark = pytest.mark.numerics

ARCHS = ("rnn", "lstm", "gru")


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("arch", ARCHS)
def test_every_recipe_is_a_valid_config(name: str, arch: str) -> None:
    cfg = TrainConfig(arch=arch, **recipe_settings(name, arch))
    assert cfg.recipe == name
    assert cfg.tied and cfg.locked_dropout and cfg.weight_drop > 0
    # The tanh RNN's own settings: a gentler weight drop and lr than the gated kinds'.
    if arch == "rnn":
        lstm = TrainConfig(arch="lstm", **recipe_settings(name, "lstm"))
        assert cfg.weight_drop < lstm.weight_drop and cfg.effective_lr < lstm.effective_lr


def test_unknown_recipe_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_settings("wt2-huge", "lstm")
    with pytest.raises(ValueError, match="unknown recipe"):
        TrainConfig(recipe="wt2-huge")


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    lines = builtin_text("longrange", seed=3).splitlines()
    root = tmp_path_factory.mktemp("splits")
    paths = []
    for name, part in (("train", lines[:300]), ("valid", lines[300:330]), ("test", lines[330:360])):
        path = root / f"{name}.txt"
        path.write_text("\n".join(part) + "\n", encoding="utf-8")
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("arch", ARCHS)
def test_recipe_trains_end_to_end_for_two_steps(
    arch: str, splits: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_txt, valid_txt, test_txt = splits
    argv = ["--arch", arch, "--recipe", "wt2-medium", "--train", train_txt]
    argv += ["--valid", valid_txt, "--test", test_txt, "--max-steps", "2", "--device", "cpu"]
    argv += ["--model-dir", str(tmp_path), "--name", "m", "--progress", "none"]
    argv += ["--weight-decay", "0.02", "--num-threads", "1"]  # a flag overrides the recipe
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metrics"]["steps"] == 2
    loaded = store.load_version(tmp_path, "m")
    hp = loaded.meta["hyperparameters"]
    expected = recipe_settings("wt2-medium", arch)
    assert hp["recipe"] == "wt2-medium" and hp["weight_decay"] == 0.02
    for key in ("hidden_size", "weight_drop", "locked_dropout", "ar", "tar", "optimizer", "lr"):
        assert hp[key] == expected[key], key
    assert loaded.config.hidden_size == 650 and loaded.config.tied


def test_flags_override_the_recipe_and_no_recipe_keeps_the_defaults() -> None:
    from models.train.cli import _config, _parser

    args = _parser().parse_args(
        ["--arch", "gru", "--recipe", "wt2-small", "--model-dir", "d", "--name", "n"]
        + ["--weight-drop", "0", "--hidden-size", "64", "--embedding-size", "64"]
    )
    cfg = _config(args)
    assert cfg.weight_drop == 0.0 and cfg.hidden_size == 64 and cfg.recipe == "wt2-small"
    assert cfg.tar == RECIPES["wt2-small"]["gru"]["tar"]
    plain = _config(_parser().parse_args(["--arch", "gru", "--model-dir", "d", "--name", "n"]))
    assert plain == replace(
        TrainConfig(arch="gru"),
        **{
            k: getattr(plain, k)
            for k in ("lowercase", "amp", "progress_bar", "progress_interval_s")
        },
    )
    assert plain.recipe is None and plain.weight_drop == 0.0 and not plain.locked_dropout


def test_a_switch_the_recipe_turns_on_can_be_turned_off_by_flag() -> None:
    from models.train.cli import _config, _parser

    base = ["--arch", "lstm", "--recipe", "wt2-small", "--model-dir", "d", "--name", "n"]
    on = _config(_parser().parse_args(base))
    assert on.tied and on.locked_dropout
    off = _config(_parser().parse_args([*base, "--no-tied", "--no-locked-dropout"]))
    assert not off.tied and not off.locked_dropout and off.hidden_size == on.hidden_size


def _small_recipe(arch: str) -> TrainConfig:
    settings = recipe_settings("wt2-small", arch)
    settings.update(
        embedding_size=16,
        hidden_size=16,
        batch_size=4,
        bptt=10,
        epochs=2,
        warmup_steps=5,
        device="cpu",
        num_threads=1,
        progress_interval_s=0.0,
    )
    return TrainConfig(arch=arch, **settings)


@pytest.mark.parametrize("arch", ["lstm", "rnn"])
def test_resume_under_the_recipe_reproduces_the_uninterrupted_run(
    arch: str, tiny: Corpus, tmp_path: Path
) -> None:
    cfg = _small_recipe(arch)
    whole = train(cfg, tiny)
    steps = whole.metrics["steps"]
    stop_at = [steps // 3, steps // 2 + steps // 4]
    seen = {"step": 0}

    def callback(progress: dict) -> None:
        seen["step"] = progress["step"]

    def should_stop() -> str | None:
        if stop_at and seen["step"] >= stop_at[0]:
            stop_at.pop(0)
            return STOP_CHECKPOINT
        return None

    ckdir = str(tmp_path / "ck")
    for _ in range(2):
        with pytest.raises(TrainingCancelled) as info:
            train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=ckdir)
        assert info.value.checkpointed
    resumed = train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=ckdir)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = {"tokens_per_s", "seconds"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in whole.history
    ]


def test_iterate_average_is_the_mean_and_applied_restores() -> None:
    model = torch.nn.Linear(3, 2)
    avg = IterateAverage()
    avg.update(model)  # not started: nothing happens
    assert not avg.active and avg.items() == []
    seen = []
    avg.start(model)
    seen.append(model.weight.detach().clone())
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        avg.update(model)
        seen.append(model.weight.detach().clone())
    own = model.weight.detach().clone()
    assert torch.allclose(dict(avg.items())["weight"], torch.stack(seen).mean(0), atol=1e-6)
    with pytest.raises(RuntimeError), avg.applied(model):
        assert torch.allclose(model.weight, torch.stack(seen).mean(0), atol=1e-6)
        raise RuntimeError("validation failed")
    assert torch.equal(model.weight, own)
    tensors, meta = avg.to_checkpoint()
    again = IterateAverage()
    again.load_checkpoint(model, tensors, meta, torch.device("cpu"))
    assert again.count == 4 and torch.equal(
        dict(again.items())["weight"], dict(avg.items())["weight"]
    )
    with pytest.raises(ValueError, match="do not fit"):
        again.load_checkpoint(torch.nn.Linear(3, 4), tensors, meta, torch.device("cpu"))


def _ntasgd(**kw) -> TrainConfig:
    base = dict(
        arch="gru",
        embedding_size=48,
        hidden_size=48,
        batch_size=4,
        bptt=10,
        epochs=8,  # validation on this tiny corpus turns worse at epoch 6
        optimizer="ntasgd",
        lr=4.0,
        asgd_nonmono=1,
        lr_decay=1.0,
        early_stop=0,
        device="cpu",
        num_threads=1,
        progress_interval_s=0.0,
        keep_best=False,
    )
    return TrainConfig(**{**base, **kw})


def test_ntasgd_averages_once_validation_stalls_and_resumes_exactly(
    tiny: Corpus, tmp_path: Path
) -> None:
    cfg = _ntasgd()
    whole = train(cfg, tiny)
    averaged = [h for h in whole.history if "averaged_steps" in h]
    assert averaged, "validation never stalled: the test needs a run where averaging starts"
    first = whole.history.index(averaged[0])
    # It started after an epoch worse than the best before it.
    before = whole.history[first - 1]
    assert before["val_ppl"] > min(h["val_ppl"] for h in whole.history[: first - 1])
    steps = whole.metrics["steps"]
    stop_at = [whole.history[first]["step"] - 3, steps - 2]  # both while averaging
    seen = {"step": 0}

    def callback(progress: dict) -> None:
        seen["step"] = progress["step"]

    def should_stop() -> str | None:
        if stop_at and seen["step"] >= stop_at[0]:
            stop_at.pop(0)
            return STOP_CHECKPOINT
        return None

    ckdir = str(tmp_path / "ck")
    for _ in range(2):
        with pytest.raises(TrainingCancelled):
            train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=ckdir)
    resumed = train(cfg, tiny, callback=callback, should_stop=should_stop, checkpoint_dir=ckdir)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_ppl"] for h in resumed.history] == [h["val_ppl"] for h in whole.history]
    # The run ends with the averaged weights: they score what the last validation reported.
    total, count = nll_sum(whole.model, tiny.valid, cfg.eval_batch_size, cfg.bptt)
    assert math.isclose(math.exp(total / count), whole.history[-1]["val_ppl"], rel_tol=1e-6)
    assert [h.get("averaged_steps") for h in resumed.history] == [
        h.get("averaged_steps") for h in whole.history
    ]
