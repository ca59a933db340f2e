"""Node identity: owner-only credential storage, and real minting by the chip SDK controller in a subprocess."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from adapters.matter.fabric.controller import ControllerError, ControllerRunner, runner_unavailable_reason
from adapters.matter.fabric.identity import credentials_dir, ensure_identity, mint_credentials
from adapters.matter.secure import crypto
from adapters.matter.secure.case import CASEResponder
from adapters.matter.secure.case_initiator import CASEInitiator
from adapters.matter.secure.credentials import CredentialsError, OperationalCredentials
from adapters.matter.secure.devca import DevCA

_SKIP = runner_unavailable_reason()


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ----------------------------------------------------------------------------------------------- storage


def test_save_is_owner_only_and_load_roundtrips(tmp_path: Path) -> None:
    creds = DevCA(fabric_id=0x33).credentials(0x99, fabric_index=3)
    store = tmp_path / "creds"
    creds.save(store)
    assert _mode(store) == 0o700
    assert _mode(store / "fabric-3.key") == 0o600 and _mode(store / "fabric-3.json") == 0o600
    assert not list(store.glob(".*.tmp"))
    loaded = OperationalCredentials.load(store, 3)
    assert (loaded.noc, loaded.icac, loaded.rcac, loaded.node_id, loaded.fabric_id) == (
        creds.noc,
        creds.icac,
        creds.rcac,
        0x99,
        0x33,
    )
    assert loaded.public_key == creds.public_key and loaded.ipk == creds.ipk
    assert loaded.compressed_fabric_id == crypto.compressed_fabric_id(creds.root_public_key, 0x33)


def test_load_refuses_group_or_world_accessible_files(tmp_path: Path) -> None:
    creds = DevCA().credentials(1)
    creds.save(tmp_path / "c")
    key = tmp_path / "c" / "fabric-1.key"
    os.chmod(key, 0o640)
    with pytest.raises(CredentialsError, match=r"fabric-1\.key: mode 0640 .*chmod 0600"):
        OperationalCredentials.load(tmp_path / "c", 1)
    os.chmod(key, 0o600)
    os.chmod(tmp_path / "c", 0o755)
    with pytest.raises(CredentialsError, match="chmod 0700"):
        OperationalCredentials.load(tmp_path / "c", 1)


def test_load_reports_missing_and_corrupt_files(tmp_path: Path) -> None:
    creds = DevCA().credentials(1)
    creds.save(tmp_path)
    with pytest.raises(CredentialsError, match=r"fabric-2\.key: missing"):
        OperationalCredentials.load(tmp_path, 2)
    (tmp_path / "fabric-1.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="corrupt"):
        OperationalCredentials.load(tmp_path, 1)


def test_credentials_reject_key_not_matching_noc() -> None:
    ca = DevCA()
    a, b = ca.credentials(1), ca.credentials(2)
    with pytest.raises(CredentialsError, match="public key does not match"):
        OperationalCredentials(
            fabric_index=1,
            fabric_id=a.fabric_id,
            node_id=1,
            vendor_id=0xFFF1,
            private_key=b.private_key,
            noc=a.noc,
            icac=a.icac,
            rcac=a.rcac,
        )


def test_ensure_identity_reloads_without_minting(tmp_path: Path) -> None:
    creds = DevCA(fabric_id=1).credentials(0x1D)
    creds.save(credentials_dir(tmp_path))

    def no_runner(_: Path) -> ControllerRunner:
        raise AssertionError("must not mint when credentials are stored")

    again = ensure_identity(tmp_path, 0x1D, fabric_id=1, runner_factory=no_runner)
    assert again.noc == creds.noc
    with pytest.raises(CredentialsError, match="remove the stored credentials"):
        ensure_identity(tmp_path, 0x1E, fabric_id=1, runner_factory=no_runner)


# ----------------------------------------------------------------------------------------------- real SDK minting


@pytest.mark.interop
@pytest.mark.skipif(_SKIP is not None, reason=f"chip SDK controller unavailable: {_SKIP}")
def test_sdk_mints_identity_that_survives_restart_and_does_case(tmp_path: Path) -> None:
    node_id = 0x0000_0000_0000_0A1F
    creds = ensure_identity(tmp_path, node_id, fabric_id=0x1234)
    assert (creds.node_id, creds.fabric_id, creds.vendor_id) == (node_id, 0x1234, 0xFFF1)
    assert creds.icac is not None and creds.ipk_epoch_key == b"temporary ipk 01"
    creds.validate(time.time())
    store = credentials_dir(tmp_path)
    assert _mode(store) == 0o700 and _mode(store / "fabric-1.key") == 0o600
    admin_dir = tmp_path / "fabric-admin" / "controller"
    assert _mode(admin_dir) == 0o700
    assert all(_mode(p) & 0o077 == 0 for p in admin_dir.iterdir()), "SDK storage must be owner-only"

    # Restart: identity reloads from disk; the fabric admin reloads the same CA from its storage and mints a
    # controller-side identity on the same root, whose compressed fabric id agrees with ours.
    assert (
        ensure_identity(tmp_path, node_id, fabric_id=0x1234).private_key.private_numbers()
        == creds.private_key.private_numbers()
    )
    with ControllerRunner(tmp_path / "fabric-admin") as runner:
        info = runner.init_fabric(fabric_id=0x1234)
        assert info["compressed_fabric_id"] == creds.compressed_fabric_id_int
        peer = mint_credentials(runner, 0x0000_0000_0001_0001, now=time.time())
    assert peer.rcac == creds.rcac

    # Both SDK-minted identities complete CASE through our responder and initiator.
    responder = CASEResponder([creds], 11, now=time.time)
    initiator = CASEInitiator(peer, node_id, 22, now=time.time)
    pending = [("I", *initiator.start())]
    while pending:
        sender, op, payload = pending.pop(0)
        target = responder if sender == "I" else initiator
        pending += [("R" if sender == "I" else "I", o, p) for o, p in target.receive(op, payload)]
    assert responder.session is not None and initiator.session is not None
    assert responder.session.i2r_key == initiator.session.i2r_key
    assert responder.session.peer_node_id == 0x0000_0000_0001_0001


@pytest.mark.interop
@pytest.mark.skipif(_SKIP is not None, reason=f"chip SDK controller unavailable: {_SKIP}")
def test_runner_reports_worker_errors(tmp_path: Path) -> None:
    with ControllerRunner(tmp_path) as runner:
        with pytest.raises(ControllerError, match="call init first"):
            runner.issue_noc_chain(b"\x30\x00", 1)
        with pytest.raises(ControllerError, match="KeyError"):
            runner.call("no_such_op")
        assert runner.call("ping") == "pong"
