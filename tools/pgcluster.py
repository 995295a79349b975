"""A real primary and a streaming standby on this machine, for the replica-lag tests and bench
(`--private-server` starts a primary alone). Not part of the Lambda artifact.

Both run from the system PostgreSQL binaries (`/usr/lib/postgresql/<v>/bin`), as the
`postgres` OS user when we are root (initdb refuses root), in a temporary directory, on free
ports of 127.0.0.1. The primary has `wal_level = logical`, so logical slots work too; every
other setting is stock. `Cluster.stop()` stops both servers and removes the directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

STANDBY_NAME = "standby1"


def bin_dir() -> Path | None:
    """The newest installed server's binaries, or None without one."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A primary and a standby streaming from it (`pg_basebackup -R -X stream`)."""

    bin: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kc-replica-")))
    primary_port: int = field(default_factory=free_port)
    standby_port: int = 0
    # Standby feedback every second (default 10 s), so lag readings follow replay promptly.
    status_interval_s: int = 1

    def __post_init__(self) -> None:
        while not self.standby_port or self.standby_port == self.primary_port:
            self.standby_port = free_port()

    @property
    def primary_dir(self) -> Path:
        return self.root / "primary"

    @property
    def standby_dir(self) -> Path:
        return self.root / "standby"

    def dsn(self, port: int | None = None, user: str = "postgres", dbname: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{port or self.primary_port}/{dbname}"

    @property
    def primary_dsn(self) -> str:
        return self.dsn(self.primary_port)

    @property
    def standby_dsn(self) -> str:
        return self.dsn(self.standby_port)

    def _run(self, *cmd: str) -> None:
        argv = [str(self.bin / cmd[0]), *cmd[1:]]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        # the system PostgreSQL binaries with arguments we build, never input
        subprocess.run(argv, check=True, capture_output=True, timeout=120)  # noqa: S603

    def _configure(self, data: Path, settings: dict[str, str]) -> None:
        with (data / "postgresql.auto.conf").open("a") as fh:
            for name, value in settings.items():
                fh.write(f"{name} = '{value}'\n")

    def start(self, *, standby: bool = True) -> Cluster:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-A", "trust", "-U", "postgres", "-D", str(self.primary_dir), "-N")
        common = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.root)}
        self._configure(
            self.primary_dir,
            {**common, "port": str(self.primary_port), "wal_level": "logical"},
        )
        self._pg_ctl(self.primary_dir, "start")
        if not standby:
            return self
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres"),
            *("-D", str(self.standby_dir), "-R", "-X", "stream", "-c", "fast"),
        )
        self._configure(
            self.standby_dir,
            {
                **common,
                "port": str(self.standby_port),
                # The walreceiver's application_name: how pg_stat_replication names it.
                "cluster_name": STANDBY_NAME,
                "wal_receiver_status_interval": f"{self.status_interval_s}s",
            },
        )
        self._pg_ctl(self.standby_dir, "start")
        self.wait_for_standby()
        return self

    def _pg_ctl(self, data: Path, action: str) -> None:
        log = self.root / f"{data.name}.log"
        self._run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", action)

    def wait_for_standby(self, timeout_s: float = 30) -> None:
        """Until the standby streams and has replayed everything the primary wrote so far."""
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.primary_dsn, autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
            while True:
                row = conn.execute(
                    "SELECT replay_lsn >= %s::pg_lsn FROM pg_stat_replication "
                    "WHERE application_name = %s",
                    (target[0] if target else None, STANDBY_NAME),
                ).fetchone()
                if row is not None and row[0]:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError("the standby did not catch up with the primary")
                time.sleep(0.1)

    def stop(self) -> None:
        for data in (self.standby_dir, self.primary_dir):
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
