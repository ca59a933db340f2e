"""A commissioning that fails device attestation names `matter.paa_trust_store` and the command fetching PAAs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.matter.fabric.admin import FabricAdmin
from adapters.matter.fabric.controller import ControllerError
from gateway.config import MatterConfig


async def test_failed_attestation_error_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = FabricAdmin(tmp_path, MatterConfig())

    async def call(op: str, _timeout: float | None = None, **args: Any) -> Any:
        raise ControllerError("commission: ChipStackError: Failed Device Attestation")

    monkeypatch.setattr(admin, "call", call)
    with pytest.raises(ControllerError) as info:
        await admin.commission("MT:Y.K90", timeout_s=1)
    text = str(info.value)
    assert text.startswith("commission: ChipStackError: Failed Device Attestation: ")
    assert "matter.paa_trust_store" in text and "otagw sources check paa" in text and "unset" in text
    assert "paa-certificates" in text and "Offline" in text

    async def other(op: str, _timeout: float | None = None, **args: Any) -> Any:
        raise ControllerError("commission: timeout")

    monkeypatch.setattr(admin, "call", other)
    with pytest.raises(ControllerError, match=r"^commission: timeout$"):
        await admin.commission("MT:Y.K90", timeout_s=1)
