"""The few pieces of protobuf's wire format needed to stream weights past the protobuf library.

Both directions exist for the same reason: a weight's bytes should go between disk and its destination
without protobuf copying the whole model into one message first.
"""

from __future__ import annotations

WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32 = 0, 1, 2, 5

# Field numbers of onnx.proto3.
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9


class WireError(ValueError):
    """The bytes are not valid protobuf wire format."""


def key(field: int) -> bytes:
    """The key of a length-delimited field."""
    return varint(field << 3 | WIRE_LEN)


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def read_varint(data: memoryview, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise WireError(f"bad varint at byte {position}")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def fields(data: memoryview, start: int, end: int) -> list[tuple[int, int, int | None, int]]:
    """``(number, start, payload start, end)`` of each field of the message in ``data[start:end]``.

    The payload start is ``None`` for fields that are not length-delimited.
    """
    found = []
    position = start
    while position < end:
        field_start = position
        field_key, position = read_varint(data, position)
        number, wire = field_key >> 3, field_key & 7
        payload: int | None = None
        if wire == WIRE_VARINT:
            _, position = read_varint(data, position)
        elif wire == WIRE_FIXED64:
            position += 8
        elif wire == WIRE_FIXED32:
            position += 4
        elif wire == WIRE_LEN:
            length, payload = read_varint(data, position)
            position = payload + length
        else:
            raise WireError(f"unsupported wire type {wire} at byte {field_start}")
        if position > end:
            raise WireError(f"field at byte {field_start} runs past the end of its message")
        found.append((number, field_start, payload, position))
    return found
