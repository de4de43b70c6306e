"""The peer's figures count only when every answer was a 200 and its script succeeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import peer

SUMMARY = """Summary:
  Total:\t2.0012 secs
  Requests/sec:\t{rps}

Latency distribution:
  50% in 0.0040 secs
  99% in 0.0100 secs

Status code distribution:
{statuses}
"""


def _script(tmp_path: Path, statuses: str, rc: int, rps: str = "12000.5") -> Path:
    folder = tmp_path / "torchserve"
    folder.mkdir()
    text = SUMMARY.format(rps=rps, statuses=statuses)
    (folder / "run_peer.sh").write_text(f"cat <<'END'\n{text}END\nexit {rc}\n")
    return folder


def test_a_run_of_200s_is_a_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer, "PEER_DIR", _script(tmp_path, "  [200]\t24001 responses", 0))
    result = peer.run(64, 5, 64, 1)
    assert result.rps == 12000.5 and result.ok == 24001 and result.failed == 0


@pytest.mark.parametrize(
    ("statuses", "rc"),
    [
        ("  [503]\t24001 responses", 1),  # a dead worker's fast 503s
        ("  [200]\t100 responses\n  [503]\t5 responses", 0),  # even when the script says 0
        ("  [200]\t100 responses", 1),  # the script's own failure
    ],
)
def test_any_other_answer_voids_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, statuses: str, rc: int
) -> None:
    monkeypatch.setattr(peer, "PEER_DIR", _script(tmp_path, statuses, rc))
    with pytest.raises(peer.PeerFailed, match="TorchServe peer run failed"):
        peer.run(64, 5, 64, 1)
