"""Paired texts for translation: reading tables and aligned files, bad and long pairs, the parts, the tokenizers,
the batch layout, decoding, and the numbers demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from lstmflow.config import PairsSpec, TokenizerSpec
from lstmflow.data.demo import _numbers_en_fr
from lstmflow.data.kinds import build_features, parse_data_spec
from lstmflow.data.pairs import load_pairs, pairs_model_io, prepare_pairs_features, read_pairs, target_text
from lstmflow.data.text import UNK_ID, fit_tokenizer
from lstmflow.errors import DataError

WHERE = "pipelines.numbers.data"
#: Ten pairs, so that the default fractions (0.15, 0.15) leave 2 in val and 2 in test.
PAIRS = [
    ("one", "un"),
    ("two", "deux"),
    ("three", "trois"),
    ("four", "quatre"),
    ("five", "cinq"),
    ("six", "six"),
    ("seven", "sept"),
    ("eight", "huit"),
    ("nine", "neuf"),
    ("ten", "dix"),
]


def spec(**keys: Any) -> PairsSpec:
    return PairsSpec.model_validate({"kind": "pairs", **keys})


def csv_file(tmp_path: Path, rows: list[tuple[Any, ...]], name: str = "pairs.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows, columns=["source", "target", "part"][: len(rows[0])]).to_csv(path, index=False)
    return path


def aligned_files(tmp_path: Path, sources: list[str], targets: list[str]) -> tuple[Path, Path]:
    source, target = tmp_path / "src.en", tmp_path / "tgt.fr"
    source.write_text("".join(line + "\n" for line in sources), encoding="utf-8")
    target.write_text("".join(line + "\n" for line in targets), encoding="utf-8")
    return source, target


def prepared(tmp_path: Path, data: PairsSpec, out: str = "features") -> dict[str, Any]:
    return prepare_pairs_features(data, tmp_path / out, WHERE)


# ------------------------------------------------------------------------------------------------ config


def test_a_pair_spec_defaults_to_characters_with_their_case() -> None:
    data = parse_data_spec({"kind": "pairs", "path": "p.csv", "target_tokenizer": {"kind": "word"}})
    assert isinstance(data, PairsSpec)
    assert (data.source_tokenizer.kind, data.source_tokenizer.lowercase, data.source_tokenizer.min_frequency) == (
        "char",
        False,
        1,
    )
    assert (data.target_tokenizer.kind, data.target_tokenizer.lowercase) == ("word", False)
    assert (data.max_length, data.bad_pairs, data.source_column, data.target_column) == (
        100,
        "fail",
        "source",
        "target",
    )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "path"),
        ({"path": "a", "target_path": "b", "split": {"column": "part"}}, "split.column needs a table in path"),
        ({"path": "p.csv", "max_length": 0}, "max_length"),
        ({"path": "p.csv", "bad_pairs": "drop"}, "bad_pairs"),
    ],
)
def test_config_errors_name_the_key(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**keys)


# ------------------------------------------------------------------------------------------------ reading


def test_csv_and_jsonl_tables_read_the_same(tmp_path: Path) -> None:
    path = csv_file(tmp_path, [("forty-two", "quarante-deux"), ('Say "hi", then', "Dis « salut », puis")])
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"en": s, "fr": t}, ensure_ascii=False) + "\n" for s, t in PAIRS[:1] + PAIRS[:1])
    )
    table = read_pairs(spec(path=str(path)), WHERE)
    assert table.sources == ["forty-two", 'Say "hi", then'] and table.targets[1] == "Dis « salut », puis"
    assert table.names == ["line 2", "line 3"] and table.given_parts is None
    by_json = read_pairs(spec(path=str(jsonl), source_column="en", target_column="fr"), WHERE)
    assert by_json.sources == ["one", "one"] and by_json.targets == ["un", "un"]


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    path = csv_file(tmp_path, PAIRS)
    with pytest.raises(DataError, match=r"no column\(s\) \['fr'\]; available: \['source', 'target'\]"):
        read_pairs(spec(path=str(path), target_column="fr"), WHERE)


def test_aligned_files_pair_line_by_line(tmp_path: Path) -> None:
    source, target = aligned_files(tmp_path, [s for s, _ in PAIRS], [t for _, t in PAIRS])
    target.write_bytes(target.read_bytes().replace(b"\n", b"\r\n"))  # Windows line ends are not part of a text
    table = read_pairs(spec(path=str(source), target_path=str(target)), WHERE)
    assert list(zip(table.sources, table.targets)) == PAIRS and table.names[-1] == "line 10"


def test_aligned_files_of_different_lengths_are_refused(tmp_path: Path) -> None:
    source, target = aligned_files(tmp_path, ["one", "two", "three"], ["un", "deux"])
    with pytest.raises(DataError) as error:
        read_pairs(spec(path=str(source), target_path=str(target)), WHERE)
    assert str(error.value) == (
        f"{WHERE}: path {source} has 3 line(s) but target_path {target} has 2; line n of each must be the same pair"
    )


def test_a_target_file_that_is_not_utf8_is_named_by_its_key(tmp_path: Path) -> None:
    source, target = aligned_files(tmp_path, ["one"], ["un"])
    target.write_bytes(b"\xe9t\xe9\n")
    with pytest.raises(DataError, match=rf"^{WHERE}\.target_path: .* is not UTF-8: byte 0xe9"):
        read_pairs(spec(path=str(source), target_path=str(target)), WHERE)


# ------------------------------------------------------------------------------------------------ bad and long pairs


def test_an_empty_side_fails_naming_the_rows_or_is_skipped_and_counted(tmp_path: Path) -> None:
    rows = [*PAIRS, ("eleven", ""), ("   ", "douze")]
    path = csv_file(tmp_path, rows)
    with pytest.raises(DataError) as error:
        prepared(tmp_path, spec(path=str(path)))
    assert str(error.value) == (
        f"{WHERE}.bad_pairs: 2 pair(s) with an empty side (set bad_pairs: skip to leave them out): "
        "line 12 (target), line 13 (source)"
    )
    summary = prepared(tmp_path, spec(path=str(path), bad_pairs="skip"))
    assert summary["skipped_pairs"] == 2 and summary["n_pairs"] == 10
    assert json.loads((tmp_path / "features" / "meta.json").read_text())["skipped_pairs"] == 2


def test_pairs_too_long_are_left_out_whole_and_counted(tmp_path: Path) -> None:
    long = ("a sentence far longer than ten characters", "court")
    rows = [(*pair, part) for pair, part in zip(PAIRS, ["train"] * 6 + ["val"] * 2 + ["test"] * 2)]
    path = csv_file(tmp_path, [*rows, (*long, "train"), (PAIRS[0][0], "une phrase bien trop longue", "test")])
    summary = prepared(tmp_path, spec(path=str(path), max_length=10, split={"column": "part"}))
    assert summary["too_long"] == 2 and summary["n_pairs"] == 10
    features = load_pairs(tmp_path / "features")
    every = features.part("train+val").target_texts + features.part("test").target_texts
    assert sorted(every) == sorted(t for _, t in PAIRS)  # nothing cut short


def test_a_split_that_leaves_a_part_empty_is_refused(tmp_path: Path) -> None:
    path = csv_file(tmp_path, [(*pair, "train") for pair in PAIRS[:3]] + [(*PAIRS[3], "test")])
    with pytest.raises(DataError, match=rf"^{WHERE}\.split: no pairs in the val part\(s\) \(train 3, val 0, test 1\)"):
        prepared(tmp_path, spec(path=str(path), split={"column": "part"}))


# ------------------------------------------------------------------------------------------------ features


def test_the_tokenizers_are_fitted_on_the_training_pairs_only(tmp_path: Path) -> None:
    rows = [(s, t, "train") for s, t in PAIRS[:8]] + [("qzj", "ùw", "val"), ("qqq", "ÿ", "test")]
    summary = prepared(tmp_path, spec(path=str(csv_file(tmp_path, rows)), split={"column": "part"}))
    features = load_pairs(tmp_path / "features")
    assert (summary["n_train"], summary["n_val"], summary["n_test"]) == (8, 1, 1)
    assert "q" not in features.source_tokenizer.tokens and "ù" not in features.target_tokenizer.tokens
    assert features.part("val").sources[0].tolist() == [UNK_ID] * 3
    assert (summary["unknown_source_tokens_val_test"], summary["unknown_target_tokens_val_test"]) == (6, 3)
    assert pairs_model_io(spec(path=str(tmp_path / "pairs.csv"), split={"column": "part"}), WHERE) == (
        features.source_vocab,
        features.target_vocab,
    )


def test_the_folder_is_written_the_same_twice_and_read_back(tmp_path: Path) -> None:
    data = spec(path=str(csv_file(tmp_path, PAIRS)))
    prepared(tmp_path, data, "a")
    prepared(tmp_path, data, "b")
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert "pairs.parquet" in names and "source_tokenizer.json" in names and "target_tokenizer.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    features = load_pairs(tmp_path / "a")
    assert (features.source_vocab, features.target_vocab) == pairs_model_io(data, WHERE)
    assert (features.bos_id, features.eos_id) == (features.target_vocab - 2, features.target_vocab - 1)
    parts = {name: len(features.part(name)) for name in ("train", "val", "test", "train+val")}
    assert parts == {"train": 6, "val": 2, "test": 2, "train+val": 8}
    train = features.part("train")  # every character of a training pair is in the vocabulary
    assert [features.target_tokenizer.decode(ids) for ids in train.targets] == train.target_texts


def test_given_files_split_a_table_of_pairs(tmp_path: Path) -> None:
    train = csv_file(tmp_path, PAIRS[:8], "train.csv")
    test = csv_file(tmp_path, PAIRS[8:], "test.csv")
    summary = prepared(tmp_path, spec(path=str(train), split={"files": {"test": str(test)}, "val": 0.25}))
    assert (summary["n_train"], summary["n_val"], summary["n_test"], summary["split"]) == (6, 2, 2, "files")
    meta = json.loads((tmp_path / "features" / "meta.json").read_text())
    assert meta["split"]["val_drawn_from_train"]["samples"][0].startswith("train.csv line ")


def test_build_features_dispatches_the_pairs_kind(tmp_path: Path) -> None:
    data = parse_data_spec({"kind": "pairs", "path": str(csv_file(tmp_path, PAIRS))})
    summary = build_features(data, None, tmp_path / "out", WHERE, tmp_path / "cache")
    assert summary["n_pairs"] == 10 and (tmp_path / "out" / "meta.json").is_file()


# ------------------------------------------------------------------------------------------------ batches


def test_a_batch_starts_the_decoder_with_bos_and_ends_its_targets_with_eos(tmp_path: Path) -> None:
    prepared(tmp_path, spec(path=str(csv_file(tmp_path, PAIRS))))
    features = load_pairs(tmp_path / "features")
    train = features.part("train")
    batches = list(train.batches(4))
    assert len(batches) == train.batch_count(4) == 2
    batch = batches[0]
    bos, eos = features.bos_id, features.eos_id
    for row, i in enumerate(batch.positions.tolist()):
        source, target = train.sources[i], train.targets[i]
        assert batch.source_lengths[row] == len(source)
        assert batch.source[row, : len(source)].tolist() == source.tolist()
        assert batch.source[row, len(source) :].eq(0).all()
        assert batch.decoder_input[row, : len(target) + 1].tolist() == [bos, *target.tolist()]
        assert batch.decoder_target[row, : len(target) + 1].tolist() == [*target.tolist(), eos]
        assert batch.decoder_input[row, len(target) + 1 :].eq(0).all()
        assert target_text(features.target_tokenizer, batch.decoder_target[row].tolist()) == train.target_texts[i]
    assert batch.decoder_input.shape[1] == max(len(train.targets[i]) for i in batch.positions.tolist()) + 1
    assert batch.source.dtype == batch.decoder_target.dtype == torch.int64
    lengths = [len(train.sources[i]) for batch in batches for i in batch.positions.tolist()]
    assert lengths == sorted(lengths)  # unshuffled: by source length


def test_the_shuffled_order_depends_only_on_seed_and_epoch(tmp_path: Path) -> None:
    rows = [(f"number {n}", f"nombre {n}") for n in range(40)]
    prepared(tmp_path, spec(path=str(csv_file(tmp_path, rows))))
    train = load_pairs(tmp_path / "features").part("train")

    def order(seed: int, epoch: int) -> list[int]:
        return [i for batch in train.batches(5, shuffle=True, seed=seed, epoch=epoch) for i in batch.positions.tolist()]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 1)) == list(range(len(train)))


# ------------------------------------------------------------------------------------------------ decoding


def test_char_decode_round_trips_and_reads_unknown_as_its_token() -> None:
    tokenizer = fit_tokenizer(TokenizerSpec(kind="char", lowercase=False), ["Quarante-deux l'homme"])
    assert tokenizer.decode(tokenizer.encode("l'homme-deux")) == "l'homme-deux"
    assert tokenizer.decode([0, *tokenizer.encode("Qz"), 0]) == "Q<unk>"


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("quarante - deux", "quarante-deux"),
        ("l ' homme a vu quatre-vingt-dix chiens .", "l'homme a vu quatre-vingt-dix chiens."),
        ("one thousand, two hundred (roughly) 50%!", "one thousand, two hundred (roughly) 50%!"),
        ("don't stop - ever", "don't stop-ever"),  # the pieces keep no spacing: a spaced dash reads as a hyphen
    ],
)
def test_word_decode_puts_the_spaces_back(text: str, decoded: str) -> None:
    tokenizer = fit_tokenizer(TokenizerSpec(kind="word", lowercase=False), [text])
    assert tokenizer.decode(tokenizer.encode(text)) == decoded


def test_word_decode_spaces_an_apostrophe_that_is_not_inside_a_word() -> None:
    tokenizer = fit_tokenizer(TokenizerSpec(kind="word"), ["' quoted ' , then"])
    assert tokenizer.decode(tokenizer.encode("' quoted ' , then")) == "' quoted ', then"


# ------------------------------------------------------------------------------------------------ demo


def test_the_numbers_demo_writes_english_and_french() -> None:
    numbers = _numbers_en_fr()
    assert list(numbers.columns) == ["source", "target"] and len(numbers) == 3500
    assert numbers.iloc[42].tolist() == ["forty-two", "quarante-deux"]
    assert numbers.iloc[80].tolist() == ["eighty", "quatre-vingts"]
    assert numbers.iloc[71].tolist() == ["seventy-one", "soixante et onze"]
    assert numbers["source"].is_unique and len(numbers.to_csv(index=False).encode()) < 300_000
