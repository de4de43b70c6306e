"""Hypothesis runs derandomized: the same examples on every run, so CI is deterministic and a
failure reproduces. `HYPOTHESIS_PROFILE=explore make test` searches fresh examples instead."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header() -> str:
    # Trained numbers depend on the kernel family PyTorch picked (ATEN_CPU_CAPABILITY): say
    # which one this run used, so a failure can be reproduced on another machine.
    import torch

    return f"torch {torch.__version__}, CPU kernels: {torch.backends.cpu.get_cpu_capability()}"
