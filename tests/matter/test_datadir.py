"""The chip SDK's /data without root: the mode choice (pure), the namespace set-up (real probes), and real controller
workers started as an unprivileged user in each mode, with owner-only storage."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.matter.fabric.controller import runner_unavailable_reason
from adapters.matter.fabric.datadir import DataDirUnavailable, HostFacts, select_mode

from .nonroot import ensure_user, nonroot_unavailable_reason, run_as_user

_REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_tmp() -> Iterator[Path]:
    """A directory a test user can reach (pytest's tmp_path sits under a root-only 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="otagw-nonroot-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _facts(**kw: object) -> HostFacts:
    base: dict[str, object] = {
        "euid": 1000,
        "data_exists": False,
        "data_owner": None,
        "data_writable": False,
        "mount_ns_error": "not root",
        "user_ns_error": None,
    }
    base.update(kw)
    return HostFacts(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- mode choice


def test_root_gets_a_private_mount_namespace() -> None:
    plan = select_mode(
        _facts(euid=0, data_exists=True, data_owner=0, data_writable=True, mount_ns_error=None)
    )
    assert plan.mode == "mount-namespace"
    assert plan.storage_dir_inside == "/data"


def test_root_without_sys_admin_uses_its_own_data_directly() -> None:
    # `docker run --user 0` without CAP_SYS_ADMIN: unshare is refused, the volume /data is root's
    plan = select_mode(
        _facts(
            euid=0,
            data_exists=True,
            data_owner=0,
            data_writable=True,
            mount_ns_error="Operation not permitted",
            user_ns_error="Operation not permitted",
        )
    )
    assert plan.mode == "direct"


def test_image_uid_with_its_volume_uses_data_directly() -> None:
    # the Docker image: uid 10001 owns the /data volume; seccomp forbids user namespaces
    facts = _facts(
        euid=10001,
        data_exists=True,
        data_owner=10001,
        data_writable=True,
        user_ns_error="Operation not permitted",
    )
    plan = select_mode(facts)
    assert plan.mode == "direct"
    assert plan.storage_dir_inside is None
    assert "10001" in plan.reason
    # and also when user namespaces would work: /data is ours, no namespace needed
    assert (
        select_mode(_facts(euid=10001, data_exists=True, data_owner=10001, data_writable=True)).mode
        == "direct"
    )


def test_plain_user_on_a_host_without_data_gets_a_user_namespace() -> None:
    plan = select_mode(_facts(euid=1000))
    assert plan.mode == "user-namespace"
    assert "mirrored root" in plan.reason
    plan = select_mode(_facts(euid=1000, data_exists=True, data_owner=0, data_writable=False))
    assert plan.mode == "user-namespace"
    assert "bind-mounted over /data" in plan.reason


def test_nothing_works_says_what_to_do_in_one_line() -> None:
    with pytest.raises(DataDirUnavailable) as ei:
        select_mode(
            _facts(
                euid=1000, data_exists=True, data_owner=0, user_ns_error="unshare: Operation not permitted"
            )
        )
    msg = str(ei.value)
    assert "\n" not in msg
    assert "/data belongs to uid 0, not 1000" in msg
    assert "install -d -o 1000 -m 0700 /data" in msg
    assert "user namespaces" in msg
    with pytest.raises(DataDirUnavailable, match="/data is not writable"):
        select_mode(
            _facts(euid=1000, data_exists=True, data_owner=1000, data_writable=False, user_ns_error="EPERM")
        )


def test_private_isolation_never_shares_data() -> None:
    ours = {"euid": 1000, "data_exists": True, "data_owner": 1000, "data_writable": True}
    assert select_mode(_facts(**ours), "private").mode == "user-namespace"
    with pytest.raises(DataDirUnavailable, match="private /data"):
        select_mode(_facts(**ours, user_ns_error="EPERM"), "private")


def test_direct_isolation_needs_our_data() -> None:
    with pytest.raises(DataDirUnavailable, match="does not exist"):
        select_mode(_facts(euid=1000), "direct")
    with pytest.raises(DataDirUnavailable, match="isolation 'bogus'"):
        select_mode(_facts(), "bogus")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- real set-up


def _user_dir(parent: Path, uid: int, gid: int, name: str) -> Path:
    d = parent / name
    d.mkdir(mode=0o700)
    os.chown(d, uid, gid)
    return d


_probe_skip = nonroot_unavailable_reason()


def _probe(mode: str, d: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(_REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "adapters.matter.fabric.datadir", "--probe", mode, *extra, str(d)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespace)")
def test_mount_namespace_setup_as_root(tmp_path: Path) -> None:
    for extra in ((), ("--mirrored-root",)):
        r = _probe("mount-namespace", tmp_path, *extra)
        assert r.returncode == 0, r.stderr
    # nothing leaked to the host: no mount on the probe directory, /data untouched
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts
    assert not (Path("/data") / ".otagw-probe").exists()


@pytest.mark.skipif(_probe_skip is not None, reason=_probe_skip or "")
def test_user_namespace_setup_as_a_plain_user(user_tmp: Path) -> None:
    user = ensure_user()
    d = _user_dir(user_tmp, user.pw_uid, user.pw_gid, "ctl")
    code = (
        "import sys; from adapters.matter.fabric.datadir import main; "
        f"sys.exit(main(['--probe', 'mount-namespace', {str(d)!r}]) * 10 + "
        f"main(['--probe', 'user-namespace', {str(d)!r}]))"
    )
    r = run_as_user(user.pw_name, code)
    # the plain user may not make a mount namespace (1x), but a user namespace works (x0)
    assert r.returncode == 10, r.stderr
    for extra in ("", "'--mirrored-root', "):
        code = (
            "import sys; from adapters.matter.fabric.datadir import main; "
            f"sys.exit(main(['--probe', 'user-namespace', {extra}{str(d)!r}]))"
        )
        r = run_as_user(user.pw_name, code)
        assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------- real workers

_worker_skip = _probe_skip or runner_unavailable_reason()

_WORKER_CODE = """
import json, logging, os, sys
from adapters.matter.fabric.controller import ControllerRunner
d = sys.argv[1] if len(sys.argv) > 1 else {d!r}
with ControllerRunner(d, timeout_s=90) as r:
    info = r.init_fabric(fabric_id=7, controller_node_id=0x1234)
    print(json.dumps({{"mode": r.plan.mode, "reason": r.plan.reason, "uid": os.geteuid(),
                      "cfid": info["compressed_fabric_id"]}}))
"""


def _worker_log(d: Path) -> str:
    p = d / "worker.log"
    return "\nworker.log: " + p.read_text(errors="replace")[-3000:] if p.exists() else ""


def _owner_only_tree(root: Path, uid: int) -> list[str]:
    bad = []
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        if st.st_uid != uid or stat.S_IMODE(st.st_mode) & 0o077:
            bad.append(f"{p}: uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):04o}")
    return bad


@pytest.mark.skipif(_worker_skip is not None, reason=_worker_skip or "")
def test_worker_as_plain_user_in_a_user_namespace(user_tmp: Path) -> None:
    user = ensure_user()
    d = _user_dir(user_tmp, user.pw_uid, user.pw_gid, "gw")
    r = run_as_user(user.pw_name, _WORKER_CODE.format(d=str(d)), timeout=180)
    assert r.returncode == 0, r.stderr[-2000:] + _worker_log(d / "controller")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mode"] == "user-namespace"
    assert out["uid"] == user.pw_uid
    storage = d / "controller" / "chip-storage.json"
    assert storage.is_file()
    # the SDK's ini files landed in the private directory (its /data), not in the host's /data
    assert (d / "controller" / "chip_config.ini").exists()
    assert _owner_only_tree(d, user.pw_uid) == []


@pytest.mark.skipif(_worker_skip is not None, reason=_worker_skip or "")
def test_worker_as_image_uid_with_its_data_volume(user_tmp: Path) -> None:
    # the image: uid 10001 (when free here) owns the volume mounted at /data; gateway data_dir is /data
    user = ensure_user("otagwimg", uid=10001)
    volume = _user_dir(user_tmp, user.pw_uid, user.pw_gid, "volume")
    ctmp = user_tmp / "container-tmp"  # a container's own /tmp (the host's may hold root's /tmp/chip_kvs)
    ctmp.mkdir(mode=0o1777)
    os.chmod(ctmp, 0o1777)
    code = _WORKER_CODE.format(d="/data")
    r = run_as_user(user.pw_name, code, data_over=volume, tmp_over=ctmp, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:] + _worker_log(volume / "controller")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mode"] == "direct", out
    for name in ("chip_config.ini", "chip_counters.ini"):
        assert (volume / name).exists(), sorted(p.name for p in volume.iterdir())
    assert (volume / "controller" / "chip-storage.json").is_file()
    assert _owner_only_tree(volume, user.pw_uid) == []
    # a second start reuses the same fabric (the storage survived, the mode is stable)
    assert _owner_only_tree(ctmp / "chip_kvs", user.pw_uid) == []
    r2 = run_as_user(user.pw_name, code, data_over=volume, tmp_over=ctmp, timeout=180)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert json.loads(r2.stdout.strip().splitlines()[-1])["cfid"] == out["cfid"]
