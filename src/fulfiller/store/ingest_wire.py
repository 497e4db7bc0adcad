"""The ingest child's wire format, spoken by both sides (``ingest_client`` and ``ingester``).

Each message is a 4-byte little-endian length and a pickle. The parent sends
``(seq, event_id, topic, body, received_at)``, or ``(seq,)`` to probe the child
(answered True with the batch it arrives in); the child answers a list of
``(seq, verdict)``: True (stored), False (a duplicate), or ``(refusal, text)``
where the refusal is ``BAD_BODY`` (not a JSON object) or ``UNAVAILABLE`` (the
store could not commit it).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from fulfiller.intake.admission import Delivery

_LENGTH = struct.Struct("<I")
BAD_BODY = "bad_body"
UNAVAILABLE = "unavailable"


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Messages out of a byte stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + size
            if end > len(buffer):
                break
            messages.append(pickle.loads(memoryview(buffer)[start + _LENGTH.size:end]))
            start = end
        del buffer[:start]
        return messages


def to_wire(seq: int, delivery: Delivery) -> tuple[Any, ...]:
    return (seq, delivery.event_id, delivery.topic, delivery.body, delivery.received_at)


def probe_to_wire(seq: int) -> tuple[Any, ...]:
    return (seq,)


def from_wire(message: tuple[Any, ...]) -> tuple[int, Delivery | None]:
    """``(seq, delivery)``, or ``(seq, None)`` for a probe."""
    seq, *fields = message
    return seq, Delivery(*fields) if fields else None
