"""Preparing a loaded version for serving: precision (`--half`), decoder layout, warm-up and
intra-op threads. Runs on the inference thread, like every other torch call of the server."""

from __future__ import annotations

import logging

from models.lm import HALF_DTYPES, tune_decoder
from models.store import LoadedModel

from .steps import intra_op_threads, warm_up

log = logging.getLogger("gatehouse.inference")


def _set_precision(loaded: LoadedModel, half: str) -> None:
    model = loaded.model
    on_cuda = model.decoder.weight.is_cuda
    # bf16 also runs on CPUs (2x faster at batch 64 on avx512_bf16/AMX). fp16 runs on CPUs
    # too, but without fp16 matrix units it is 4x slower than float32 at batch 64 (330 vs
    # 81 ms on the dev VM), so a CPU keeps float32 for it.
    if half == "bf16" or (half == "fp16" and on_cuda):
        # Weights and carried states in half precision; the softmax stays float32.
        model.to(HALF_DTYPES[half])
        if half == "bf16" and on_cuda:
            # torch.backends.cudnn.is_acceptable() refuses bf16, so the RNN weights are never
            # flattened and cuDNN compacts them on every pass (H200: 1.2 vs 0.6 ms at batch 1).
            log.warning(
                "--half bf16 on CUDA is slower than float32 for recurrent models (cuDNN "
                "copies bf16 weights on every pass); float32 (--half off) is faster: %s@%s",
                loaded.name,
                loaded.version,
            )
    elif half != "off":
        log.warning(
            "--half fp16 is slow on a CPU: %s@%s stays float32 (bf16 is the CPU's fast half)",
            loaded.name,
            loaded.version,
        )


def prepare(loaded: LoadedModel, half: str, max_batch_size: int, max_threads: int) -> int:
    """Make `loaded` ready to serve; returns the intra-op thread count its passes run with.

    Its first request must not pay for kernel selection and allocator growth, hence the
    warm-up at the batch sizes serving will see.
    """
    _set_precision(loaded, half)
    model = loaded.model
    tune_decoder(model)
    batch = min(max_batch_size, 64)
    warm_up(model, sorted({1, batch}))
    if model.decoder.weight.is_cuda:
        return max_threads  # the host threads only launch kernels
    return intra_op_threads(loaded.config, batch, max_threads)
