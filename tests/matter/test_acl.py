"""Access control: privilege implication, subjects (node ids, CATs with versions), targets, fabrics, defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adapters.matter.interaction.acl import (
    AccessControl,
    AclEntry,
    AclTarget,
    AuthMode,
    Privilege,
    SubjectDescriptor,
    cat_subject,
    grants,
    subject_from_session,
)

CASE = AuthMode.CASE


def who(node: int = 0x1234, fabric: int = 1, cats: tuple[int, ...] = ()) -> SubjectDescriptor:
    return SubjectDescriptor(fabric, CASE, node, cats)


def test_privilege_implication() -> None:
    assert grants(Privilege.ADMINISTER, Privilege.VIEW)
    assert grants(Privilege.ADMINISTER, Privilege.MANAGE)
    assert grants(Privilege.MANAGE, Privilege.OPERATE)
    assert grants(Privilege.OPERATE, Privilege.VIEW)
    assert grants(Privilege.PROXY_VIEW, Privilege.VIEW)
    assert not grants(Privilege.OPERATE, Privilege.MANAGE)
    assert not grants(Privilege.VIEW, Privilege.OPERATE)
    assert not grants(Privilege.OPERATE, Privilege.PROXY_VIEW)
    assert not grants(Privilege.MANAGE, Privilege.ADMINISTER)


def test_default_acl() -> None:
    acl = AccessControl.default([1, 2], {1: [112233]})
    assert acl.check(who(0x55), 0, 0x29, Privilege.OPERATE)
    assert acl.check(who(0x55, fabric=2), 3, 0x29, Privilege.OPERATE)
    assert acl.check(who(0x55), 0, 0x29, Privilege.VIEW)
    assert not acl.check(who(0x55), 0, 0x29, Privilege.MANAGE)
    assert not acl.check(who(0x55), 0, 0x28, Privilege.VIEW)  # only the provider cluster
    assert not acl.check(who(0x55, fabric=3), 0, 0x29, Privilege.OPERATE)  # not our fabric
    assert acl.check(who(112233), 0, 0x28, Privilege.ADMINISTER)
    assert not acl.check(who(112233, fabric=2), 0, 0x28, Privilege.VIEW)  # admin only on fabric 1
    assert not acl.check(None, 0, 0x29, Privilege.VIEW)
    assert not acl.check(SubjectDescriptor(1, AuthMode.PASE, 0), 0, 0x29, Privilege.OPERATE)


def test_cat_subjects_with_versions() -> None:
    acl = AccessControl([AclEntry(1, Privilege.OPERATE, CASE, (cat_subject(0xABCD, 3),))])
    assert acl.check(who(cats=(0xABCD0003,)), 0, 6, Privilege.OPERATE)
    assert acl.check(who(cats=(0x11110001, 0xABCD0007)), 0, 6, Privilege.OPERATE)
    assert not acl.check(who(cats=(0xABCD0002,)), 0, 6, Privilege.OPERATE)  # version too old
    assert not acl.check(who(cats=(0xABCE0003,)), 0, 6, Privilege.OPERATE)  # other identifier
    assert not acl.check(who(), 0, 6, Privilege.VIEW)


def test_targets() -> None:
    acl = AccessControl(
        [
            AclEntry(1, Privilege.VIEW, CASE, (), (AclTarget(endpoint=1),)),
            AclEntry(
                1,
                Privilege.OPERATE,
                CASE,
                (5,),
                (AclTarget(cluster=6, endpoint=2), AclTarget(device_type=0x14)),
            ),
        ],
        device_types=lambda ep: [0x14] if ep == 0 else [],
    )
    assert acl.check(who(9), 1, 0x1234, Privilege.VIEW)
    assert not acl.check(who(9), 2, 0x1234, Privilege.VIEW)
    assert acl.check(who(5), 2, 6, Privilege.OPERATE)
    assert not acl.check(who(5), 2, 7, Privilege.OPERATE)
    assert acl.check(who(5), 0, 0x99, Privilege.OPERATE)  # device type target
    assert not acl.check(who(6), 0, 0x99, Privilege.OPERATE)  # wrong subject


def test_entry_validation() -> None:
    with pytest.raises(ValueError):
        AclEntry(1, Privilege.ADMINISTER, AuthMode.GROUP)
    with pytest.raises(ValueError):
        AclEntry(1, Privilege.VIEW, CASE, (0,))
    with pytest.raises(ValueError):
        AclEntry(1, Privilege.VIEW, CASE, (0xFFFFFFFD_ABCD0000,))  # CAT version 0
    with pytest.raises(ValueError):
        AclTarget()
    with pytest.raises(ValueError):
        AclTarget(endpoint=1, device_type=2)
    with pytest.raises(ValueError):
        cat_subject(1, 0)


def test_subject_from_session() -> None:
    ctx = SimpleNamespace(is_secure=True, fabric_index=2, peer_node_id=77, peer_cats=(0x00010001,))
    assert subject_from_session(ctx) == SubjectDescriptor(2, CASE, 77, (0x00010001,))
    assert (
        subject_from_session(SimpleNamespace(is_secure=False, fabric_index=None, peer_node_id=None)) is None
    )
    assert subject_from_session(SimpleNamespace(is_secure=True, fabric_index=0, peer_node_id=1)) is None
