"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, initdb'd in a temp dir, run unprivileged.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to a system user
(`otagw-test`, created on first use) and initdb/postgres run under it through runuser. The server listens on a
unix socket inside the temp dir and on a free TCP port on 127.0.0.1 only; it is stopped (fast) and the directory
removed when the fixture ends.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEST_USER = "otagw-test"
SUPERUSER = "otagw"
PASSWORD = "otagw-test-password"


def pg_bindir() -> Path | None:
    """The newest installed Debian PostgreSQL server's bin dir, or None when `postgresql` is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    bindir: Path
    root: Path
    port: int
    run_as: str | None  # system user the server runs as (None: the current, non-root user)
    # tests trade durability for speed; the bench asks for fsync on (comparable to SQLite WAL + NORMAL)
    durable: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def dsn(self, user: str = SUPERUSER, password: str = PASSWORD, database: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else list(argv)

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(self._cmd(*argv), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        self.sockdir.mkdir()
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for p in (self.root, pwfile, self.sockdir):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.datadir), "-U", SUPERUSER, "--pwfile", str(pwfile),
            "-A", "scram-sha-256", "-E", "UTF8", "--no-sync", "--locale=C",
        )  # fmt: skip
        durability = (
            "-c synchronous_commit=off"
            if self.durable
            else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sockdir} "
            f"{durability} -c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.root / "log"),
            "-o", opts, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"),
            capture_output=True,
            timeout=60,
        )

    def server_cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the postmaster and its backends (Linux /proc)."""
        pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            proc_pid, ppid = int(stat.parent.name), int(fields[1])
            if proc_pid == pid or ppid == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
        return total


def _ensure_user() -> str:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
            capture_output=True,
        )
    return TEST_USER


def running_cluster(durable: bool = False) -> Iterator[PgCluster]:
    """Start a cluster, yield it, tear it down (the generator body of the pytest fixture)."""
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    run_as = _ensure_user() if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="otagw-pg-"))
    cluster = PgCluster(bindir, root, _free_port(), run_as, durable)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
