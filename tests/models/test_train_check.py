"""models.train.check: the weights a held-out check picks, the steps it may add, its limits."""

from __future__ import annotations

import pytest
import torch

from models.corpus import Corpus
from models.lm import RNNLM
from models.train import HeldOutCheck, TrainConfig, train
from tests.models.test_train import small

pytestmark = pytest.mark.numerics


def config(**kw) -> TrainConfig:
    return small(**{"arch": "gru", "epochs": 6, "keep_best": False, **kw})


class Recorder:
    """A score chosen per call (not computed from the weights), and the weights it saw."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores
        self.seen: list[dict[str, torch.Tensor]] = []
        self.modes: list[bool] = []

    def __call__(self, model: RNNLM) -> float:
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        self.modes.append(model.training)
        return self.scores[len(self.seen) - 1]


def test_the_best_scored_epoch_is_kept_not_the_last(tiny: Corpus) -> None:
    rec = Recorder([0.2, 1.4, 0.9, 0.1, 0.3, 0.5])
    res = train(config(), tiny, check=HeldOutCheck(rec, start=0.0))
    assert len(rec.seen) == 6  # every epoch end, from the start
    kept = res.model.state_dict()
    assert all(torch.equal(kept[k], rec.seen[1][k]) for k in kept)
    assert res.metrics["check_score"] == 1.4
    assert res.metrics["val_ppl"] == res.history[1]["val_ppl"]
    assert [h.get("check") for h in res.history] == rec.scores
    assert rec.modes == [False] * 6 and not res.model.training  # scored in eval mode


def test_scoring_starts_at_its_fraction_of_the_planned_steps(tiny: Corpus) -> None:
    rec = Recorder([1.0] * 6)
    res = train(config(), tiny, check=HeldOutCheck(rec, start=0.5))
    per_epoch = res.history[0]["step"]
    assert [h["step"] for h in res.history if "check" in h] == [
        h["step"] for h in res.history if h["step"] >= 3 * per_epoch
    ]
    assert len(rec.seen) == 4


def test_a_failing_check_adds_epochs_at_the_final_lr_up_to_its_limit(tiny: Corpus) -> None:
    per_epoch = train(config(epochs=1), tiny).metrics["steps"]
    cfg = config(epochs=20, max_steps=2 * per_epoch, schedule="cosine", min_lr_ratio=0.1)
    limit = per_epoch + per_epoch // 2
    never = train(cfg, tiny, check=HeldOutCheck(Recorder([0.5] * 9), extra_steps=limit))
    assert never.metrics["steps"] == 2 * per_epoch + limit  # every extra step was spent
    extra = [h for h in never.history if h["step"] > 2 * per_epoch]
    assert len(extra) == 2 and all(h["lr"] == pytest.approx(1e-3) for h in extra)
    # The run ends at the first epoch end that passes.
    late = Recorder([0.5, 0.5, 1.2] + [0.5] * 9)
    res = train(cfg, tiny, check=HeldOutCheck(late, start=0.0, extra_steps=10 * per_epoch))
    assert res.metrics["steps"] == 3 * per_epoch and res.metrics["check_score"] == 1.2


def test_a_passing_check_adds_nothing(tiny: Corpus) -> None:
    planned = train(config(epochs=2), tiny).metrics["steps"]
    res = train(config(epochs=2), tiny, check=HeldOutCheck(Recorder([2.0] * 9), extra_steps=500))
    assert res.metrics["steps"] == planned


def test_a_check_cannot_be_resumed_and_its_fields_are_checked(tiny: Corpus, tmp_path) -> None:
    check = HeldOutCheck(Recorder([1.0]))
    with pytest.raises(ValueError, match="checkpoint"):
        train(config(), tiny, checkpoint_dir=str(tmp_path), check=check)
    with pytest.raises(ValueError):
        HeldOutCheck(Recorder([]), start=1.5)
    with pytest.raises(ValueError):
        HeldOutCheck(Recorder([]), extra_steps=-1)
