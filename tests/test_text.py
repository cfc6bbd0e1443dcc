"""Text data: reading each file format, the named data errors, the three tokenizers, the feature folder, a fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lstmflow.config import TextSpec, TokenizerSpec, validate_pipeline
from lstmflow.data.sequences import load_sequences
from lstmflow.data.text import (
    PAD_ID,
    UNK_ID,
    Tokenizer,
    fit_tokenizer,
    load_tokenizer,
    prepare_text_features,
    read_texts,
    text_model_io,
    text_steps,
)
from lstmflow.errors import DataError
from lstmflow.training.fit import fit
from lstmflow.training.loggers import ListLogger
from lstmflow.training.objectives import make_objective

torch.set_num_threads(1)

WHERE = "pipelines.reviews.data"
ROWS = [
    {"text": "Good film, great cast!", "label": "pos", "part": "train"},
    {"text": "Dull plot.\nBad acting.", "label": "neg", "part": "train"},  # two lines in one CSV cell
    {"text": "great film", "label": "pos", "part": "val"},
    {"text": "bad film", "label": "neg", "part": "test"},
]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows in the format the suffix says: CSV (quoted as needed), JSON Lines or Parquet."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        frame.to_parquet(path)
    return path


def text_spec(path: Path, **fields: Any) -> TextSpec:
    return TextSpec.model_validate({"kind": "text", "path": path, **fields})


def data_error(spec: TextSpec) -> str:
    with pytest.raises(DataError) as caught:
        read_texts(spec, WHERE)
    return str(caught.value)


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(
    ("suffix", "names"),
    [
        (".csv", ["line 2", "line 3", "line 5", "line 6"]),  # the second text spans lines 3 and 4
        (".jsonl", ["line 1", "line 2", "line 3", "line 4"]),
        (".parquet", ["row 1", "row 2", "row 3", "row 4"]),
    ],
)
def test_each_file_format_reads_texts_labels_names_and_parts(tmp_path: Path, suffix: str, names: list[str]) -> None:
    path = write_rows(tmp_path / f"reviews{suffix}", ROWS)
    table = read_texts(text_spec(path, split={"column": "part"}), WHERE)
    assert table.texts == [row["text"] for row in ROWS]
    assert table.labels == ["pos", "neg", "pos", "neg"]
    assert table.names == names
    assert table.given_parts == ["train", "train", "val", "test"]
    assert read_texts(text_spec(path), WHERE).given_parts is None


def test_jsonl_skips_blank_lines_and_names_the_real_line(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n\n{"text": "", "label": "neg"}\n', encoding="utf-8")
    assert data_error(text_spec(path)) == (f"{WHERE}.text_column: {path} has 1 empty text(s) in 'text': line 3")


def test_missing_columns_list_the_available_ones(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "reviews.csv", ROWS)
    assert data_error(text_spec(path, text_column="review", label_column="stars")) == (
        f"{WHERE}: {path} has no column(s) ['review', 'stars']; available: ['text', 'label', 'part']"
    )


def test_empty_and_blank_texts_are_named_by_line(tmp_path: Path) -> None:
    rows = [{"text": "fine", "label": "pos"}, {"text": "", "label": "neg"}, {"text": "  \t ", "label": "pos"}]
    path = write_rows(tmp_path / "reviews.csv", rows)
    assert data_error(text_spec(path)) == f"{WHERE}.text_column: {path} has 2 empty text(s) in 'text': line 3, line 4"


def test_text_na_is_a_text_not_a_missing_value(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "reviews.csv", [{"text": "NA", "label": "pos"}, {"text": "null", "label": "neg"}])
    assert read_texts(text_spec(path), WHERE).texts == ["NA", "null"]


def test_an_empty_label_is_named_by_row(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "reviews.parquet", [{"text": "fine", "label": "pos"}, {"text": "meh", "label": None}])
    assert data_error(text_spec(path)) == f"{WHERE}.label_column: {path} has 1 empty label cell(s) in 'label': row 2"


def test_bytes_that_are_not_utf8_are_named_by_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"text,label\nfine,pos\ncaf" + b"\xe9,neg\n")  # latin-1 é
    assert data_error(text_spec(path)) == (
        f"{WHERE}.path: {path} is not UTF-8: byte 0xe9 at offset 23 (line 3) cannot be decoded; save the file as UTF-8"
    )


def test_a_csv_row_with_too_many_cells_is_named(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\nfine,pos\ngood, really good,pos\n", encoding="utf-8")
    assert data_error(text_spec(path)) == (
        f"{WHERE}.path: {path} line 3 has 3 cell(s) but the header has 2; quote texts that hold commas"
    )


# ------------------------------------------------------------------------------------------------ tokenizers

CORPUS = ["The cat sat.", "the cat ran", "A dog sat", "the dog, the cat"]


def test_word_tokenizer_vocabulary_is_most_frequent_first_with_pad_and_unk() -> None:
    tokenizer = fit_tokenizer(TokenizerSpec(kind="word", min_frequency=1), CORPUS)
    # counts: the 4, cat 3, dog 2, sat 2, then once each (ties by the token)
    assert tokenizer.tokens == ["<pad>", "<unk>", "the", "cat", "dog", "sat", ",", ".", "a", "ran"]
    assert tokenizer.vocab_size == 10
    assert tokenizer.encode("The dog sat, the CAT.") == [2, 4, 5, 6, 2, 3, 7]
    assert tokenizer.encode("the zebra sat") == [2, UNK_ID, 5]
    assert (PAD_ID, UNK_ID) == (0, 1)


def test_word_tokenizer_vocab_size_min_frequency_and_lowercase() -> None:
    assert fit_tokenizer(TokenizerSpec(kind="word", vocab_size=4, min_frequency=1), CORPUS).tokens == [
        "<pad>",
        "<unk>",
        "the",
        "cat",
    ]
    assert fit_tokenizer(TokenizerSpec(kind="word", min_frequency=2), CORPUS).tokens == [
        "<pad>",
        "<unk>",
        "the",
        "cat",
        "dog",
        "sat",
    ]
    cased = fit_tokenizer(TokenizerSpec(kind="word", lowercase=False, min_frequency=1), CORPUS)
    assert cased.encode("The") != cased.encode("the") and UNK_ID not in cased.encode("The the A")
    assert cased.encode("THE") == [UNK_ID]


def test_char_tokenizer_keeps_spaces_and_maps_unseen_characters_to_unknown() -> None:
    tokenizer = fit_tokenizer(TokenizerSpec(kind="char", min_frequency=1), ["abba", "ab c"])
    assert tokenizer.tokens == ["<pad>", "<unk>", "a", "b", " ", "c"]
    assert tokenizer.encode("Cab z") == [5, 2, 3, 4, UNK_ID]


def test_bpe_tokenizer_round_trips_known_words_and_caps_the_vocabulary() -> None:
    corpus = ["lower lowest newer newest", "wider widest low new"] * 20
    tokenizer = fit_tokenizer(TokenizerSpec(kind="bpe", vocab_size=20), corpus)
    assert tokenizer.vocab_size == 20
    assert tokenizer.bpe.id_to_token(PAD_ID) == "<pad>" and tokenizer.bpe.id_to_token(UNK_ID) == "<unk>"
    ids = tokenizer.encode("Lowest NEWER")
    assert UNK_ID not in ids and len(ids) < len("lowestnewer")  # merges made subwords
    assert "".join(tokenizer.bpe.id_to_token(i) for i in ids) == "lowestnewer"
    assert tokenizer.encode("low é") == [*tokenizer.encode("low"), UNK_ID]  # é is not in the training alphabet
    roomy = fit_tokenizer(TokenizerSpec(kind="bpe", vocab_size=60), corpus)  # merges stop once every word is whole
    assert roomy.vocab_size == 29 and all(len(roomy.encode(word)) == 1 for word in corpus[0].split())

    # an alphabet larger than the cap keeps its most frequent characters only
    small = fit_tokenizer(TokenizerSpec(kind="bpe", vocab_size=5), ["aaaa bbb cc d e f"])
    assert small.vocab_size == 5 and small.encode("a b f") == [2, 3, UNK_ID]


def test_bpe_min_frequency_stops_rare_merges_and_lowercase_can_be_off() -> None:
    corpus = ["abab abab xyz"]
    merged = fit_tokenizer(TokenizerSpec(kind="bpe", vocab_size=50, min_frequency=1), corpus)
    chars_only = fit_tokenizer(TokenizerSpec(kind="bpe", vocab_size=50, min_frequency=3), corpus)
    assert len(merged.encode("xyz")) == 1  # seen once, merged at min_frequency 1
    assert len(chars_only.encode("xyz")) == 3 and len(chars_only.encode("abab")) == 2  # "ab" occurs 4 times
    cased = fit_tokenizer(TokenizerSpec(kind="bpe", vocab_size=50, lowercase=False), corpus)
    assert cased.encode("ABAB") == [UNK_ID] * 4


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_a_saved_tokenizer_loads_and_encodes_the_same(tmp_path: Path, kind: str) -> None:
    tokenizer = fit_tokenizer(TokenizerSpec(kind=kind, vocab_size=40), CORPUS)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    sample = "The cat saw a zebra, 3 times!"
    assert loaded.encode(sample) == tokenizer.encode(sample) and loaded.vocab_size == tokenizer.vocab_size
    assert text_steps(loaded, sample, 4).tolist() == [[float(i)] for i in tokenizer.encode(sample)[:4]]


# ------------------------------------------------------------------------------------------------ features


def test_features_fit_the_tokenizer_on_train_only_and_truncate_counted(tmp_path: Path) -> None:
    rows = [
        {"text": "one two three four five six", "label": "a", "part": "train"},
        {"text": "two three", "label": "b", "part": "train"},
        {"text": "two three zebra", "label": "a", "part": "val"},  # zebra only outside train: unknown
        {"text": "three giraffe", "label": "b", "part": "test"},
    ]
    spec = text_spec(
        write_rows(tmp_path / "t.jsonl", rows),
        max_length=4,
        split={"column": "part"},
        tokenizer={"kind": "word", "min_frequency": 1},
    )
    summary = prepare_text_features(spec, tmp_path / "features", WHERE)
    assert summary["vocab_size"] == 8  # pad, unk and the six training words
    assert (summary["truncated_sequences"], summary["truncated_steps"]) == (1, 2)
    assert summary["unknown_tokens_val_test"] == 2

    tokenizer = load_tokenizer(tmp_path / "features")
    assert tokenizer.encode("zebra giraffe") == [UNK_ID, UNK_ID]
    features = load_sequences(tmp_path / "features")
    assert features.meta["extra_meta"]["vocab_size"] == 8 and features.n_features == 1
    assert features.meta["extra_meta"]["truncated"] == {"texts": 1, "tokens_dropped": 2}
    stored = [features.values[start:end, 0].tolist() for start, end in zip(features.offsets[:-1], features.offsets[1:])]
    assert stored == [tokenizer.encode(row["text"])[:4] for row in rows]  # the first 4 ids, exact
    assert stored[2][-1] == UNK_ID
    assert text_model_io(spec, WHERE) == (8, 2)


def test_a_text_of_unknown_characters_still_gives_unknown_ids(tmp_path: Path) -> None:
    rows = [
        {"text": "ab", "label": "x", "part": "train"},
        {"text": "ba", "label": "y", "part": "train"},
        {"text": "€€", "label": "x", "part": "val"},
    ]
    spec = text_spec(write_rows(tmp_path / "t.csv", rows), tokenizer={"kind": "char"}, split={"column": "part"})
    prepare_text_features(spec, tmp_path / "features", WHERE)
    features = load_sequences(tmp_path / "features")
    assert features.values[features.offsets[2] :, 0].tolist() == [UNK_ID, UNK_ID]


# ------------------------------------------------------------------------------------------------ a fit


def write_order_texts(path: Path, per_class: int = 60, seed: int = 0) -> Path:
    """Two classes with the same words: `red` comes before `blue`, or after it, among random filler words."""
    rng = np.random.default_rng(seed)
    filler = ["the", "a", "some", "big", "small", "old", "new", "car", "house", "tree"]
    rows = []
    for label, first, second in (("red_first", "red", "blue"), ("blue_first", "blue", "red")):
        for _ in range(per_class):
            words = list(rng.choice(filler, size=int(rng.integers(3, 9))))
            i, j = sorted(rng.choice(len(words) + 1, size=2, replace=False))
            words.insert(j, second)
            words.insert(i, first)
            rows.append({"text": " ".join(words), "label": label})
    return write_rows(path, rows)


def test_a_text_classifier_learns_word_order(tmp_path: Path) -> None:
    write_order_texts(tmp_path / "order.csv")
    raw = {
        "task": "classify",
        "data": {
            "kind": "text",
            "path": "order.csv",
            "split": {"val": 0.25, "test": 0.0},
            "tokenizer": {"kind": "word"},
        },
        "model": {"layers": [{"embedding": {"dim": 8}}, {"lstm": {"units": 16}}, {"dense": {"activation": "softmax"}}]},
        "train": {"epochs": 8, "batch_size": 16, "optimizer": {"lr": 0.03}, "seed": 0},
    }
    spec = validate_pipeline("order", raw, tmp_path)
    prepare_text_features(spec.data, tmp_path / "features", "pipelines.order.data")
    assert make_objective(spec, tmp_path / "features").n_features == 14  # pad, unk, 10 fillers, red, blue

    result = fit(spec, tmp_path / "features", tmp_path / "run", ListLogger(), progress=False)
    assert max(row["val_accuracy"] for row in result.history) >= 0.95  # a bag of words is at chance (0.5)


def test_text_classification_maps_words_seen_once_to_unknown_by_default(tmp_path: Path) -> None:
    """`min_frequency` defaults to 2 for text whatever the tokenizer kind; here the word tokenizer shows it."""
    rows = [
        {"text": "a gripping thriller", "label": "good", "part": "train"},
        {"text": "a gripping drama", "label": "good", "part": "train"},
        {"text": "a dull plot", "label": "bad", "part": "train"},
        {"text": "a dull script", "label": "bad", "part": "train"},
        {"text": "gripping", "label": "good", "part": "val"},
        {"text": "dull", "label": "bad", "part": "test"},
    ]
    path = write_rows(tmp_path / "t.csv", rows)
    word = {"kind": "word"}
    prepare_text_features(text_spec(path, split={"column": "part"}, tokenizer=word), tmp_path / "default", WHERE)
    tokenizer = load_tokenizer(tmp_path / "default")
    assert tokenizer.tokens == ["<pad>", "<unk>", "a", "dull", "gripping"]  # thriller, drama, plot, script: once each
    assert tokenizer.encode("a gripping thriller") == [2, 4, UNK_ID]
    prepare_text_features(
        text_spec(path, split={"column": "part"}, tokenizer={**word, "min_frequency": 1}), tmp_path / "all", WHERE
    )
    assert "thriller" in load_tokenizer(tmp_path / "all").tokens


def test_text_classification_reads_unseen_words_as_known_subwords_by_default(tmp_path: Path) -> None:
    """The text default is subwords (bpe) under a convolution: a word never seen in training, such as a new
    inflection, still reaches the model as pieces it has learnt, where a word vocabulary gives `<unk>`."""
    train = ["walking home", "walked home", "talking loud", "talked loud", "walks far", "talks far"]
    rows = [{"text": text, "label": text.split()[0][:4], "part": "train"} for text in train]
    rows += [{"text": "walk", "label": "walk", "part": "val"}, {"text": "talk", "label": "talk", "part": "test"}]
    path = write_rows(tmp_path / "t.csv", rows)
    raw = {"task": "classify", "data": {"kind": "text", "path": "t.csv", "split": {"column": "part"}}}
    spec = validate_pipeline("reviews", raw, tmp_path)
    assert [layer.kind for layer in spec.model.layers] == [
        "embedding", "conv1d", "global_max_pool", "dropout", "dense"
    ]  # fmt: skip
    assert (spec.data.tokenizer.kind, spec.data.tokenizer.min_frequency) == ("bpe", 2)
    prepare_text_features(spec.data, tmp_path / "features", WHERE)
    ids = load_tokenizer(tmp_path / "features").encode("walker talker")  # neither word was in training
    assert UNK_ID not in ids and len(ids) < len("walkertalker")  # pieces longer than a character, none unknown
    word = text_spec(path, split={"column": "part"}, tokenizer={"kind": "word"})
    assert prepare_text_features(word, tmp_path / "words", WHERE)["vocab_size"] == 5  # pad, unk, home, loud, far
    assert load_tokenizer(tmp_path / "words").encode("walker talker") == [UNK_ID, UNK_ID]
