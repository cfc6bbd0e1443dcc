"""A team's shared stores on one machine: the object store, and the connection file other checkouts join with.

**The object store** is moto's S3 server (``moto[s3]`` with Flask): the only S3-compatible server that installs
from PyPI (MinIO's PyPI package is a client; LocalStack needs Docker). MLflow's server keeps its artifacts in it
(``--artifacts-destination s3://lstmflow/mlflow``; the keys are in the server's environment only, clients send
artifacts through the server) and DVC pushes to it (``s3://lstmflow/dvc``). moto keeps objects in memory, so
``lstmflow down`` saves them under ``.lstmflow/objects/saved`` before it stops the server and ``up`` loads them
back: what a crash of the server loses is what was written since the last ``up``. moto checks no keys; lstmflow
still generates a pair per project (0600), so the configuration is the one a real S3 store needs.

**The connection file** ``.lstmflow/team.json`` (0600) holds what another checkout needs to use the stack: the
Prefect and MLflow URLs, the Optuna database's URL, the object store's endpoint and keys. ``up --team`` writes it;
``lstmflow connect FOLDER`` copies it into a second checkout (standing in for a second machine) and points that
checkout's DVC at the object store. ``search.storage: team`` reads the Optuna URL from it, so no password goes
into pipelines.yaml.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lstmflow.errors import ConfigError
from lstmflow.ops import versioning
from lstmflow.ops.postgres import Cluster

HOST = "127.0.0.1"
BUCKET = "lstmflow"
MLFLOW_ARTIFACTS = f"s3://{BUCKET}/mlflow"
DVC_REMOTE_URL = f"s3://{BUCKET}/dvc"
#: The DVC remote's name in each checkout's ``.dvc/config.local``.
DVC_REMOTE = "team"
REGION = "us-east-1"
OBJECTS_DIR = Path(".lstmflow") / "objects"
CONNECTION_FILE = Path(".lstmflow") / "team.json"
#: The value of ``search.storage`` that means the team's Optuna database.
TEAM_STORAGE = "team"


@dataclass(frozen=True)
class ObjectStore:
    """The S3 endpoint on ``port`` and the project's key pair."""

    endpoint: str
    access_key_id: str
    secret_access_key: str

    def server_environment(self) -> dict[str, str]:
        """What a server that reads and writes the store needs in its environment (never on a command line)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key, region_name=REGION,
        )  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        """Every object's key under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def object_store(root: Path, port: int) -> ObjectStore:
    """The project's object store on ``port``, with its key pair (generated on first use, kept 0600)."""
    keys = Path(root) / OBJECTS_DIR / "keys.json"
    if not keys.exists():
        keys.parent.mkdir(parents=True, exist_ok=True)
        keys.touch(mode=0o600)
        keys.write_text(json.dumps({"access_key_id": "LF" + secrets.token_hex(9).upper(),
                                    "secret_access_key": secrets.token_urlsafe(30)}))  # fmt: skip
    pair = json.loads(keys.read_text())
    return ObjectStore(f"http://{HOST}:{port}", pair["access_key_id"], pair["secret_access_key"])


def server_command(port: int) -> list[str]:
    """moto's S3 server on 127.0.0.1:``port``; a clear error when the ``team`` extra is not installed."""
    try:
        import flask_cors  # noqa: F401  (moto's server needs it; moto[s3] does not pull it)
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"`lstmflow up --team` needs the object store's packages ({exc.name} is missing): "
            "pip install 'lstmflow[team]'"
        ) from None
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


def load(root: Path, store: ObjectStore) -> int:
    """Create the bucket and put back what :func:`save` kept; returns the number of objects loaded."""
    client = store.client()
    client.create_bucket(Bucket=BUCKET)
    saved = Path(root) / OBJECTS_DIR / "saved"
    files = [path for path in saved.rglob("*") if path.is_file()] if saved.is_dir() else []
    for path in files:
        client.upload_file(str(path), BUCKET, path.relative_to(saved).as_posix())
    return len(files)


def save(root: Path, store: ObjectStore) -> int:
    """Write every object to ``.lstmflow/objects/saved`` (replacing the last save only once all are written)."""
    folder = Path(root) / OBJECTS_DIR
    partial, saved = folder / "saving", folder / "saved"
    shutil.rmtree(partial, ignore_errors=True)
    client = store.client()
    keys = store.keys()
    for key in keys:
        target = partial / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target))
    partial.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(saved, ignore_errors=True)
    partial.rename(saved)
    return len(keys)


