"""A throwaway PostgreSQL server from the machine's own binaries, on a free loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.ports import free_port
from tests.support.real_software import find_program, require

__all__ = ["PostgresServer", "postgres_server"]


class PostgresServer:
    """Connection facts of a running throwaway server."""

    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.user = user

    def url(self, database: str = "postgres") -> str:
        """Return an asyncpg URL for `database` on this server (trust auth, loopback)."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root; run them as the distro's postgres user.
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return ["runuser", "-u", "nobody", "--"]
    return ["runuser", "-u", "postgres", "--"]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server in a temp dir; stop it and remove the dir afterwards."""
    initdb = require(
        "PostgreSQL (initdb)",
        find_program("initdb", "/usr/lib/postgresql/*/bin/initdb"),
        "run `make deps` (apt package postgresql)",
    )
    bindir = Path(initdb).resolve().parent
    prefix = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="sft-pg-"))
    datadir = root / "data"
    if prefix:
        owner = prefix[2]
        shutil.chown(root, owner)
    port = free_port()
    user = "sft"
    subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            user,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -c port={port} -k {root} -c fsync=off "
            "-c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(port, user)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
