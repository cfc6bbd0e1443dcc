"""Loading ``pipelines.yaml``: the file, ``defaults`` deep-merged into each pipeline, ``--set`` overrides applied, data
paths resolved against the file's folder, and every problem collected into one :class:`~lstmflow.errors.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from lstmflow.config.base import Strict, model_in
from lstmflow.config.data import DATA_SPECS
from lstmflow.config.keys import apply_override, deep_merge
from lstmflow.config.messages import describe_error, did_you_mean, location_text, user_loc
from lstmflow.config.pipeline import PipelineSpec
from lstmflow.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool):  # a list or mapping as a key: YAML's own error follows
                continue
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} on line {seen[key]} and line {line}; give each key once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """YAML text parsed safely, with a key given twice in a mapping refused; errors name ``source``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no tags that build objects
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=source) from None


class ConfigFile(Strict):
    """The whole `pipelines.yaml`."""

    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Keys merged into every pipeline (mappings merge, lists and values replace)."
    )
    pipelines: dict[str, dict[str, Any]] = Field(min_length=1, description="Named pipelines; each is a pipeline spec.")


def _unknown_key_hint(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """For an unknown key, name the closest allowed key when there is one."""
    data = raw.get("data")
    model = _model_at(loc[:-1], data.get("kind", "timeseries") if isinstance(data, dict) else "timeseries")
    return did_you_mean(str(loc[-1]), model.model_fields if model else ())


def _wrong_kind(exc: ValidationError, data: Any) -> str | None:
    """When every unknown key under ``data`` belongs to another data kind: which, instead of a hint per key."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind", "timeseries")
    unknown = {
        str(e["loc"][-1])
        for e in exc.errors()
        if e["type"] == "extra_forbidden" and user_loc(e["loc"])[:1] == ("data",)
    }
    owners = [other for other, model in DATA_SPECS.items() if other != kind and unknown <= set(model.model_fields)]
    if not unknown or not owners or kind not in DATA_SPECS:
        return None
    default = " (the default kind)" if "kind" not in data else ""
    return (
        f"these keys belong to kind: {' or '.join(owners)}, not {kind!r}{default}: {', '.join(sorted(unknown))}; "
        f"set data.kind: {owners[0]}"
    )


def _model_at(loc: tuple[Any, ...], data_kind: str) -> type[BaseModel] | None:
    """The spec model that sits at a location inside a pipeline, if any."""
    model: type[BaseModel] | None = PipelineSpec
    for part in (p for p in loc if not isinstance(p, int)):
        if model is PipelineSpec and part == "data":
            model = DATA_SPECS.get(data_kind)
        else:
            field = model.model_fields.get(str(part)) if model else None
            model = model_in(field.annotation) if field else None
    return model


def _related(where: str, key: str) -> bool:
    """Whether an error at ``where`` concerns the override of ``key`` (same key, inside it or around it)."""
    shorter, longer = sorted((where, key), key=len)
    return longer == shorter or longer.startswith((shorter + ".", shorter + "["))


def expand_user(path: str | Path, where: str) -> Path:
    """``path`` with a leading ``~`` or ``~name`` expanded; a ``~name`` of no user is a ConfigError naming ``where``."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's answer to a home folder it cannot find
        raise ConfigError(f"{where}: {str(path)!r} starts with ~ but names no user's home folder") from None


def _paths_resolved(mapping: dict[str, Any], key: str, base_dir: Path, where: str) -> dict[str, Any]:
    """``mapping`` with its path at ``key`` made absolute against ``base_dir`` (the YAML file's folder)."""
    if not isinstance(mapping.get(key), str):
        return mapping
    path = expand_user(mapping[key], f"{where}.{key}")
    return {**mapping, key: str(path if path.is_absolute() else (base_dir / path).resolve())}


def validate_pipeline(
    name: str, raw: dict[str, Any], base_dir: Path, origin: dict[str, str] | None = None
) -> PipelineSpec:
    """Validate one merged pipeline mapping; data paths resolve against ``base_dir``."""
    origin = origin or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"pipelines.{name}: must be a mapping, got {raw!r}")
    raw = {**raw, "name": name}
    data = raw.get("data")
    if isinstance(data, dict):
        where = f"pipelines.{name}.data"
        data = raw["data"] = _paths_resolved(
            _paths_resolved(data, "path", base_dir, where), "target_path", base_dir, where
        )
        split = data.get("split")
        if isinstance(split, dict) and isinstance(split.get("files"), dict):
            parts = f"{where}.split.files"
            files = _paths_resolved(_paths_resolved(split["files"], "val", base_dir, parts), "test", base_dir, parts)
            data["split"] = {**split, "files": files}
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        if wrong_kind := _wrong_kind(exc, data):
            raise ConfigError(f"pipelines.{name}.data: {wrong_kind}") from None
        problems = []
        for error in exc.errors():
            loc = user_loc(error["loc"])
            where = location_text(loc)
            message = describe_error(error)
            if error["type"] == "extra_forbidden":
                message += _unknown_key_hint(loc, raw)
            note = next((f" (from --set {a})" for k, a in origin.items() if _related(where, k)), "")
            problems.append(
                f"pipelines.{name}.{where}: {message}{note}" if where else f"pipelines.{name}: {message}{note}"
            )
        raise ConfigError(problems) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}); save it as UTF-8", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read it ({exc.strerror})", source=str(path)) from None


