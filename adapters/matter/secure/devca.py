"""A development certificate authority: issues Matter RCAC/ICAC/NOC chains in-process (tests, benchmarks).

Production credentials come from the fabric's real issuer (the chip SDK controller, see fabric/controller.py);
this CA exists so the CASE state machines can be exercised without it and with deliberately broken certificates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from adapters.matter.secure import certs, crypto
from adapters.matter.secure.certs import DNAttr, KeyPurpose
from adapters.matter.secure.credentials import DEFAULT_IPK_EPOCH_KEY, OperationalCredentials

__all__ = ["DevCA"]

_NOC_EKU = (KeyPurpose.CLIENT_AUTH, KeyPurpose.SERVER_AUTH)


@dataclass
class DevCA:
    """Root (and optional intermediate) CA of one fabric."""

    fabric_id: int = 1
    with_icac: bool = True
    not_before: int = 0
    not_after: int = 0
    rcac_id: int = 1
    icac_id: int = 2
    ipk_epoch_key: bytes = DEFAULT_IPK_EPOCH_KEY
    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    icac_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def __post_init__(self) -> None:
        self.root_dn = [(DNAttr.MATTER_RCAC_ID, self.rcac_id)]
        self.rcac = certs.build_certificate(
            signer=self.root_key,
            public_key=crypto.public_key_bytes(self.root_key),
            subject=self.root_dn,
            issuer=self.root_dn,
            serial=os.urandom(8),
            not_before=self.not_before,
            not_after=self.not_after,
            is_ca=True,
            path_len=1,
        )
        self.icac: bytes | None = None
        self.icac_dn = [(DNAttr.MATTER_ICAC_ID, self.icac_id)]
        if self.with_icac:
            self.icac = certs.build_certificate(
                signer=self.root_key,
                public_key=crypto.public_key_bytes(self.icac_key),
                subject=self.icac_dn,
                issuer=self.root_dn,
                serial=os.urandom(8),
                not_before=self.not_before,
                not_after=self.not_after,
                is_ca=True,
                path_len=0,
            )

    def issue_noc(
        self,
        public_key: bytes,
        node_id: int,
        *,
        cats: tuple[int, ...] = (),
        not_before: int | None = None,
        not_after: int | None = None,
        ext_key_usage: tuple[int, ...] = _NOC_EKU,
        fabric_id: int | None = None,
    ) -> bytes:
        subject: list[tuple[int, int | str]] = [
            (DNAttr.MATTER_NODE_ID, node_id),
            (DNAttr.MATTER_FABRIC_ID, self.fabric_id if fabric_id is None else fabric_id),
        ]
        subject += [(DNAttr.MATTER_NOC_CAT, c) for c in cats]
        return certs.build_certificate(
            signer=self.icac_key if self.with_icac else self.root_key,
            public_key=public_key,
            subject=subject,
            issuer=self.icac_dn if self.with_icac else self.root_dn,
            serial=os.urandom(8),
            not_before=self.not_before if not_before is None else not_before,
            not_after=self.not_after if not_after is None else not_after,
            is_ca=False,
            ext_key_usage=ext_key_usage,
        )

    def credentials(
        self,
        node_id: int,
        fabric_index: int = 1,
        *,
        cats: tuple[int, ...] = (),
        vendor_id: int = 0xFFF1,
        **noc_kw: object,
    ) -> OperationalCredentials:
        """A fresh operational key plus its NOC chain, as OperationalCredentials."""
        key = ec.generate_private_key(ec.SECP256R1())
        noc = self.issue_noc(crypto.public_key_bytes(key), node_id, cats=cats, **noc_kw)  # type: ignore[arg-type]
        return OperationalCredentials(
            fabric_index=fabric_index,
            fabric_id=self.fabric_id,
            node_id=node_id,
            vendor_id=vendor_id,
            private_key=key,
            noc=noc,
            icac=self.icac,
            rcac=self.rcac,
            ipk_epoch_key=self.ipk_epoch_key,
        )
