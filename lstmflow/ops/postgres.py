"""A user-level PostgreSQL cluster for a team's shared stores (Optuna studies, and the Prefect and MLflow servers).

Debian's ``postgresql`` package provides the server; no system service runs it. :class:`Cluster` keeps one
cluster in a folder of its own: ``initdb`` with a generated password (scram-sha-256; the password in a 0600 file
beside the data, never on a command line), then ``pg_ctl`` starts it listening on 127.0.0.1 only, its Unix socket
inside its data folder. PostgreSQL refuses to run as root, so as root every server command runs as the ``postgres``
system user the package creates, which then owns the data folder (and must be able to reach it).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from lstmflow.errors import LstmflowError

#: Where Debian installs each PostgreSQL version's server programs.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
#: The account the server runs as when lstmflow runs as root.
SERVER_ACCOUNT = "postgres"
HOST = "127.0.0.1"
#: The role lstmflow's clients log in as.
ROLE = "lstmflow"


class PostgresError(LstmflowError):
    """The PostgreSQL server could not be set up, started or stopped (the message says which and why)."""


def server_binaries() -> Path:
    """The newest installed version's folder of ``initdb``, ``pg_ctl`` and ``createdb``."""
    found = sorted(DEBIAN_BINARIES.glob("*/bin/pg_ctl"), key=lambda path: int(path.parent.parent.name))
    if not found:
        raise PostgresError(f"no PostgreSQL server in {DEBIAN_BINARIES}: install Debian's postgresql package")
    return found[-1].parent


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL cluster in ``folder`` (``data/`` and the password file ``password``), on ``port``."""

    folder: Path
    port: int

    @classmethod
    def at(cls, folder: Path) -> Cluster:
        """The cluster in ``folder`` on the port it was last started with (0 before it has one)."""
        conf = folder / "data" / "postgresql.conf"
        ports = re.findall(r"^port = (\d+)$", conf.read_text(), re.MULTILINE) if conf.exists() else []
        return cls(folder, int(ports[-1]) if ports else 0)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def password_file(self) -> Path:
        return self.folder / "password"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 by default; Prefect wants ``postgresql+asyncpg``)."""
        password = urllib.parse.quote(self.password_file.read_text().strip(), safe="")
        return f"{driver}://{ROLE}:{password}@{HOST}:{self.port}/{database}"

    def initialise(self) -> None:
        """Create the cluster with a new password, unless it exists."""
        if (self.data / "PG_VERSION").exists():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(secrets.token_hex(24) + "\n")
        self.data.mkdir(mode=0o700)
        owner = _server_account()
        if owner is not None:
            _require_reachable(self.folder.resolve().parent, owner)
            for path in (self.folder, self.data, self.password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)  # the server reads the password file once, in initdb
            self.folder.chmod(0o700)
        self._server(
            "initdb", "-D", str(self.data), "-U", ROLE, f"--pwfile={self.password_file}",
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        settings = f"listen_addresses = '{HOST}'\nport = {self.port}\nunix_socket_directories = '{self.data}'\n"
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# lstmflow: loopback only, the socket in the data folder\n" + settings)

    def start(self) -> None:
        """Start the server (initialising it first when new) and wait until it accepts connections."""
        self.initialise()
        if not self.running():
            # The log file keeps the server off pg_ctl's pipes, which it would otherwise hold open for its lifetime.
            log = str(self.data / "server.log")
            self._server("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended), if it runs."""
        if self.running():
            self._server("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Stop and start the server: every open connection is cut."""
        self.stop()
        self.start()

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        status = self._run("pg_ctl", "-D", str(self.data), "status")
        return status.returncode == 0

    def create_database(self, name: str) -> None:
        """Create ``name`` unless it exists."""
        listed = self._server("psql", *self._login(), "-d", "postgres", "-tAc", "SELECT datname FROM pg_database")
        if name not in listed.split():
            self._server("createdb", *self._login(), name)

    def _login(self) -> list[str]:
        return ["-h", str(self.data), "-p", str(self.port), "-U", ROLE]

    def _server(self, program: str, *arguments: str) -> str:
        done = self._run(program, *arguments)
        if done.returncode != 0:
            raise PostgresError(f"{program} failed for the cluster in {self.folder}: {done.stderr.strip()[-800:]}")
        return done.stdout

    def _run(self, program: str, *arguments: str) -> subprocess.CompletedProcess[str]:
        command = [str(server_binaries() / program), *arguments]
        if _server_account() is not None:
            command = [_runuser(), "-u", SERVER_ACCOUNT, "--", *command]
        environment = os.environ | {"PGPASSFILE": os.devnull}
        if program in {"psql", "createdb"}:
            environment["PGPASSWORD"] = self.password_file.read_text().strip()  # environment, not a command line
        return subprocess.run(command, capture_output=True, text=True, env=environment, check=False, timeout=120)


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when this process is root; None when it can run as this process's user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL does not run as root and there is no {SERVER_ACCOUNT!r} account to run it as: install "
            "Debian's postgresql package, which creates it"
        ) from None


def _require_reachable(folder: Path, owner: pwd.struct_passwd) -> None:
    """Refuse a cluster folder the server account cannot enter, naming the folder that shuts it out."""
    for path in (folder, *folder.parents):
        mode = path.stat()
        if not mode.st_mode & stat.S_IXOTH and mode.st_uid != owner.pw_uid:
            raise PostgresError(
                f"the PostgreSQL server runs as {owner.pw_name!r}, which cannot enter {path} (mode "
                f"{stat.S_IMODE(mode.st_mode):o}): keep the cluster in a folder others may pass through (chmod o+x)"
            )


def _runuser() -> str:
    found = shutil.which("runuser")
    if found is None:
        raise PostgresError("running PostgreSQL as root's 'postgres' account needs runuser (util-linux)")
    return found
