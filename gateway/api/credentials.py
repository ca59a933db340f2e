"""Scoped API credentials for devices and integrations: create, list, revoke, and resolve a presented token.

The admin token (gateway/api/auth.py) can do everything, including deleting images; devices and integrations
get their own least-privilege tokens instead. A credential has a unique name, a set of scopes (each API
operation names the one scope it needs, see `RouteTable.op(scope=...)`), optionally the one device it belongs
to, and the SHA-256 of its secret: the secret itself is shown once at creation and never stored.

Storage is one owner-only (0600) JSON file, `<data_dir>/credentials.json`, replaced atomically on every change,
so the CLI can create or revoke a token while the gateway runs: the gateway re-reads the file when its
modification time or size changes. No SQL here: the records repository in gateway/core owns the state DB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CREDENTIALS_FILE = "credentials.json"
TOKEN_PREFIX = "otagw_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

# Every scope a credential may hold and what it grants. To add one (e.g. "metrics", "catalog-read"): add it
# here and name it in the `scope=` of the operations it opens; nothing else changes.
SCOPES: dict[str, str] = {
    "query": "POST /api/v1/query: ask which package is available (bound: only for its own device)",
    "status": "POST /api/v1/status: report OTA status (bound: only for its own device)",
    "download": "GET /api/v1/images/{ref}/download (bound: only its own device's offered transfer)",
    "metrics": "GET /metrics: scrape Prometheus metrics (Prometheus, a monitoring agent)",
    "catalog-read": "GET /publish/<controller>/<token>/...: the published index and images of the controllers "
    "naming this credential (nothing else)",
}


class CredentialError(ValueError):
    """A bad name, scope or device id, a duplicate or unknown name, or an unusable credentials file."""


@dataclass(frozen=True)
class Credential:
    name: str
    scopes: tuple[str, ...]
    device: str | None  # device id (protocol:network:address:endpoint) the credential is bound to
    sha256: str = field(repr=False)
    created_at: float = 0.0

    def public(self) -> dict[str, Any]:
        """What `token list` shows: everything but the hash."""
        return {
            "name": self.name,
            "scopes": list(self.scopes),
            "device": self.device,
            "created_at": self.created_at,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """ "query,status" or a list -> validated, de-duplicated, in SCOPES order."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise CredentialError(f"no scope given; choose from: {', '.join(SCOPES)}")
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise CredentialError(f"unknown scope {unknown[0]!r}; choose from: {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in items)


def check_device_id(device: str) -> str:
    parts = device.split(":")
    if len(parts) < 4 or parts[0] not in ("matter", "zigbee") or not parts[-1].isdigit() or not all(parts):
        raise CredentialError(
            f"device {device!r}: expected a device id protocol:network:address:endpoint, "
            "e.g. zigbee:pan:1a2b:00:11:22:33:44:55:66:77:1"
        )
    return device


class CredentialStore:
    """The credentials of one data directory (see the module docstring for the file and its rules)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / CREDENTIALS_FILE
        self._by_hash: dict[str, Credential] = {}
        self._by_name: dict[str, Credential] = {}
        self._stamp: tuple[int, int] | None = None

    # ------------------------------------------------------------------------------------------ reading
    def _reload(self) -> None:
        """Re-read the file if it changed since the last read (another process may have written it)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._by_hash, self._by_name, self._stamp = {}, {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        if st.st_mode & 0o077:
            raise CredentialError(
                f"{self.path}: readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it"
            )
        try:
            raw = json.loads(self.path.read_bytes())
            creds = [
                Credential(
                    name=str(c["name"]),
                    scopes=tuple(str(s) for s in c["scopes"]),
                    device=c.get("device"),
                    sha256=str(c["sha256"]),
                    created_at=float(c.get("created_at", 0.0)),
                )
                for c in raw["credentials"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CredentialError(f"{self.path}: unreadable credentials file: {exc}") from None
        self._by_name = {c.name: c for c in creds}
        self._by_hash = {c.sha256: c for c in creds}
        self._stamp = stamp

    def resolve(self, token: str | None) -> Credential | None:
        """The credential whose secret is `token`, or None (unknown or revoked)."""
        if not token:
            return None
        self._reload()
        return self._by_hash.get(token_hash(token))

    def entries(self) -> list[Credential]:
        self._reload()
        return sorted(self._by_name.values(), key=lambda c: c.name)

    # ------------------------------------------------------------------------------------------ writing
    def create(
        self, name: str, scopes: str | list[str] | tuple[str, ...], device: str | None = None
    ) -> tuple[Credential, str]:
        """A new credential and its secret (shown to the caller once, stored only as its SHA-256)."""
        if not NAME_RE.fullmatch(name):
            raise CredentialError(
                f"name {name!r}: 1-64 characters of letters, digits and ._:- (starting with a letter or digit)"
            )
        parsed = parse_scopes(scopes)
        if device is not None:
            check_device_id(device)
        self._reload()
        if name in self._by_name:
            raise CredentialError(f"a credential named {name!r} exists; revoke it first or pick another name")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        cred = Credential(name, parsed, device, token_hash(secret), round(time.time(), 3))
        self._write([*self._by_name.values(), cred])
        return cred, secret

    def revoke(self, name: str) -> Credential:
        self._reload()
        cred = self._by_name.get(name)
        if cred is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise CredentialError(f"no credential named {name!r} (known: {known})")
        self._write([c for c in self._by_name.values() if c.name != name])
        return cred

    def _write(self, creds: list[Credential]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"credentials": [asdict(c) for c in sorted(creds, key=lambda c: c.name)]}
        fd, tmp = tempfile.mkstemp(prefix=".credentials.", dir=self.path.parent)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._stamp = None  # force a re-read (mtime granularity may hide a quick second write)
        self._reload()
