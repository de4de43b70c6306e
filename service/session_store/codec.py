"""A session's recurrent state as bytes and back: the raw values, their shape and dtype,
never pickle. An LSTM's state is two tensors (h, c) of one shape, stored one after the other."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..steps import RowState

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NAMES = {v: k for k, v in _DTYPES.items()}


class StateFormatError(ValueError):
    """Stored state bytes that do not match their declared shape and dtype."""


@dataclass(frozen=True, slots=True)
class PackedState:
    data: bytes
    shape: tuple[int, ...]  # of each part
    parts: int  # 1 (rnn, gru) or 2 (lstm: h then c)
    dtype: str

    def fields(self) -> dict[str, bytes | str]:
        """The Redis hash fields that hold it."""
        return {
            "state": self.data,
            "shape": ",".join(map(str, self.shape)),
            "parts": str(self.parts),
            "dtype": self.dtype,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> PackedState | None:
        """None when the session has no state yet (no feed so far: the zero state)."""
        data = fields.get(b"state")
        if not data:
            return None
        try:
            shape = tuple(int(x) for x in fields[b"shape"].decode().split(","))
            return cls(data, shape, int(fields[b"parts"]), fields[b"dtype"].decode())
        except (KeyError, ValueError) as e:
            raise StateFormatError(f"stored session state is malformed: {e}") from None


def _raw(t: torch.Tensor) -> bytes:
    # A byte view of the values as they are: exact for every dtype, bfloat16 included.
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def pack(state: RowState) -> PackedState:
    parts = list(state) if isinstance(state, tuple) else [state]
    first = parts[0]
    if first.dtype not in _NAMES or any(p.shape != first.shape for p in parts):
        raise StateFormatError(f"cannot store a state of {first.dtype} {tuple(first.shape)}")
    data = b"".join(_raw(p) for p in parts)
    return PackedState(data, tuple(first.shape), len(parts), _NAMES[first.dtype])


def unpack(packed: PackedState, device: torch.device) -> RowState:
    dtype = _DTYPES.get(packed.dtype)
    if dtype is None or packed.parts not in (1, 2):
        raise StateFormatError(f"unknown stored state kind {packed.dtype} x{packed.parts}")
    count = 1
    for n in packed.shape:
        count *= n
    size = count * torch.empty((), dtype=dtype).element_size()
    if len(packed.data) != size * packed.parts:
        raise StateFormatError(
            f"stored state has {len(packed.data)} bytes, not {size * packed.parts}"
        )
    flat = torch.frombuffer(bytearray(packed.data), dtype=torch.uint8)
    tensors = [
        flat[i * size : (i + 1) * size].view(dtype).reshape(packed.shape).to(device)
        for i in range(packed.parts)
    ]
    return (tensors[0], tensors[1]) if packed.parts == 2 else tensors[0]
