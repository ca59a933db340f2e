"""The provider node's operational identity: key + CSR, NOC chain minted by the fabric admin, persisted, reloaded.

`ensure_identity(data_dir, node_id, ...)` returns the node's `OperationalCredentials`: loaded from
`<data_dir>/credentials/` when present (and still matching the requested node/fabric), otherwise freshly made:
a P-256 key generated here (it never leaves this process), a PKCS#10 CSR, the chain issued by the chip SDK
controller (`ControllerRunner`, fabric storage in `<data_dir>/fabric-admin/`), validated, then saved owner-only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adapters.matter.fabric.controller import ControllerRunner, NOCChain
from adapters.matter.secure.credentials import (
    DEFAULT_IPK_EPOCH_KEY,
    CredentialsError,
    OperationalCredentials,
    list_fabric_indexes,
)

__all__ = ["credentials_dir", "ensure_identity", "make_csr", "mint_credentials"]


def credentials_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "credentials"


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DER PKCS#10 CSR for the operational key (the issuer only uses its public key)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otagw OTA provider")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def mint_credentials(
    runner: ControllerRunner,
    node_id: int,
    *,
    fabric_index: int = 1,
    now: float | None = None,
) -> OperationalCredentials:
    """Generate a key, have the runner's fabric admin issue its NOC chain, validate it, return credentials."""
    key = ec.generate_private_key(ec.SECP256R1())
    chain: NOCChain = runner.issue_noc_chain(make_csr(key), node_id)
    creds = OperationalCredentials(
        fabric_index=fabric_index,
        fabric_id=chain.fabric_id,
        node_id=node_id,
        vendor_id=chain.vendor_id,
        private_key=key,
        noc=chain.noc,
        icac=chain.icac,
        rcac=chain.rcac,
        ipk_epoch_key=chain.ipk_epoch_key or DEFAULT_IPK_EPOCH_KEY,
    )
    creds.validate(now)
    return creds


def ensure_identity(
    data_dir: str | os.PathLike[str],
    node_id: int,
    *,
    fabric_id: int = 1,
    vendor_id: int = 0xFFF1,
    fabric_index: int = 1,
    now: Callable[[], float] = time.time,
    runner_factory: Callable[[Path], AbstractContextManager[ControllerRunner]] | None = None,
) -> OperationalCredentials:
    """Load the node's credentials for `fabric_index`, or mint and store them on first start."""
    store = credentials_dir(data_dir)
    if fabric_index in list_fabric_indexes(store):
        creds = OperationalCredentials.load(store, fabric_index)
        if creds.node_id != node_id or creds.fabric_id != fabric_id:
            raise CredentialsError(
                f"{store}: stored identity is node 0x{creds.node_id:X} on fabric 0x{creds.fabric_id:X}, "
                f"configured node 0x{node_id:X} on fabric 0x{fabric_id:X}; remove the stored credentials to re-mint"
            )
        creds.validate(now())
        return creds
    factory = runner_factory or (lambda d: ControllerRunner(d))
    with factory(Path(data_dir) / "fabric-admin") as runner:
        runner.init_fabric(fabric_id=fabric_id, vendor_id=vendor_id)
        creds = mint_credentials(runner, node_id, fabric_index=fabric_index, now=now())
    creds.save(store)
    return creds
