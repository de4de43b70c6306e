"""The worker protocol's one rule: a cancel beats a checkpoint-and-stop."""

from __future__ import annotations

from service.jobs.protocol import CANCEL, CHECKPOINT, stronger


def test_the_first_command_is_taken() -> None:
    assert stronger(None, CHECKPOINT) == CHECKPOINT
    assert stronger(None, CANCEL) == CANCEL


def test_cancel_overrides_a_pending_checkpoint_and_nothing_overrides_a_cancel() -> None:
    assert stronger(CHECKPOINT, CANCEL) == CANCEL
    assert stronger(CANCEL, CHECKPOINT) == CANCEL
    assert stronger(CHECKPOINT, CHECKPOINT) == CHECKPOINT