class Config:
    """A loaded ``pipelines.yaml``: raw mappings merged with defaults, validated on demand."""

    def __init__(self, path: Path, raw: ConfigFile) -> None:
        self.path = path
        self.raw = raw

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = expand_user(path, "--config").resolve()
        if not path.is_file():
            raise ConfigError(f"no pipelines file at {path} (pass --config FILE or run from the project folder)")
        tree = load_yaml(_read_text(path), str(path)) or {}
        if not isinstance(tree, dict):
            raise ConfigError(
                f"the top level must be a mapping with `pipelines`, got {type(tree).__name__}", source=str(path)
            )
        try:
            raw = ConfigFile.model_validate(tree)
        except ValidationError as exc:
            problems = [f"{location_text(tuple(e['loc']))}: {describe_error(e)}" for e in exc.errors()]
            raise ConfigError(problems, source=str(path)) from None
        return cls(path, raw)

    @property
    def names(self) -> list[str]:
        return list(self.raw.pipelines)

    def merged(self, name: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
        """The pipeline's mapping with defaults and overrides applied, and where each override came from."""
        if name not in self.raw.pipelines:
            hint = did_you_mean(name, self.names)
            raise ConfigError(f"no pipeline named {name!r} in {self.path}{hint}; known: {', '.join(self.names)}")
        tree = deep_merge(self.raw.defaults, self.raw.pipelines[name] or {})
        origin: dict[str, str] = {}
        for assignment in overrides:
            tree = apply_override(tree, assignment)
            origin[assignment.partition("=")[0].strip()] = assignment
        return tree, origin

    def pipeline(self, name: str, overrides: list[str] | tuple[str, ...] = ()) -> PipelineSpec:
        tree, origin = self.merged(name, overrides)
        try:
            return validate_pipeline(name, tree, self.path.parent, origin)
        except ConfigError as exc:
            raise ConfigError(exc.problems, source=str(self.path)) from None

    def all(self, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, PipelineSpec]:
        """Every pipeline validated (with ``overrides`` applied to each); all problems of all pipelines in one error."""
        specs: dict[str, PipelineSpec] = {}
        problems: list[str] = []
        for name in self.names:
            try:
                tree, origin = self.merged(name, overrides)
                specs[name] = validate_pipeline(name, tree, self.path.parent, origin)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems, source=str(self.path))
        return specs
