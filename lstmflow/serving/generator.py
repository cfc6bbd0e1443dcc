"""The served language model: prompts in, the text it writes after each out; and the score of a text, for the gate.

No MLflow needed: :mod:`lstmflow.tracking.serving` wraps it as a pyfunc. The sampling itself is
:func:`lstmflow.serving.generate.generate`, shared with evaluation's sample text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from lstmflow.serving.bundle import load_network
from lstmflow.serving.limits import limits
from lstmflow.serving.request_checks import BadRequest, decoded, describe, require_columns


class Generator:
    """Prompts in, generated text out: a ``prompt`` column, and optionally per row ``tokens``, ``temperature`` and
    ``seed`` (defaults: 200 tokens, temperature 0.8, seed 0); no MLflow needed."""

    DEFAULTS: ClassVar[dict[str, float]] = {"tokens": 200, "temperature": 0.8, "seed": 0}

    def __init__(self, bundle_dir: Path, spec: Any, info: dict[str, Any]) -> None:
        from lstmflow.data.text import TOKENIZER_FILE, Tokenizer
        from lstmflow.models.ngram import load_ngram_partner

        self.spec = spec
        self.tokenizer = Tokenizer.load(bundle_dir / TOKENIZER_FILE)
        self.model = load_network(bundle_dir, spec, info["vocab_size"], info["vocab_size"], per_step=True)
        self.ngram = load_ngram_partner(bundle_dir)  # the n-gram the network is interpolated with, if any

    @staticmethod
    def bundle_info(features_dir: Path) -> dict[str, Any]:
        meta = json.loads((features_dir / "meta.json").read_text())
        return {"vocab_size": meta["vocab_size"], "tokenizer_kind": meta["tokenizer_kind"]}

    def example(self, info: dict[str, Any]) -> pd.DataFrame:
        """The start of the training text as a prompt, with a short continuation."""
        from lstmflow.data.corpus import read_text

        start = read_text(self.spec.data.path, f"pipelines.{self.spec.name}.data.path")[:40]
        return pd.DataFrame({"prompt": [start], "tokens": [20], "temperature": [0.8], "seed": [0]})

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per prompt: the prompt and the text generated after it."""
        from lstmflow.serving.generate import generate

        require_columns(frame, ["prompt"])
        bounds = limits()
        rows = frame.to_dict("records")
        settings = []
        for index, row in zip(frame.index, rows):
            if not isinstance(row["prompt"], str):
                raise BadRequest(f"column 'prompt', row {index!r}: {describe(row['prompt'])} is not text")
            settings.append(self._settings(index, row, bounds.max_tokens))
        texts = [
            decoded(
                index,
                lambda row=row, s=s: generate(
                    self.model, self.tokenizer, row["prompt"], s["tokens"], s["temperature"], s["seed"], self.ngram
                ),
            )
            for index, (row, s) in enumerate(zip(rows, settings))
        ]
        return pd.DataFrame({"prompt": [row["prompt"] for row in rows], "text": texts})

    def _settings(self, index: Any, row: dict[str, Any], max_tokens: int) -> dict[str, Any]:
        """A row's ``tokens``, ``temperature`` and ``seed`` (its defaults where missing), checked."""
        settings: dict[str, Any] = {}
        for key, default in self.DEFAULTS.items():
            value = row.get(key, default)
            if describe(value) == "a missing value":
                value = default
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise BadRequest(f"column {key!r}, row {index!r}: {describe(value)} is not a number")
            if not math.isfinite(value):
                raise BadRequest(f"column {key!r}, row {index!r}: {value} is not a finite number")
            settings[key] = value
        tokens, seed = settings["tokens"], settings["seed"]
        if tokens != int(tokens) or not 0 <= tokens <= max_tokens:
            raise BadRequest(
                f"column 'tokens', row {index!r}: {tokens}; give a whole number from 0 to {max_tokens} "
                f"(LSTMFLOW_SERVE_MAX_TOKENS)"
            )
        if seed != int(seed) or not 0 <= seed < 2**63:
            raise BadRequest(f"column 'seed', row {index!r}: {seed}; give a whole number >= 0")
        if settings["temperature"] < 0:
            raise BadRequest(f"column 'temperature', row {index!r}: {settings['temperature']}; give a number >= 0")
        return {"tokens": int(tokens), "temperature": float(settings["temperature"]), "seed": int(seed)}

    def score_text(self, text: str) -> tuple[float, int]:
        """(summed cross-entropy in nats, tokens scored) of every token of ``text`` after the first, read as one
        stream in spans of ``data.sequence_length`` with the stateful layers' state carried, as evaluation reads a
        part. Divided by the characters of ``text``, it compares models whose tokenizers differ."""
        import torch

        from lstmflow.training.objectives import stateful_layers

        ids = self.tokenizer.encode(text)
        if len(ids) < 2:
            raise BadRequest(
                f"the text holds {len(ids)} token(s) for this {self.tokenizer.kind} tokenizer; scoring needs 2"
            )
        stream = torch.tensor(ids, dtype=torch.int64)
        steps, stateful = self.spec.data.sequence_length, stateful_layers(self.spec)
        carry: dict[int, Any] = {}
        spans = []
        with torch.no_grad():
            for start in range(0, len(ids) - 1, steps):
                end = min(start + steps, len(ids) - 1)
                x = stream[start:end].float().view(1, -1, 1)  # (1, T, 1): the embedding's input
                logits, final = self.model.logits_carrying(x, carry)  # (1, T, V)
                carry = {index: state for index, state in final.items() if index in stateful}
                log_probabilities = torch.log_softmax(logits[0].double(), dim=-1)  # (T, V)
                spans.append(log_probabilities.gather(1, stream[start + 1 : end + 1, None])[:, 0])
        probabilities = torch.cat(spans).exp().numpy()[None, :]  # (1, len - 1)
        if self.ngram is not None:
            probabilities = self.ngram.target_probabilities(probabilities, np.asarray(ids)[None, :])
        return float(-np.log(probabilities).sum()), len(ids) - 1
