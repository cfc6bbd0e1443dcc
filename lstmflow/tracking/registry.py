"""The model registry as the gate and people use it: versions, the alias that serves, decision tags, the history.

An alias (``champion`` by default) names the version that serves; MLflow keeps one version per alias and no past.
So that ``rollback`` can return to the previous champion, every move of an alias by lstmflow appends the version to
a registered-model tag, ``lstmflow.alias.<alias>.history`` (a JSON list, oldest first, the last
:data:`HISTORY_LENGTH` kept), and a rollback takes the last one off again.
"""

from __future__ import annotations

import json
from pathlib import Path

from lstmflow.errors import LstmflowError
from lstmflow.tracking import _client

#: Past champions a rollback can reach; the tag stays far below MLflow's limit on a tag's length.
HISTORY_LENGTH = 200
#: MLflow's longest registry tag value; longer values (a long reason) are cut.
TAG_VALUE_LIMIT = 5000


class RegistryError(LstmflowError):
    """A registered model, version or earlier champion that is not there: the caller's to fix, so exit code 2."""

    exit_code = 2


def alias_tag(alias: str, field: str) -> str:
    """``lstmflow.alias.<alias>.<field>``: the alias's ``history`` on the registered model, and on a version when,
    by whom and why the alias moved to it (``since``, ``by``, ``user``, ``reason``) or left it."""
    return f"lstmflow.alias.{alias}.{field}"


def history_tag(alias: str) -> str:
    return alias_tag(alias, "history")


def _registered(uri: str, name: str):
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(model.name for model in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} in {uri}; registered: {known or 'none (run a pipeline first)'}"
        ) from None


def versions(uri: str, name: str) -> list[str]:
    """The registered model's versions, oldest first; a model that is not registered is a RegistryError."""
    _registered(uri, name)
    found = _client(uri).search_model_versions(f"name = '{name}'")
    return sorted((str(version.version) for version in found), key=int)


def require_version(uri: str, name: str, version: str | int) -> str:
    """``version`` as the registry spells it; one that does not exist is a RegistryError listing those that do."""
    known = versions(uri, name)
    if str(version) not in known:
        raise RegistryError(f"model {name!r} has no version {version}; its versions: {', '.join(known) or 'none'}")
    return str(version)


def alias_version(uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None when it points nowhere."""
    version = _registered(uri, name).aliases.get(alias)
    return None if version is None else str(version)


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    _client(uri).set_registered_model_alias(name, alias, str(version))


def version_tags(uri: str, name: str, version: str) -> dict[str, str]:
    return dict(_client(uri).get_model_version(name, str(version)).tags)


def set_version_tags(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    client = _client(uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value[:TAG_VALUE_LIMIT])


def version_run_id(uri: str, name: str, version: str) -> str | None:
    """The MLflow run that logged the version (None for one registered from elsewhere)."""
    return _client(uri).get_model_version(name, str(version)).run_id or None


def version_of_run(uri: str, name: str, run_id: str) -> dict[str, str] | None:
    """The version of ``name`` already registered from ``run_id`` (the oldest, if several), as
    :func:`lstmflow.tracking.register_model` returns it; None when that run has none."""
    found = _client(uri).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not found:
        return None
    version = str(min(int(model_version.version) for model_version in found))
    source = next(model_version.source for model_version in found if str(model_version.version) == version)
    return {"model_uri": f"models:/{name}/{version}", "logged_model_uri": source, "version": version}


def history(uri: str, name: str, alias: str) -> list[str]:
    """The versions ``alias`` was moved to by lstmflow, oldest first, without those rolled back."""
    raw = _registered(uri, name).tags.get(history_tag(alias))
    return [str(version) for version in json.loads(raw)] if raw else []


def set_history(uri: str, name: str, alias: str, entries: list[str]) -> None:
    kept = [int(version) for version in entries[-HISTORY_LENGTH:]]
    _client(uri).set_registered_model_tag(name, history_tag(alias), json.dumps(kept, separators=(",", ":")))


def download_bundle(uri: str, name: str, version: str, dst_dir: Path) -> Path:
    """Copy the model bundle (``model.pt``, ``spec.json``, ...) of a registered version into ``dst_dir``; returns
    the bundle folder. The pyfunc logged it as its ``bundle`` artifact."""
    from mlflow.artifacts import download_artifacts

    location = _client(uri).get_model_version_download_uri(name, str(version))  # the logged model's artifact folder
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(
        download_artifacts(artifact_uri=f"{location}/artifacts/bundle", dst_path=str(dst_dir), tracking_uri=uri)
    )
