"""EZSP frame codec for the simulated NCP: headers (legacy and v8+ extended) and parameters by command name.

Command and callback parameter layouts are not re-typed here: they come from bellows' own per-version command
tables (`bellows.ezsp.v13.commands.COMMANDS`, name -> (frame id, request schema, response schema)) and the field
types in `bellows.types`, used purely as a field library for encoding and decoding. The header rules are UG100's:

- every frame starts with a sequence number; a response carries the command's, a callback the last one seen;
- legacy header (before version 8, and always for the first `version` command): seq, frame control, frame id;
- extended header (version >= 8): seq, frame control low, frame control high (0x01 = format version 1), frame
  id as uint16 little-endian;
- frame control low byte of an NCP frame: 0x80 = response; bits 3-4 callback type (0x10 = asynchronous, which
  is what a UART NCP sends); a host frame has 0x00.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import bellows.types as bt
from bellows.ezsp.v13.commands import COMMANDS as V13_COMMANDS

EZSP_VERSION = 13
STACK_TYPE = 2  # mesh stack
STACK_VERSION = 0x7450  # EmberZNet 7.4.5.0, the release series that speaks EZSP v13

FC_RESPONSE = 0x80
FC_ASYNC_CALLBACK = 0x10
FC_HIGH_FORMAT_1 = 0x01

COMMANDS: dict[str, tuple[int, Any, Any]] = dict(V13_COMMANDS)
NAME_BY_ID: dict[int, str] = {frame_id: name for name, (frame_id, _tx, _rx) in COMMANDS.items()}


class EzspDecodeError(ValueError):
    """An EZSP frame that cannot be decoded; the message says where."""


@dataclass(frozen=True)
class EzspCommand:
    seq: int
    frame_id: int
    params: bytes
    legacy: bool  # sent with the legacy 3-byte header


def parse_command(data: bytes) -> EzspCommand:
    """Split a host frame into header and parameter bytes (legacy or extended header, told by byte 2)."""
    if len(data) < 3:
        raise EzspDecodeError(f"EZSP frame of {len(data)} bytes is shorter than a header")
    if data[1] & FC_RESPONSE:
        raise EzspDecodeError("frame control byte 1 has the response bit set in a host frame")
    if data[2] == FC_HIGH_FORMAT_1 and len(data) >= 5:
        return EzspCommand(
            seq=data[0], frame_id=int.from_bytes(data[3:5], "little"), params=data[5:], legacy=False
        )
    return EzspCommand(seq=data[0], frame_id=data[2], params=data[3:], legacy=True)


def encode_frame(seq: int, frame_id: int, params: bytes, *, legacy: bool, callback: bool = False) -> bytes:
    low = FC_RESPONSE | (FC_ASYNC_CALLBACK if callback else 0)
    if legacy:
        return bytes([seq & 0xFF, low, frame_id & 0xFF]) + params
    return bytes([seq & 0xFF, low, FC_HIGH_FORMAT_1]) + frame_id.to_bytes(2, "little") + params


def decode_request(name: str, params: bytes) -> dict[str, Any]:
    """The named command's request fields, decoded with bellows' schema for it."""
    schema = COMMANDS[name][1]
    try:
        if isinstance(schema, dict):
            values, rest = bt.deserialize_dict(params, schema)
        else:
            obj, rest = schema.deserialize(params)
            values = obj.as_dict() if hasattr(obj, "as_dict") else {"value": obj}
    except Exception as exc:
        raise EzspDecodeError(f"{name}: cannot decode parameters {params.hex()}: {exc}") from None
    if rest:
        raise EzspDecodeError(f"{name}: {len(rest)} trailing parameter bytes {rest.hex()}")
    return dict(values)


def encode_response(name: str, values: dict[str, Any]) -> bytes:
    """The named command's response (or callback) fields, encoded with bellows' schema for it."""
    schema = COMMANDS[name][2]
    if isinstance(schema, dict):
        missing = [k for k in schema if k not in values]
        if missing:
            raise KeyError(f"{name}: response lacks {missing}")
        return b"".join(typ(values[key]).serialize() for key, typ in schema.items())
    return bytes(schema(**values).serialize())


def frame_id(name: str) -> int:
    return COMMANDS[name][0]
