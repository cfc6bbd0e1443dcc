"""Beam search's length normalisation for translators: the test parts of trained translation pipelines decoded again
greedily and by beam search with several length exponents (``LENGTH_ALPHA``), scored with sacrebleu.

It reads the projects a quality run left (``python benchmarks/quality.py --sets django_fr,django_de,numbers_en_de
--workdir DIR``): each ``DIR/<set>-<time>/`` holds the prepared pairs and the trained run.

    python benchmarks/beam_length.py DIR [--width 4] [--alphas 0,0.6,1.0] [--no-append]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import cast

import torch
from _report import heading, publish

from lstmflow.config import PairsSpec, PipelineSpec
from lstmflow.data.pairs import PairFeatures, load_pairs, target_text
from lstmflow.evaluation.translation import translation_scores
from lstmflow.models import seq2seq
from lstmflow.serving.translator import translate_ids


def decoded(model: seq2seq.Seq2Seq, features: PairFeatures, width: int, max_steps: int) -> dict[str, float]:
    test = features.part("test")
    sources = [ids.tolist() for ids in test.sources]
    written = translate_ids(model, sources, features.bos_id, features.eos_id, max_steps, width)
    return translation_scores([target_text(features.target_tokenizer, ids) for ids in written], test.target_texts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="A quality run's --workdir holding translation projects.")
    parser.add_argument("--width", type=int, default=4, help="Beam width (default 4).")
    parser.add_argument("--alphas", default="0,0.6,1.0", help="Length exponents to compare (default 0,0.6,1.0).")
    parser.add_argument("--no-append", action="store_true", help="Print only; do not append to RESULTS.md.")
    args = parser.parse_args(argv)
    alphas = [float(text) for text in args.alphas.split(",")]
    rows = ["| set | greedy | " + " | ".join(f"beam {args.width}, alpha {a}" for a in alphas) + " |"]
    rows.append("| --- " * (len(alphas) + 2) + "|")
    for project in sorted(path for path in args.workdir.iterdir() if (path / "runs").is_dir()):
        model_path = max((project / "runs").glob("*/*/model.pt"), key=lambda path: path.stat().st_mtime)
        spec = PipelineSpec.model_validate(json.loads((model_path.parent / "bundle" / "spec.json").read_text()))
        if spec.task != "translate":
            continue
        features = load_pairs(next((project / "features").iterdir()))
        model = seq2seq.Seq2Seq(spec.model, features.source_vocab, features.target_vocab)
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
        max_steps = cast(PairsSpec, spec.data).max_length + 1  # a translator reads pairs
        cells = [decoded(model, features, 1, max_steps)]
        for alpha in alphas:
            seq2seq.LENGTH_ALPHA = alpha  # what beam_search ranks its finished candidates by
            cells.append(decoded(model, features, args.width, max_steps))
        rows.append(f"| {spec.name} | " + " | ".join(f"{c['chrf']:.2f} ({c['bleu']:.2f})" for c in cells) + " |")
    command = "python benchmarks/beam_length.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = "\n".join(rows)
    publish(f"{heading('beam search length normalisation, chrF (BLEU)', command)}\n{table}\n", not args.no_append)


if __name__ == "__main__":
    main()