@dataclass(frozen=True)
class Connection:
    """What a checkout needs to use a team's stack (the content of :data:`CONNECTION_FILE`)."""

    prefect_url: str
    mlflow_url: str
    optuna_url: str
    endpoint: str
    access_key_id: str
    secret_access_key: str

    @property
    def store(self) -> ObjectStore:
        return ObjectStore(self.endpoint, self.access_key_id, self.secret_access_key)


def write_connection(root: Path, connection: Connection) -> Path:
    """Write ``connection`` as this checkout's :data:`CONNECTION_FILE`, readable by its owner only."""
    path = Path(root) / CONNECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.unlink(missing_ok=True)
    partial.touch(mode=0o600)
    partial.write_text(json.dumps(asdict(connection), indent=2))
    os.replace(partial, path)
    return path


def read_connection(root: Path) -> Connection | None:
    """This checkout's connection to a team stack, or None when it has none."""
    path = Path(root) / CONNECTION_FILE
    return _parse(path) if path.exists() else None


def _parse(path: Path) -> Connection:
    try:
        return Connection(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a team connection lstmflow wrote ({exc})") from None


def connect(root: Path, source: Path) -> Connection:
    """Use the team stack that ``source`` (a checkout running ``up --team``, or its team.json) describes."""
    file = source / CONNECTION_FILE if source.is_dir() else source
    if not file.exists():
        raise ConfigError(f"{file} does not exist: run `lstmflow up --team` in {source} first")
    connection = _parse(file)
    publish(root, connection)
    return connection


def publish(root: Path, connection: Connection) -> None:
    """Make ``connection`` this checkout's: its connection file, and DVC's default remote on its object store."""
    write_connection(root, connection)
    use_dvc_remote(root, connection.store)


def server_settings(cluster: Cluster, store: ObjectStore) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The MLflow server's arguments and each server's environment on the team's stores (passwords and keys in the
    environment, not on a command line): artifacts sent through the MLflow server to the object store, so clients
    never hold its keys; one web worker and no job runner (MLflow 3 otherwise starts four and eight processes)."""
    environment = {
        "prefect": {"PREFECT_SERVER_DATABASE_CONNECTION_URL": cluster.url("prefect", "postgresql+asyncpg")},
        "mlflow": {"MLFLOW_BACKEND_STORE_URI": cluster.url("mlflow"), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                   **store.server_environment()},
    }  # fmt: skip
    return ["--artifacts-destination", MLFLOW_ARTIFACTS, "--workers", "1"], environment


def use_dvc_remote(root: Path, store: ObjectStore) -> None:
    """Make the object store this checkout's default DVC remote (in ``.dvc/config.local``, kept 0600: it holds the
    keys; nothing in the committed ``.dvc/config`` changes)."""
    versioning.ensure_repo(root)
    settings = {"endpointurl": store.endpoint, "region": REGION, "access_key_id": store.access_key_id,
                "secret_access_key": store.secret_access_key}  # fmt: skip
    versioning.dvc(root, "remote", "add", "--local", "--force", "--default", DVC_REMOTE, DVC_REMOTE_URL)
    for key, value in settings.items():
        versioning.dvc(root, "remote", "modify", "--local", DVC_REMOTE, key, value)
    (Path(root) / ".dvc" / "config.local").chmod(0o600)


def disconnect(root: Path) -> None:
    """Forget the team stack: the connection file goes, and DVC's default remote is the local one again."""
    (Path(root) / CONNECTION_FILE).unlink(missing_ok=True)
    local = Path(root) / ".dvc" / "config.local"
    if local.exists() and f"['remote \"{DVC_REMOTE}\"']" in local.read_text():
        versioning.dvc(root, "remote", "remove", "--local", DVC_REMOTE)
        if "['remote \"local\"']" in local.read_text():
            versioning.dvc(root, "remote", "default", "--local", "local")


def optuna_url(root: Path, where: str) -> str:
    """The team's Optuna database for ``search.storage: team``."""
    connection = read_connection(root)
    if connection is None:
        raise ConfigError(
            f"{where} is {TEAM_STORAGE!r} but {Path(root) / CONNECTION_FILE} does not exist: start the team stack "
            "here with `lstmflow up --team`, or join one with `lstmflow connect FOLDER`"
        )
    return connection.optuna_url
