"""The provider node's operational credentials on one fabric, and their owner-only persistence in the data dir.

Layout under `<data_dir>/` (directory 0700): `fabric-<index>.json` (certificates, ids, IPK epoch key; 0600) and
`fabric-<index>.key` (the operational private key, PKCS#8 PEM; 0600). Files are written atomically (temp file,
fsync, rename). Loading refuses key or credential files readable or writable by group/others, and a data dir
open to them, with a `CredentialsError` that says which path and which mode to fix.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapters.matter.secure import certs, crypto

__all__ = [
    "DEFAULT_IPK_EPOCH_KEY",
    "CredentialsError",
    "OperationalCredentials",
    "list_fabric_indexes",
]

DEFAULT_IPK_EPOCH_KEY = b"temporary ipk 01"  # the chip SDK example issuer's default IPK epoch key


class CredentialsError(ValueError):
    """Stored credentials that are missing, unsafe (file modes) or inconsistent."""


@dataclass
class OperationalCredentials:
    """Everything the node needs to be an operational node on one fabric."""

    fabric_index: int
    fabric_id: int
    node_id: int
    vendor_id: int
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    noc: bytes = field(repr=False)
    icac: bytes | None = field(repr=False)
    rcac: bytes = field(repr=False)
    ipk_epoch_key: bytes = field(default=DEFAULT_IPK_EPOCH_KEY, repr=False)

    def __post_init__(self) -> None:
        noc = certs.decode_certificate(self.noc, "NOC")
        self._rcac_cert = certs.decode_certificate(self.rcac, "RCAC")
        if noc.public_key != crypto.public_key_bytes(self.private_key):
            raise CredentialsError("the NOC's public key does not match the operational private key")
        if noc.node_id != self.node_id or noc.fabric_id != self.fabric_id:
            raise CredentialsError(
                f"NOC identity (node 0x{noc.node_id or 0:X}, fabric 0x{noc.fabric_id or 0:X}) differs from "
                f"node 0x{self.node_id:X}, fabric 0x{self.fabric_id:X}"
            )
        if len(self.ipk_epoch_key) != 16:
            raise CredentialsError(f"IPK epoch key must be 16 bytes, got {len(self.ipk_epoch_key)}")
        if not 1 <= self.fabric_index <= 254:
            raise CredentialsError(f"fabric index must be 1..254, got {self.fabric_index}")

    @property
    def rcac_cert(self) -> certs.MatterCertificate:
        """The decoded trusted root (kept decoded: CASE validates every peer chain against it)."""
        return self._rcac_cert

    @property
    def root_public_key(self) -> bytes:
        return self._rcac_cert.public_key

    @property
    def public_key(self) -> bytes:
        return crypto.public_key_bytes(self.private_key)

    @property
    def compressed_fabric_id(self) -> bytes:
        return crypto.compressed_fabric_id(self.root_public_key, self.fabric_id)

    @property
    def compressed_fabric_id_int(self) -> int:
        return int.from_bytes(self.compressed_fabric_id, "big")

    @property
    def ipk(self) -> bytes:
        """The operational IPK (operational group key of the IPK epoch key) used by CASE."""
        return crypto.operational_group_key(self.ipk_epoch_key, self.compressed_fabric_id)

    def validate(self, now: float | None) -> certs.ValidatedChain:
        """Validate our own chain (e.g. after minting or loading)."""
        return certs.validate_chain(self.noc, self.icac, self.rcac, now=now)

    # ------------------------------------------------------------------------------------------- persistence

    def save(self, data_dir: str | os.PathLike[str]) -> None:
        """Write `fabric-<index>.json` and `.key` (0600) into data_dir (created 0700)."""
        d = _ensure_private_dir(Path(data_dir))
        key_pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        doc = {
            "fabric_index": self.fabric_index,
            "fabric_id": self.fabric_id,
            "node_id": self.node_id,
            "vendor_id": self.vendor_id,
            "noc": self.noc.hex(),
            "icac": self.icac.hex() if self.icac else None,
            "rcac": self.rcac.hex(),
            "ipk_epoch_key": self.ipk_epoch_key.hex(),
        }
        _atomic_write(d / f"fabric-{self.fabric_index}.key", key_pem)
        _atomic_write(d / f"fabric-{self.fabric_index}.json", json.dumps(doc, indent=1).encode())

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str], fabric_index: int) -> OperationalCredentials:
        """Load one fabric's credentials; CredentialsError when missing, unsafe or corrupt."""
        d = Path(data_dir)
        _check_private(d, is_dir=True)
        key_path = d / f"fabric-{fabric_index}.key"
        doc_path = d / f"fabric-{fabric_index}.json"
        for p in (key_path, doc_path):
            if not p.exists():
                raise CredentialsError(f"{p}: missing")
            _check_private(p, is_dir=False)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise CredentialsError(f"{key_path}: not a PEM private key ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise CredentialsError(f"{key_path}: not a P-256 private key")
        try:
            doc = json.loads(doc_path.read_text())
            creds = cls(
                fabric_index=int(doc["fabric_index"]),
                fabric_id=int(doc["fabric_id"]),
                node_id=int(doc["node_id"]),
                vendor_id=int(doc["vendor_id"]),
                private_key=key,
                noc=bytes.fromhex(doc["noc"]),
                icac=bytes.fromhex(doc["icac"]) if doc.get("icac") else None,
                rcac=bytes.fromhex(doc["rcac"]),
                ipk_epoch_key=bytes.fromhex(doc["ipk_epoch_key"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CredentialsError):
                raise CredentialsError(f"{doc_path}: {exc}") from None
            raise CredentialsError(f"{doc_path}: corrupt credentials ({type(exc).__name__}: {exc})") from None
        if creds.fabric_index != fabric_index:
            raise CredentialsError(
                f"{doc_path}: holds fabric index {creds.fabric_index}, expected {fabric_index}"
            )
        return creds


def list_fabric_indexes(data_dir: str | os.PathLike[str]) -> list[int]:
    """Fabric indexes with stored credentials in data_dir (sorted)."""
    d = Path(data_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.glob("fabric-*.json"):
        stem = p.stem.removeprefix("fabric-")
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def _ensure_private_dir(d: Path) -> Path:
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)  # mkdir's mode is masked by umask and ignored for an existing dir
    return d


def _check_private(p: Path, *, is_dir: bool) -> None:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise CredentialsError(f"{p}: missing") from None
    if is_dir and not stat.S_ISDIR(st.st_mode):
        raise CredentialsError(f"{p}: not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        want = "0700" if is_dir else "0600"
        raise CredentialsError(
            f"{p}: mode {mode:04o} lets group/others access it; refusing to use it (chmod {want} {p})"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise CredentialsError(f"{p}: owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
