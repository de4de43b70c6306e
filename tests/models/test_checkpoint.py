from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)


def test_round_trip_and_replace(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, {"a": torch.arange(3.0)}, {"step": 1, "inf": float("inf")})
    save_checkpoint(tmp_path, {"a": torch.arange(4.0), "s": torch.tensor(2.0)}, {"step": 2})
    tensors, state = load_checkpoint(tmp_path)
    assert state == {"step": 2}
    assert torch.equal(tensors["a"], torch.arange(4.0)) and tensors["s"].item() == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_path(tmp_path).name]


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    checkpoint_path(tmp_path).mkdir()  # the final rename onto a directory fails
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"a": torch.zeros(2)}, {"step": 1})
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_path(tmp_path).name]


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "])
def test_corrupt_checkpoint_raises_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    checkpoint_path(tmp_path).write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_optimizer_state_round_trip(kind: str) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    make = {
        "adam": lambda p: torch.optim.Adam(p, lr=0.1),
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    }[kind]
    opt = make(net.parameters())
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_flat(opt)
    clone = torch.nn.Linear(3, 2)
    clone.load_state_dict(net.state_dict())
    opt2 = make(clone.parameters())
    optimizer_from_flat(opt2, tensors, meta)
    x = torch.randn(4, 3)
    for o, n in ((opt, net), (opt2, clone)):
        o.zero_grad()
        n(x).pow(2).sum().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), clone.parameters(), strict=True))
