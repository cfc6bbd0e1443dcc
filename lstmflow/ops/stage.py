"""DVC stage commands: ``python -m lstmflow.ops.stage features NAME`` (run by ``dvc repro`` from the project root).

The stage reads only ``params.yaml``, the file DVC tracks as its params, so what DVC
hashes is exactly what the stage uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lstmflow.errors import ConfigError, LstmflowError, writing
from lstmflow.ops import versioning


def features(name: str, root: Path) -> Path:
    """Build ``features/NAME`` from the pipeline's resolved data spec in ``params.yaml``."""
    from lstmflow.data.kinds import build_features
    from lstmflow.ops.steps import data_spec_from_params

    entry = versioning.read_params(root).get(name)
    if entry is None:
        raise ConfigError(
            f"{root / versioning.PARAMS_FILE} has no entry for pipeline {name!r}; run `lstmflow run {name}`"
        )
    data, season = data_spec_from_params(entry, root)
    out_dir = root / "features" / name
    build_features(data, season, out_dir, f"pipelines.{name}.data", cache_dir=root / ".lstmflow" / "cache")
    return out_dir


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "features":
        print("usage: python -m lstmflow.ops.stage features NAME", file=sys.stderr)
        return 2
    try:
        with writing(Path.cwd() / "features" / argv[1]):
            print(f"features written to {features(argv[1], Path.cwd())}")
    except LstmflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        versioning.record_stage_error(Path.cwd(), f"features@{argv[1]}", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
