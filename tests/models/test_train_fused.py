"""The training step's fused optimiser computes what PyTorch's default (unfused) one does."""

import pytest
import torch

from models.corpus import Corpus
from models.train import TrainConfig
from models.train.loop import Trainer


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_optimizer_trains_the_same_numbers_as_the_default_loop(
    tiny: Corpus, optimizer: str
) -> None:
    cfg = TrainConfig(
        arch="lstm", embedding_size=16, hidden_size=16, batch_size=4, bptt=8,
        optimizer=optimizer, weight_decay=1e-4, device="cpu",
    )  # fmt: skip
    fused = Trainer(cfg, tiny, None, None, None)
    plain = Trainer(cfg, tiny, None, None, None)
    assert fused.opt.defaults["fused"] is True
    kind = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    plain.opt = kind(
        plain.model.parameters(), lr=cfg.effective_lr, weight_decay=cfg.weight_decay, fused=False
    )
    for _ in range(30):
        fused._train_step()
        plain._train_step()
    moved = 0.0
    start = Trainer(cfg, tiny, None, None, None).model.state_dict()
    trained = plain.model.state_dict()
    for name, a in fused.model.state_dict().items():
        torch.testing.assert_close(a, trained[name], rtol=1e-4, atol=1e-5, msg=name)
        moved = max(moved, float((a - start[name]).abs().max()))
    assert moved > 1e-3  # the steps did train: the comparison is not between two copies
