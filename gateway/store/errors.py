"""Typed errors of the image store: each names what is wrong and where (file, key path, image id).

Callers (CLI, HTTP API, importers) catch `StoreError` and show its message as one line.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousRefError",
    "CatalogSchemaError",
    "CorruptBlobError",
    "ImageNotFoundError",
    "ImageRejectedError",
    "ImageTooLargeError",
    "ImportListError",
    "InvalidFileNameError",
    "StoreError",
]


class StoreError(Exception):
    """Base of every error the image store raises for bad input or bad stored state."""


class CorruptBlobError(StoreError):
    """A stored blob is missing or its SHA-256 no longer matches its name; it is never served."""

    def __init__(self, sha256: str, path: str, problem: str) -> None:
        super().__init__(f"blob {sha256[:16]} at {path}: {problem}")
        self.sha256 = sha256
        self.path = path
        self.problem = problem


class CatalogMismatchError(CorruptBlobError):
    """The stored file is intact but disagrees with one catalog entry (e.g. a Matter header's version string or
    applicable range); that entry is never offered. The problem is the entry, not the blob."""


class ImageRejectedError(StoreError):
    """A file offered for import is not a valid OTA image (or does not match what its source says).

    `where` names the file (and, for list imports, the entry); `defect` says what is wrong; `offset` is the byte
    offset inside the file when the codec reported one.
    """

    def __init__(self, where: str, defect: str, offset: int | None = None) -> None:
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{where}: {defect}{at}")
        self.where = where
        self.defect = defect
        self.offset = offset


class ImageTooLargeError(StoreError):
    """An upload exceeded the configured maximum size; nothing was stored."""

    def __init__(self, file_name: str, max_size: int) -> None:
        super().__init__(f"{file_name}: image larger than the maximum of {max_size} bytes")
        self.file_name = file_name
        self.max_size = max_size


class InvalidFileNameError(StoreError):
    """A file name given with uploaded bytes is not a plain file name (path separators, NUL, '..', empty)."""


class ImageNotFoundError(StoreError):
    """No catalog entry matches the given image id or sha256 prefix."""


class AmbiguousRefError(StoreError):
    """A sha256 prefix matches more than one catalog entry."""


class ImportListError(StoreError):
    """An image list (CHIP otaImageList, Zigbee2MQTT index) is malformed; names the file and key path."""


class CatalogSchemaError(StoreError):
    """The catalog database has a schema this version cannot use (e.g. written by a newer otagw)."""
