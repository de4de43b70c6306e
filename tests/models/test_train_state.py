"""The checkpointed loop counters: one record out, the same record back in."""

from __future__ import annotations

import math

import pytest

from models.train.state import LoopState


def test_state_dict_round_trips_every_counter() -> None:
    loop = LoopState(step=7, epoch=1, batch_pos=3, best_val=12.5, bad_epochs=1)
    loop.history.append({"epoch": 1, "val_ppl": 12.5})
    back = LoopState()
    back.load_state_dict(loop.state_dict())
    assert back == loop
    back.history.append({"epoch": 2})
    assert len(loop.history) == 1  # the record is a copy, not the live list


def test_a_partial_record_is_refused() -> None:
    state = LoopState().state_dict()
    del state["lr_factor"]
    with pytest.raises(KeyError):
        LoopState().load_state_dict(state)


def test_a_fresh_loop_has_no_best_yet() -> None:
    assert math.isinf(LoopState().best_val) and LoopState().step == 0
