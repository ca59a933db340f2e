"""Where the chip SDK's compiled-in `/data` goes: choose, per host, how the controller worker gets its storage.

The SDK's native library opens `/data/chip_config.ini`, `/data/chip_factory.ini` and `/data/chip_counters.ini`
and writes `/tmp/chip_kvs` (by rename from a temp file), all fixed paths. The worker therefore needs a `/data` it may write, and tests that run several controllers at once
need one `/data` per controller. Three ways, chosen in this order by `choose_plan("auto")`:

1. `mount-namespace` (root with CAP_SYS_ADMIN): a private mount namespace with the worker's private directory
   bind-mounted over `/data`. Nothing outside the worker sees it.
2. `direct`: `/data` exists, belongs to this process's uid and is writable (the Docker image: its volume `/data`
   belongs to uid 10001). The SDK's ini files go there (made owner-only), the storage JSON stays in the private dir.
3. `user-namespace` (a plain user where the kernel allows unprivileged user namespaces): the worker enters a new
   user + mount namespace mapping only its own uid/gid (it stays that uid; files it writes are the user's), then
   bind-mounts its private directory over `/data`, or, when `/data` does not exist (a normal host), builds a new
   root on a tmpfs that mirrors `/` by bind mounts plus a `data` directory, and chroots into it. Its `/tmp` is
   `<private dir>/tmp` too: another user's `/tmp/chip_kvs` would make the SDK's rename fail.

Otherwise `DataDirUnavailable` carries one line saying what the user can do. `isolation="private"` allows only
(1) and (3) (several controllers at once); `isolation="direct"` only (2).

The namespace set-up runs inside the worker process itself (`enter_private_data`, before the SDK is imported, while
the process is still single-threaded), with libc's unshare(2)/mount(2) via ctypes: no mount(8)/unshare(1) needed.
`python -m adapters.matter.fabric.datadir --probe MODE DIR` runs the same set-up and exits 0 when it works: the probe
`choose_plan` uses, so a kernel or seccomp policy that forbids a step is found before the worker starts.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "MOUNT_POINT",
    "SDK_INI_FILES",
    "DataDirUnavailable",
    "DataPlan",
    "HostFacts",
    "choose_plan",
    "enter_private_data",
    "gather_facts",
    "select_mode",
]

Mode = Literal["direct", "mount-namespace", "user-namespace"]
Isolation = Literal["auto", "private", "direct"]

MOUNT_POINT = Path("/data")
SDK_INI_FILES = ("chip_config.ini", "chip_factory.ini", "chip_counters.ini")
KVS_FILE = Path("/tmp/chip_kvs")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_REPO_ROOT = Path(__file__).resolve().parents[3]


class DataDirUnavailable(RuntimeError):
    """No way to give the chip SDK a `/data` here; the message says what the user can do (one line)."""


@dataclass(frozen=True)
class HostFacts:
    """What the mode choice depends on (gathered by `gather_facts`, made up freely in unit tests)."""

    euid: int
    data_exists: bool
    data_owner: int | None  # uid owning /data, None when it does not exist
    data_writable: bool
    mount_ns_error: str | None  # None when a private mount namespace works (as this user)
    user_ns_error: str | None  # None when an unprivileged user + mount namespace works
    kvs_owner: int | None = None  # uid owning the host's /tmp/chip_kvs (None: absent); only `direct` uses it


@dataclass(frozen=True)
class DataPlan:
    """The chosen mode and why (logged once at worker start)."""

    mode: Mode
    reason: str

    @property
    def storage_dir_inside(self) -> str | None:
        """Path the worker uses for its storage inside its view (None: use the private dir itself)."""
        return None if self.mode == "direct" else str(MOUNT_POINT)


def select_mode(facts: HostFacts, isolation: Isolation = "auto") -> DataPlan:
    """The pure decision: which mode for these facts (see the module docstring); DataDirUnavailable otherwise."""
    if isolation not in ("auto", "private", "direct"):
        raise DataDirUnavailable(f"controller isolation {isolation!r} is not one of auto, private, direct")
    ours = facts.data_exists and facts.data_owner == facts.euid and facts.data_writable
    kvs_ok = facts.kvs_owner in (None, facts.euid)
    if isolation != "direct" and facts.euid == 0 and facts.mount_ns_error is None:
        return DataPlan(
            "mount-namespace", "root: private mount namespace with the worker's directory over /data"
        )
    if isolation != "private" and ours and kvs_ok:
        return DataPlan(
            "direct", f"/data belongs to uid {facts.euid} and is writable: the chip SDK uses it directly"
        )
    if isolation != "direct" and facts.user_ns_error is None:
        how = (
            "bind-mounted over /data"
            if facts.data_exists
            else "as /data in a mirrored root (no /data on the host)"
        )
        return DataPlan(
            "user-namespace", f"uid {facts.euid}: unprivileged user namespace, private directory {how}"
        )
    # nothing works: one line, the fixes that apply to this host
    why: list[str] = []
    if not facts.data_exists:
        why.append("/data does not exist")
    elif facts.data_owner != facts.euid:
        why.append(f"/data belongs to uid {facts.data_owner}, not {facts.euid}")
    elif not facts.data_writable:
        why.append("/data is not writable")
    elif not kvs_ok:
        why.append(f"/tmp/chip_kvs (the SDK's fixed key-value file) belongs to uid {facts.kvs_owner}")
    if facts.euid == 0 and facts.mount_ns_error:
        why.append(f"no mount namespace ({facts.mount_ns_error})")
    if facts.user_ns_error:
        why.append(f"no unprivileged user namespace ({facts.user_ns_error})")
    fixes = [f"create /data owned by uid {facts.euid} (install -d -o {facts.euid} -m 0700 /data)"]
    fixes.append(
        "or allow unprivileged user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)"
    )
    if isolation == "private":
        fixes = [
            "run as root or allow unprivileged user namespaces (several controllers need a private /data each)"
        ]
    elif isolation == "direct":
        fixes = fixes[:1]
    raise DataDirUnavailable(
        f"chip SDK needs a writable /data: {'; '.join(why) or 'isolation ' + isolation + ' not possible'}; "
        f"fix: {' '.join(fixes)}"
    )


def _probe(mode: Mode) -> str | None:
    """Run the namespace set-up of `mode` in a throw-away process; None when it works, else its error line."""
    with tempfile.TemporaryDirectory(prefix="otagw-probe-") as tmp:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            r = subprocess.run(
                [sys.executable, "-m", "adapters.matter.fabric.datadir", "--probe", mode, tmp],
                capture_output=True,
                env=env,
                cwd=str(_REPO_ROOT),
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if r.returncode == 0:
            return None
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit {r.returncode}"


@functools.lru_cache(maxsize=4)
def _probe_cached(mode: Mode, euid: int) -> str | None:
    return _probe(mode)


def gather_facts() -> HostFacts:
    """Look at this host: /data, and (only where it could matter) whether the namespaces work."""
    euid = os.geteuid()
    try:
        st = MOUNT_POINT.stat()
        exists, owner = stat.S_ISDIR(st.st_mode), st.st_uid
    except OSError:
        exists, owner = False, None
    writable = exists and os.access(MOUNT_POINT, os.W_OK | os.X_OK)
    try:
        kvs_owner: int | None = KVS_FILE.lstat().st_uid
    except OSError:
        kvs_owner = None
    mount_err = _probe_cached("mount-namespace", euid) if euid == 0 else "not root"
    user_err = None if euid == 0 and mount_err is None else _probe_cached("user-namespace", euid)
    return HostFacts(euid, exists, owner, writable, mount_err, user_err, kvs_owner)


def choose_plan(isolation: Isolation = "auto") -> DataPlan:
    """The plan for this host (DataDirUnavailable with what to do otherwise)."""
    return select_mode(gather_facts(), isolation)


# ============================================================================================ worker side


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = _libc()
    enc = [None if v is None else v.encode() for v in (src, target, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {src} on {target}")


def _enter_mirrored_root(private_dir: Path, private_tmp: Path | None) -> None:
    """No /data on the host: build a root on a tmpfs mirroring `/` (bind mounts), with our directory as /data
    (and `private_tmp`, when given, as /tmp)."""
    base = private_dir / ".root"
    base.mkdir(mode=0o700, exist_ok=True)
    _mount("tmpfs", str(base), "tmpfs", 0, "mode=0755")
    for name in sorted(os.listdir("/")):
        src, dst = "/" + name, base / name
        if name == "data":
            continue
        if name == "tmp" and private_tmp is not None:
            dst.mkdir()
            _mount(str(private_tmp), str(dst), None, _MS_BIND)
        elif os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            dst.mkdir()
            _mount(src, str(dst), None, _MS_BIND | _MS_REC)
        else:
            dst.touch()
            _mount(src, str(dst), None, _MS_BIND)
    (base / "data").mkdir(mode=0o700)
    _mount(str(private_dir), str(base / "data"), None, _MS_BIND)
    # the recursive bind of the tree holding `base` copied base's half-built tmpfs: detach that copy
    inner = base / str(base).lstrip("/")
    if os.path.ismount(inner):
        _check(_libc().umount2(str(inner).encode(), _MNT_DETACH), f"umount {inner}")
    cwd = os.getcwd()
    os.chroot(base)
    os.chdir(cwd)


def _marker(d: Path) -> Path:
    """A fresh file in `d` whose presence at the mount target proves the bind worked (removed later by us)."""
    for old in d.glob(".otagw-marker-*"):
        old.unlink()
    m = d / f".otagw-marker-{os.getpid()}"
    m.write_bytes(b"")
    return m


def enter_private_data(
    mode: Mode, private_dir: str | os.PathLike[str], *, mirrored_root: bool | None = None
) -> None:
    """Give this (single-threaded) process `private_dir` as its `/data` per `mode`; `direct` only tightens modes.

    `mirrored_root`: None = only when the host has no /data; True forces it (how tests cover that path on a host
    that has a /data)."""
    pdir = Path(private_dir).resolve()
    if mode == "direct":
        for name in SDK_INI_FILES:  # the SDK's files in the shared /data: owner-only like everything else
            p = MOUNT_POINT / name
            if p.exists():
                os.chmod(p, 0o600)
        return
    libc = _libc()
    if mode == "user-namespace":
        uid, gid = os.getuid(), os.getgid()
        _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(user+mount namespace)")
        # map only ourselves: the process keeps its uid (files stay the user's) and holds the namespace's caps
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    elif mode == "mount-namespace":
        _check(libc.unshare(_CLONE_NEWNS), "unshare(mount namespace)")
    else:
        raise ValueError(f"unknown mode {mode!r}")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount propagates back to the host
    private_tmp: Path | None = None
    if mode == "user-namespace":  # /tmp/chip_kvs of another user (or root) must not be in the way
        private_tmp = pdir / "tmp"
        private_tmp.mkdir(mode=0o700, exist_ok=True)
    data_marker = _marker(pdir)
    tmp_marker = _marker(private_tmp) if private_tmp is not None else None
    use_mirror = (not MOUNT_POINT.is_dir()) if mirrored_root is None else mirrored_root
    if use_mirror:
        _enter_mirrored_root(pdir, private_tmp)
    else:
        # sources held open: the first bind may hide the second's path (/data/controller/tmp, /tmp/x/tmp)
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in (pdir, private_tmp) if p is not None]
        try:
            _mount(f"/proc/self/fd/{fds[0]}", str(MOUNT_POINT), None, _MS_BIND)
            if len(fds) > 1:
                _mount(f"/proc/self/fd/{fds[1]}", "/tmp", None, _MS_BIND)
        finally:
            for fd in fds:
                os.close(fd)
    # the proof the SDK gets what it needs: /data (and /tmp) are the private ones, and writable
    for inside, marker in ((MOUNT_POINT, data_marker), (Path("/tmp"), tmp_marker)):
        if marker is not None:
            if not (inside / marker.name).exists():
                raise OSError(f"{inside} is not {marker.parent} after the set-up")
            (inside / marker.name).unlink()
    for inside in (MOUNT_POINT, Path("/tmp")):
        probe = inside / f".otagw-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="probe a private /data mode for the chip controller worker")
    p.add_argument("--probe", choices=["mount-namespace", "user-namespace"], required=True)
    p.add_argument(
        "--mirrored-root", action="store_true", help="build the mirrored root even if /data exists"
    )
    p.add_argument("dir")
    args = p.parse_args(argv)
    try:
        enter_private_data(args.probe, args.dir, mirrored_root=True if args.mirrored_root else None)
    except OSError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
