"""Access control (Matter Core spec 9.10): ACL entries and the privilege check run on every read and invoke.

An entry grants `privilege` on the fabric `fabric_index` to sessions of `auth_mode` whose subject matches one of
`subjects` (empty = any subject of that auth mode) for any of its `targets` (empty = every endpoint/cluster).
Subjects are operational node ids or CASE Authenticated Tags encoded as 0xFFFFFFFD_IIIIVVVV, which match a session
holding a CAT with the same identifier and a version >= VVVV. Privileges imply lower ones:
Administer ⊃ Manage ⊃ Operate ⊃ View, and ProxyView ⊃ View. Group sessions never get Administer.

`AccessControl.check(subject, endpoint, cluster, privilege)` answers True/False; nothing else grants access
(no implicit PASE privilege: this node is never commissioned over PASE).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OTA_PROVIDER_CLUSTER",
    "AccessControl",
    "AclEntry",
    "AclTarget",
    "AuthMode",
    "Privilege",
    "SubjectDescriptor",
    "cat_subject",
    "grants",
    "is_cat_subject",
    "subject_from_session",
]

OTA_PROVIDER_CLUSTER = 0x0029
_CAT_PREFIX = 0xFFFFFFFD_00000000
_CAT_MASK = 0xFFFFFFFF_00000000
_MAX_OPERATIONAL_NODE_ID = 0xFFFFFFEF_FFFFFFFF


class Privilege(enum.IntEnum):
    VIEW = 1
    PROXY_VIEW = 2
    OPERATE = 3
    MANAGE = 4
    ADMINISTER = 5


class AuthMode(enum.IntEnum):
    PASE = 1
    CASE = 2
    GROUP = 3


_IMPLIED: dict[Privilege, frozenset[Privilege]] = {
    Privilege.VIEW: frozenset({Privilege.VIEW}),
    Privilege.PROXY_VIEW: frozenset({Privilege.PROXY_VIEW, Privilege.VIEW}),
    Privilege.OPERATE: frozenset({Privilege.OPERATE, Privilege.VIEW}),
    Privilege.MANAGE: frozenset({Privilege.MANAGE, Privilege.OPERATE, Privilege.VIEW}),
    Privilege.ADMINISTER: frozenset(Privilege),
}


def grants(held: Privilege, required: Privilege) -> bool:
    """Whether holding `held` implies `required`."""
    return required in _IMPLIED[held]


def cat_subject(identifier: int, version: int) -> int:
    """The ACL subject for a CAT (identifier, minimum version)."""
    if not (0 <= identifier <= 0xFFFF and 1 <= version <= 0xFFFF):
        raise ValueError("CAT identifier must be 16-bit and version 1..65535")
    return _CAT_PREFIX | identifier << 16 | version


def is_cat_subject(subject: int) -> bool:
    return subject & _CAT_MASK == _CAT_PREFIX


@dataclass(frozen=True, slots=True)
class SubjectDescriptor:
    """Who is asking: fabric, auth mode, subject id (node id / group id), and the session's CATs (32-bit)."""

    fabric_index: int
    auth_mode: AuthMode
    subject: int
    cats: tuple[int, ...] = ()


def subject_from_session(ctx: Any) -> SubjectDescriptor | None:
    """Build a subject from the exchange's SessionContext (duck typed); None when the session is not CASE."""
    if not getattr(ctx, "is_secure", False):
        return None
    fabric = getattr(ctx, "fabric_index", None)
    node = getattr(ctx, "peer_node_id", None)
    if not fabric or node is None:
        return None
    return SubjectDescriptor(
        int(fabric), AuthMode.CASE, int(node), tuple(getattr(ctx, "peer_cats", ()) or ())
    )


@dataclass(frozen=True, slots=True)
class AclTarget:
    """One target; None fields are wildcards. At least one field must be set (spec constraint)."""

    cluster: int | None = None
    endpoint: int | None = None
    device_type: int | None = None

    def __post_init__(self) -> None:
        if self.cluster is None and self.endpoint is None and self.device_type is None:
            raise ValueError("an ACL target needs a cluster, an endpoint or a device type")
        if self.endpoint is not None and self.device_type is not None:
            raise ValueError("an ACL target cannot name both an endpoint and a device type")


@dataclass(frozen=True, slots=True)
class AclEntry:
    fabric_index: int
    privilege: Privilege
    auth_mode: AuthMode
    subjects: tuple[int, ...] = ()
    targets: tuple[AclTarget, ...] = ()

    def __post_init__(self) -> None:
        if self.auth_mode is AuthMode.GROUP and self.privilege is Privilege.ADMINISTER:
            raise ValueError("group ACL entries cannot grant Administer")
        if self.auth_mode is AuthMode.CASE:
            for s in self.subjects:
                if not (is_cat_subject(s) or 1 <= s <= _MAX_OPERATIONAL_NODE_ID):
                    raise ValueError(f"invalid CASE subject 0x{s:016x}")
                if is_cat_subject(s) and s & 0xFFFF == 0:
                    raise ValueError(f"CAT subject 0x{s:016x} has version 0")

    def matches_subject(self, who: SubjectDescriptor) -> bool:
        if who.fabric_index != self.fabric_index or who.auth_mode != self.auth_mode:
            return False
        if not self.subjects:
            return True
        for s in self.subjects:
            if s == who.subject:
                return True
            if self.auth_mode is AuthMode.CASE and is_cat_subject(s):
                ident, version = (s >> 16) & 0xFFFF, s & 0xFFFF
                for cat in who.cats:
                    if cat >> 16 == ident and (cat & 0xFFFF) >= version:
                        return True
        return False

    def matches_target(
        self, endpoint: int, cluster: int, device_types: Callable[[int], Iterable[int]]
    ) -> bool:
        if not self.targets:
            return True
        for t in self.targets:
            if t.cluster is not None and t.cluster != cluster:
                continue
            if t.endpoint is not None and t.endpoint != endpoint:
                continue
            if t.device_type is not None and t.device_type not in set(device_types(endpoint)):
                continue
            return True
        return False


@dataclass
class AccessControl:
    """The node's ACL. `device_types(endpoint)` resolves device-type targets (the registry provides it)."""

    entries: list[AclEntry] = field(default_factory=list)
    device_types: Callable[[int], Iterable[int]] = field(default=lambda _ep: ())

    @classmethod
    def default(
        cls,
        fabric_indexes: Iterable[int],
        admins: Mapping[int, Iterable[int]] | None = None,
        provider_privilege: Privilege = Privilege.OPERATE,
    ) -> AccessControl:
        """Operate on cluster 0x0029 for any CASE subject of each fabric, Administer for the listed admins."""
        entries: list[AclEntry] = []
        for fi in fabric_indexes:
            subjects = tuple((admins or {}).get(fi, ()))
            if subjects:
                entries.append(AclEntry(fi, Privilege.ADMINISTER, AuthMode.CASE, subjects))
            entries.append(
                AclEntry(
                    fi, provider_privilege, AuthMode.CASE, (), (AclTarget(cluster=OTA_PROVIDER_CLUSTER),)
                )
            )
        return cls(entries)

    def check(self, who: SubjectDescriptor | None, endpoint: int, cluster: int, required: Privilege) -> bool:
        """True if some entry grants `required` (or a privilege implying it) on (endpoint, cluster) to `who`."""
        if who is None:
            return False
        for e in self.entries:
            if (
                grants(e.privilege, required)
                and e.matches_subject(who)
                and e.matches_target(endpoint, cluster, self.device_types)
            ):
                return True
        return False
