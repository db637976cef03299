"""A throwaway PostgreSQL cluster on a free loopback port, and the ``postgres_url`` fixture.

initdb refuses to run as root, so as root the cluster is created and run as the
``postgres`` system user (``runuser -u postgres --``) in a temp dir it owns. Tests
that need it skip with a clear reason when the PostgreSQL binaries are absent.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auxilio.broker.mosquitto import free_port
from auxilio.errors import AuxilioError

# A fresh cluster starts in about a second here; allow for a busy 2-core machine.
START_TIMEOUT_S = 60.0
SUPERUSER = "postgres"


def postgres_bindir() -> Path | None:
    """Directory holding initdb and pg_ctl (Debian layout first, then PATH)."""
    env = os.environ.get("AUXILIO_PG_BINDIR")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """initdb + pg_ctl start on 127.0.0.1:<free port>; ``stop()`` removes everything."""

    def __init__(self, bindir: Path | None = None) -> None:
        bindir = bindir or postgres_bindir()
        if bindir is None:
            raise AuxilioError("PostgreSQL binaries (initdb, pg_ctl) are not installed")
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="auxilio-pg-"))
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam(SUPERUSER)  # KeyError when there is no postgres user
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", SUPERUSER, "--"]
        self.data = self.dir / "data"
        self._names = itertools.count(1)
        self.started = False

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        r = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AuxilioError(
                f"{Path(args[0]).name} failed: {(r.stderr or r.stdout).strip()[-400:]}"
            )

    def start(self) -> PostgresCluster:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-sync",
        )
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"  # throwaway: durability not needed
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            str(int(START_TIMEOUT_S)),
            "start",
        )
        self.started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"auxilio_t{next(self._names)}_{os.getpid()}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=self.port,
                    user=SUPERUSER,
                    dbname="postgres",
                    autocommit=True,
                    connect_timeout=5,
                ) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                return self.url(name)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.started:
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                )
            except (AuxilioError, subprocess.TimeoutExpired):
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster per test session (skips when PostgreSQL is absent)."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed (pip install 'psycopg[binary]')")
    try:
        cluster = PostgresCluster()
    except KeyError:
        pytest.skip("running as root but there is no 'postgres' user to run initdb as")
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """URL of a fresh, empty database on the session's throwaway cluster."""
    return postgres_cluster.create_database()
