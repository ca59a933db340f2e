"""Matter device attestation: fetch the production PAA certificates from the DCL into an owner-only directory.

As python-matter-server does:

    GET {base}/dcl/pki/root-certificates
        {"approvedRootCertificates": {"certs": [{"subject": "...", "subjectKeyId": "AB:CD:..."}, ...]}}
    GET {base}/dcl/pki/certificates/{subject}/{subjectKeyId}
        {"approvedCertificates": {"subject", "subjectKeyId", "certs": [{"pemCert": "-----BEGIN ...", ...}]}}

Each certificate is written as DER (what the chip SDK's PAA trust store reads) to `<dir>/paa-<skid>.der`,
atomically (temp file + rename), mode 0600 in a 0700 directory. Certificates that fail to parse are reported and
skipped; a certificate no longer listed is left in place (revocation is the DCL's revocation list, not this).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.sources.http import HttpFetcher
from gateway.sources.model import SourceError

__all__ = ["PAA_FETCH_COMMAND", "PaaResult", "attestation_hint", "fetch_paa_certificates", "paa_dir"]

PAA_FETCH_COMMAND = "otagw sources check paa"


def paa_dir(data_dir: Path) -> Path:
    """Where fetched PAA certificates live (point `matter.paa_trust_store` here)."""
    return data_dir / "paa-certificates"


@dataclass
class PaaResult:
    listed: int = 0
    written: int = 0  # new or changed files
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".der")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def fetch_paa_certificates(
    fetcher: HttpFetcher, base_url: str, dest: Path, max_bytes: int
) -> PaaResult:
    base = base_url.rstrip("/")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest.chmod(0o700)
    roots_url = f"{base}/dcl/pki/root-certificates"
    data = await (await fetcher.get(roots_url, max_bytes=max_bytes)).json()
    certs = (data.get("approvedRootCertificates") or {}).get("certs") if isinstance(data, dict) else None
    if not isinstance(certs, list):
        raise SourceError(f"{roots_url}: expected approvedRootCertificates.certs as a list")
    result = PaaResult(listed=len(certs))
    for i, ident in enumerate(certs):
        if not isinstance(ident, dict) or not ident.get("subject") or not ident.get("subjectKeyId"):
            result.errors.append(f"{roots_url}: certs[{i}]: expected subject and subjectKeyId")
            continue
        subject, skid = str(ident["subject"]), str(ident["subjectKeyId"])
        url = f"{base}/dcl/pki/certificates/{quote(subject, safe='')}/{quote(skid, safe='')}"
        try:
            got = await (await fetcher.get(url, max_bytes=max_bytes)).json()
            pems = [
                c.get("pemCert")
                for c in ((got.get("approvedCertificates") or {}).get("certs") or [])
                if isinstance(c, dict)
            ]
            if not pems or not isinstance(pems[0], str):
                raise SourceError(f"{url}: expected approvedCertificates.certs[0].pemCert")
            der = x509.load_pem_x509_certificate(pems[0].encode()).public_bytes(serialization.Encoding.DER)
        except SourceError as exc:
            result.errors.append(str(exc))
            continue
        except ValueError as exc:
            result.errors.append(f"{url}: pemCert is not a PEM certificate: {exc}")
            continue
        path = dest / f"paa-{skid.replace(':', '').lower()}.der"
        if path.exists() and path.read_bytes() == der:
            result.unchanged += 1
            continue
        _write_atomic(path, der)
        result.written += 1
    return result


def attestation_hint(trust_store: Path | None) -> str:
    """What to do when commissioning fails device attestation (the error names this config key and command)."""
    where = f"it is {trust_store}" if trust_store is not None else "it is unset (no PAA is trusted)"
    return (
        f"the device's attestation chain ends at a PAA the gateway does not trust: set matter.paa_trust_store "
        f"to a directory of production PAA certificates (DER; {where}). To fetch them from the CSA DCL, enable "
        f"the `paa` source in the config and run `{PAA_FETCH_COMMAND}`, then set matter.paa_trust_store to "
        f"<data_dir>/paa-certificates. Offline: copy the DER files of connectedhomeip's "
        f"credentials/production/paa-root-certs into that directory"
    )
