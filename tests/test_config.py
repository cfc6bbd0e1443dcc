"""pipelines.yaml validation: exact messages, defaults, overrides, schedules, promotion rules, the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lstmflow.config import DATA_SPECS, Config, PipelineSpec, apply_override, deep_merge, flatten
from lstmflow.config.reference import fields_of, reference_markdown
from lstmflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "data": {"path": "series.csv", "target": "y", "window": 24, "horizon": 6},
    "model": {"layers": [{"lstm": {"units": 8}}, {"dense": {}}]},
}


def load(tmp_path: Path, pipeline: dict, defaults: dict | None = None) -> Config:
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults or {}, "pipelines": {"p": pipeline}}))
    return Config.load(path)


def problems(tmp_path: Path, override: list[str], pipeline: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, pipeline or BASE).pipeline("p", override)
    return caught.value.problems


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.layers[0].lstm.units=-4", "pipelines.p.model.layers[0].lstm.units: must be > 0, got -4"),
        ("train.epochs=0", "pipelines.p.train.epochs: must be > 0, got 0"),
        ("train.epochs=many", "pipelines.p.train.epochs: must be a whole number > 0 or 'auto', got 'many'"),
        (
            "train.optimizer.name=rmsprop",
            "pipelines.p.train.optimizer.name: must be one of 'adam', 'adamw' or 'sgd', got 'rmsprop'",
        ),
        ("train.optimizer.lr=0", "pipelines.p.train.optimizer.lr: must be > 0, got 0"),
        (
            "data.split.val=0.8",
            "pipelines.p.data.split: val + test must leave at least 10% for training, got 0.8 + 0.15",
        ),
        ("data.scale=robust", "pipelines.p.data.scale: must be one of 'standard', 'minmax' or 'none', got 'robust'"),
        ("model.layers[0].lstm.dropout=1.5", "pipelines.p.model.layers[0].lstm.dropout: must be < 1, got 1.5"),
        (
            "model.layers[0].lstm.recurrent_dropout=0.2",
            "pipelines.p.model.layers[0].lstm.recurrent_dropout: must be <= 0, got 0.2",
        ),
        (
            "model.layers[1].dense.activation=swishy",
            (
                "pipelines.p.model.layers[1].dense.activation: must be one of 'linear', 'relu', 'tanh', 'sigmoid', "
                "'softmax', 'gelu', 'elu', 'selu' or 'softplus', got 'swishy'"
            ),
        ),
        (
            "train.grad_clip={norm: 1, value: 2}",
            "pipelines.p.train.grad_clip: give one of norm and value, got norm=1 and value=2",
        ),
        ("train.optimzer.lr=1", "pipelines.p.train.optimzer: unknown key (did you mean 'optimizer'?)"),
    ],
)
def test_bad_value_names_path_value_and_origin(tmp_path: Path, override: str, message: str) -> None:
    assert problems(tmp_path, [override]) == [f"{message} (from --set {override})"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule={cron: '61 * * * *'}", "pipelines.p.schedule.cron: not a valid cron expression '61 * * * *'"),
        ("schedule={interval: 10s}", "pipelines.p.schedule.interval: must be at least one minute, got '10s'"),
        ("schedule={interval: soon}", "pipelines.p.schedule.interval: must be seconds or a number with a unit"),
        ("schedule={cron: '0 3 * * *', interval: 1d}", "pipelines.p.schedule: give exactly one of cron"),
        (
            "schedule={cron: '0 3 * * *', timezone: Mars/Olympus}",
            "pipelines.p.schedule.timezone: unknown time zone 'Mars/Olympus'",
        ),
        ("promote.metric=accuracy", "pipelines.p.promote: metric for task 'forecast' must be one of 'mae', 'rmse'"),
        ("promote.test=mcnemar", "pipelines.p.promote: test 'mcnemar' does not fit task 'forecast'"),
    ],
)
def test_bad_schedule_or_promotion_is_named(tmp_path: Path, override: str, message: str) -> None:
    [problem] = problems(tmp_path, [override])
    assert problem.startswith(message), problem


def test_schedule_and_promotion_resolve_without_changing_what_trains(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    plain = config.pipeline("p")
    scheduled = config.pipeline("p", ["schedule={interval: 6h, timezone: Europe/Berlin}", "promote.min_gain=0.02"])
    assert scheduled.schedule.interval == 6 * 3600 and scheduled.schedule.timezone == "Europe/Berlin"
    assert scheduled.promote.resolved_metric("forecast") == "mae"
    assert scheduled.promote.resolved_direction("forecast") == "minimize"
    assert scheduled.promote.resolved_test("forecast") == "diebold_mariano"
    assert scheduled.spec_hash() == plain.spec_hash()
    assert scheduled.flat_params() == plain.flat_params()


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, ["train.epochs=-1", "train.batch_size=0", "data.windoww=3"])
    assert found == [
        "pipelines.p.data.windoww: unknown key (did you mean 'window'?) (from --set data.windoww=3)",
        "pipelines.p.train.epochs: must be > 0, got -1 (from --set train.epochs=-1)",
        "pipelines.p.train.batch_size: must be > 0, got 0 (from --set train.batch_size=0)",
    ]


def test_a_layer_needs_exactly_one_kind(tmp_path: Path) -> None:
    pipeline = {**BASE, "model": {"layers": [{"lstm": {"units": 8}, "dense": {}}]}}
    assert problems(tmp_path, [], pipeline) == [
        (
            "pipelines.p.model.layers[0]: a layer must have exactly one of embedding, lstm, dense, dropout, batchnorm, "
            "layernorm, activation, conv1d, max_pool1d, average_pool1d, global_max_pool, global_average_pool, "
            "attention_pool, attention, conv2d, max_pool2d, average_pool2d, flatten, time_distributed, branches, got "
            "['lstm', 'dense']"
        )
    ]


def test_missing_keys_and_bad_name(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump({"pipelines": {"9lives": {"model": BASE["model"]}}}))  # no data
    with pytest.raises(ConfigError) as caught:
        Config.load(path).all()
    assert caught.value.problems == [
        "pipelines.9lives.name: must start with a letter and hold only letters, digits, '_' and '-', got '9lives'",
        "pipelines.9lives.data: is required",
    ]


def test_defaults_merge_and_overrides_apply_last(tmp_path: Path) -> None:
    config = load(tmp_path, BASE, defaults={"train": {"epochs": 7, "optimizer": {"lr": 0.01}}, "data": {"stride": 2}})
    spec = config.pipeline("p", ["train.optimizer.name=sgd", "model.layers[0].lstm.units=16"])
    assert (spec.train.epochs, spec.train.optimizer.lr, spec.train.optimizer.name) == (7, 0.01, "sgd")
    assert spec.data.stride == 2 and spec.model.layers[0].lstm.units == 16
    assert spec.data.target == ["y"]


def test_model_and_clipping_defaults(tmp_path: Path) -> None:
    spec = load(tmp_path, {"data": BASE["data"]}).pipeline("p")
    assert [layer.kind for layer in spec.model.layers] == ["lstm", "dense"] and spec.model.layers[0].lstm.units == 64
    assert (spec.train.grad_clip.norm, spec.train.grad_clip.value) == (1.0, None)
    by_value = load(tmp_path, BASE).pipeline("p", ["train.grad_clip.value=0.5"]).train.grad_clip
    assert (by_value.norm, by_value.value) == (None, 0.5)
    assert load(tmp_path, BASE).pipeline("p", ["train.grad_clip.norm=null"]).train.grad_clip.norm is None


def test_data_path_is_relative_to_the_yaml_file(tmp_path: Path) -> None:
    spec = load(tmp_path, BASE).pipeline("p")
    assert spec.data.path == (tmp_path / "series.csv").resolve()


def test_bare_layer_kind_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text(
        "pipelines:\n  p:\n    data: {path: s.csv, target: y}\n"
        "    model:\n      layers:\n        - lstm: {units: 4}\n        - dense:\n"
    )
    layer = Config.load(path).pipeline("p").model.layers[1]
    assert layer.kind == "dense" and layer.dense.units is None and layer.dense.activation == "linear"


def test_unknown_pipeline_and_bad_override_syntax(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"no pipeline named 'q' .*known: p"):
        config.pipeline("q")
    with pytest.raises(ConfigError, match="expected key=value"):
        config.pipeline("p", ["train.epochs"])
    with pytest.raises(ConfigError, match=r"model.layers has no item \[5\]"):
        config.pipeline("p", ["model.layers[5].lstm.units=3"])


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "pipelines.yaml"
    path.write_text("pipelines: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        Config.load(path)
    with pytest.raises(ConfigError, match="no pipelines file"):
        Config.load(tmp_path / "absent.yaml")


def test_spec_hash_follows_content(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    assert config.pipeline("p").spec_hash() == config.pipeline("p").spec_hash()
    assert config.pipeline("p").spec_hash() != config.pipeline("p", ["train.seed=1"]).spec_hash()


def test_helpers() -> None:
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}
    assert apply_override({"a": [{"b": 1}]}, "a[0].b=2") == {"a": [{"b": 2}]}
    assert flatten({"a": {"b": [1, 2]}, "l": [{"x": None}]}) == {"a.b": "[1, 2]", "l[0].x": "null"}


def test_task_must_fit_the_data_kind(tmp_path: Path) -> None:
    assert problems(tmp_path, ["task=classify"]) == [
        "pipelines.p: task 'classify' needs data.kind 'sequences', 'images', 'text', 'audio', 'video', got 'timeseries'"
    ]
    assert problems(tmp_path, ["data.kind=bogus"]) == [
        (
            "pipelines.p.data: kind must be one of 'timeseries', 'sequences', 'images', 'text', 'audio', 'corpus', "
            "'pairs', 'speech', 'video', got 'bogus' (from --set data.kind=bogus)"
        )
    ]


def test_loss_must_fit_the_task(tmp_path: Path) -> None:
    assert problems(tmp_path, ["train.loss=cross_entropy"]) == [
        "pipelines.p: train.loss for task 'forecast' must be one of 'mse', 'mae', 'huber', got 'cross_entropy'"
    ]
    classify = {"task": "classify", "data": {"kind": "images", "path": "imgs"}, "train": {"loss": "mse"}}
    assert problems(tmp_path, [], classify) == [
        "pipelines.p: train.loss for task 'classify' must be one of 'cross_entropy', got 'mse'"
    ]
    assert load(tmp_path, {**classify, "train": {}}).pipeline("p").loss == "cross_entropy"
    assert load(tmp_path, BASE).pipeline("p").loss == "mse"


def test_every_field_has_a_description() -> None:
    rows = fields_of(PipelineSpec) + [row for spec in DATA_SPECS.values() for row in fields_of(spec, "data.")]
    undocumented = [key for key, _, _, description in rows if not description.strip()]
    assert undocumented == []


def test_readme_reference_is_the_generated_one() -> None:
    readme = (REPO / "README.md").read_text()
    assert reference_markdown().strip() in readme, (
        "README's pipelines.yaml reference is stale: paste `lstmflow reference`"
    )


def test_shipped_pipelines_validate_and_dvc_params_exist() -> None:
    specs = Config.load(REPO / "pipelines.yaml").all()
    assert set(specs) >= {"sunspots", "co2"}
    params = yaml.safe_load((REPO / "params.yaml").read_text())["pipelines"]
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert dvc["stages"]["features"]["foreach"] == "${pipelines}"
    assert dvc["stages"]["features"]["do"]["params"] == ["pipelines.${key}"]
    for name, spec in specs.items():
        assert name in params, f"params.yaml lacks {name}: run `lstmflow run {name}` or `lstmflow validate`"
        assert Path(REPO / params[name]["data"]["path"]).resolve() == spec.data.path


def test_a_pipeline_added_to_the_shipped_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    """Demo settings stay inside the demo pipelines: a newcomer's pipeline trains exactly as the reference says."""
    shipped = yaml.safe_load((REPO / "pipelines.yaml").read_text())
    shipped["pipelines"]["mine"] = {"data": {"path": str(tmp_path / "mine.csv"), "time_column": "t", "target": "y"}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(shipped))
    spec = Config.load(path).pipeline("mine", [])
    assert spec.train == PipelineSpec.model_validate({"name": "mine", **shipped["pipelines"]["mine"]}).train
    assert spec.model == PipelineSpec.model_validate({"name": "mine", **shipped["pipelines"]["mine"]}).model


def test_a_home_folder_of_no_user_is_a_config_error_naming_where(tmp_path: Path) -> None:
    """`~name` where no user `name` exists: pathlib raises RuntimeError, which must not escape as a traceback."""
    config = tmp_path / "pipelines.yaml"
    config.write_text("pipelines:\n  s:\n    data: {path: ~no-such-user-0/s.csv, target: y}\n")
    with pytest.raises(ConfigError, match=r"pipelines\.s\.data\.path: '~no-such-user-0/s\.csv' starts with ~ but"):
        Config.load(config).pipeline("s")
    with pytest.raises(ConfigError, match=r"--config: '~no-such-user-0/p\.yaml' starts with ~ but names no user"):
        Config.load("~no-such-user-0/p.yaml")
