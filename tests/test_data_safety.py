"""Input that must never be misread: one spelling per class, repeated columns, binary files, YAML errors and tags,
Hugging Face datasets directories, empty texts to predict. User-facing cases go through the CLI (exit code 2 and
one paragraph); the rest through the loaders every task uses."""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from test_cli_errors import assert_user_error

from transferlab.config import build_config
from transferlab.data.sources import label_names, load_labelled, load_table
from transferlab.errors import UserError
from transferlab.pipeline import load_run_data


@pytest.fixture
def cli(transferlab_cli, capsys, monkeypatch, tmp_path):
    """`transferlab ARGS` in-process from tmp_path; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger("transferlab"), "handlers", [])  # main() adds one on this test's stderr

    def run(*args) -> tuple[int, str, str]:
        code = transferlab_cli(*args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def csv_file(path: Path, labels: list, texts: list[str] | None = None) -> Path:
    texts = texts or [f"review number {i}" for i in range(len(labels))]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def train(data: Path | str, *extra) -> list:
    return ["train", "--data", data, "--max-length", "16", "--epochs", "1", "--batch-size", "8", "--output", "runs",
            "--set", "doctor.enabled=false", *extra]


def user_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


# --- one class, one spelling ---------------------------------------------------------------------------

def test_one_and_one_point_zero_are_one_class(tmp_path):
    frame = load_labelled(str(csv_file(tmp_path / "d.csv", ["1", "1.0", "0", "0.0", "+1", "00"])))
    assert frame["label"].tolist() == ["1", "1", "0", "0", "1", "0"]
    assert label_names(frame) == ["0", "1"]


def test_jsonl_numbers_and_number_strings_are_one_class(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n"
                            for i, label in enumerate([1, "1.0", 0, "0", 2.50, "2.5"])))
    frame = load_labelled(str(path))
    assert label_names(frame) == ["0", "1", "2.5"]


def test_numeric_labels_sort_as_numbers(tmp_path):
    frame = load_labelled(str(csv_file(tmp_path / "d.csv", ["10", "1.5", "2", "0.5"])))
    assert label_names(frame) == ["0.5", "1.5", "2", "10"]


def test_numbers_mixed_with_words_are_refused(cli, tmp_path):
    path = csv_file(tmp_path / "mixed.csv", ["0", "positive", "1", "negative", "1", "positive"])
    assert_user_error(cli(*train(path)), "mixed.csv", "column 'label'", "mixes numbers and words",
                      "'0', '1' (data rows 1, 3, 5)", "'positive', 'negative' (data rows 2, 4, 6)",
                      "all words or all numbers")


def test_many_distinct_fractions_look_like_a_regression_target(cli, tmp_path):
    scores = [f"{i + 0.25:.2f}" for i in range(40)]
    path = csv_file(tmp_path / "scores.csv", scores)
    assert_user_error(cli(*train(path)), "scores.csv", "40 distinct non-integer numbers", "regression target",
                      "--task pairs", "classification, tokens, qa, pairs and text2text")


def test_a_few_fractional_classes_are_kept_with_a_warning(tmp_path, caplog):
    path = csv_file(tmp_path / "stars.csv", ["0.5", "1.50", "1.5", "2", "0.5", "2.0"])
    frame = load_labelled(str(path))
    assert label_names(frame) == ["0.5", "1.5", "2"]
    assert "non-integer numbers as labels (0.5, 1.5)" in caplog.text


def test_pair_classification_labels_are_normalised(tmp_path):
    path = tmp_path / "nli.csv"
    pd.DataFrame({"text_a": [f"a{i}" for i in range(6)], "text_b": [f"b{i}" for i in range(6)],
                  "label": ["1", "1.0", "0", "0.0", "1", "0"]}).to_csv(path, index=False)
    cfg = build_config({"task": "pairs", "pairs": {"objective": "classification"},
                        "data": {"train": str(path), "eval": str(path)}})
    assert load_run_data(cfg).labels == ["0", "1"]


# --- repeated columns ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [
    ("d.csv", "text,label,label\ngood,positive,1\nbad,negative,0\n"),
    ("d.tsv", "text\tlabel\tlabel\ngood\tpositive\t1\nbad\tnegative\t0\n"),
    ("d.csv.gz", gzip.compress(b"text,label,label\ngood,positive,1\nbad,negative,0\n")),
    ("d.jsonl", '{"text": "good", "label": "positive"}\n{"text": "bad", "label": "negative", "label": "0"}\n'),
    ("d.json", '[{"text": "good", "label": "positive", "label": "1"}]'),
], ids=["csv", "tsv", "csv.gz", "jsonl", "json"])
def test_repeated_column_names_are_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = user_error(load_table, path)
    assert "'label'" in message and ("more than one column" in message or "appears twice" in message)
    if name == "d.jsonl":
        assert "line 2" in message


def test_repeated_parquet_column_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table([["good"], ["positive"], ["1"]], names=["text", "label", "label"]), path)
    assert "more than one column named 'label'" in user_error(load_table, path)


def test_repeated_csv_column_through_the_cli(cli, tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,label,label\n" + "".join(f"text {i},{i % 2},{'ab'[i % 2]}\n" for i in range(8)))
    assert_user_error(cli(*train(path)), "twice.csv", "more than one column named 'label'", "Rename or remove")


def test_a_column_really_named_like_a_renamed_repeat_is_kept(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,label.1\ngood,positive,x\nbad,negative,y\n")
    assert list(load_table(path).columns) == ["text", "label", "label.1"]


# --- files that are not text, YAML that is not plain ---------------------------------------------------

def _zip_bytes(tmp_path: Path) -> bytes:
    with zipfile.ZipFile(tmp_path / "sheet.zip", "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return (tmp_path / "sheet.zip").read_bytes()


@pytest.mark.parametrize("content, kind", [
    (lambda tmp: bytes(range(256)) * 8, "NUL bytes, the first at byte offset 0"),
    (_zip_bytes, "a ZIP archive"),
    (lambda tmp: gzip.compress(b"text,label\ngood,1\n"), "gzip-compressed data"),
], ids=["nul-bytes", "zip", "gzip"])
def test_binary_file_given_as_csv(cli, tmp_path, content, kind):
    path = tmp_path / "data.csv"
    path.write_bytes(content(tmp_path))
    assert_user_error(cli(*train(path)), "data.csv", "is not a text table", kind, "export a spreadsheet as CSV")


def test_utf16_csv_gets_the_right_iconv_command(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\ngood,1\n".encode("utf-16"))
    assert "iconv -f UTF-16 -t UTF-8" in user_error(load_table, path)


def test_yaml_syntax_error_in_an_override(cli, tmp_path):
    assert_user_error(cli(*train("rotten-tomatoes", "--set", "training.epochs=[1")), "training.epochs=[1",
                      "not valid YAML", "line 1, column 3", "a list ([1, 2])")


def test_yaml_tag_in_an_override(cli):
    assert_user_error(cli(*train("rotten-tomatoes", "--set", "seed=!!python/object/apply:os.getpid []")),
                      "!!python/object/apply:os.getpid", "tags are not allowed", "plain YAML")


def test_yaml_python_tag_in_a_config_file(cli, tmp_path):
    config = tmp_path / "evil.yaml"
    config.write_text("training:\n  epochs: !!python/object:builtins.int {}\n")
    assert_user_error(cli("train", "--config", config), "evil.yaml", "!!python/object:builtins.int",
                      "line 2, column 11", "tags are not allowed", "plain YAML")


def test_yaml_syntax_error_in_a_config_file_is_one_line(cli, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("training:\n  epochs: [1\n")
    assert_user_error(cli("train", "--config", config), "broken.yaml", "is not valid YAML", "line 3, column 1",
                      "Fix the syntax")


def test_config_file_that_is_not_utf8(cli, tmp_path):
    config = tmp_path / "latin.yaml"
    config.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert_user_error(cli("train", "--config", config), "latin.yaml", "is not UTF-8 text", "byte offset 9")


# --- Hugging Face datasets directories ----------------------------------------------------------------------

SENTIMENT = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})


def sentiment(n: int, offset: int = 0) -> Dataset:
    rows = {"sentence": [f"review {offset + i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    return Dataset.from_dict(rows, features=SENTIMENT)


@pytest.fixture
def sentiment_dict(tmp_path) -> Path:
    """A DatasetDict with train (12), validation (4) and test (6, unlabelled: -1) splits, saved to disk."""
    test = Dataset.from_dict({"sentence": [f"test {i}" for i in range(6)], "label": [-1] * 6}, features=SENTIMENT)
    DatasetDict(train=sentiment(12), validation=sentiment(4, 100), test=test).save_to_disk(tmp_path / "sst")
    return tmp_path / "sst"


def test_dataset_directory_reads_class_names(tmp_path):
    sentiment(6).save_to_disk(tmp_path / "one")
    frame = load_labelled(str(tmp_path / "one"), text_column="sentence")
    assert frame["label"].tolist() == ["negative", "positive"] * 3


def test_dataset_dict_splits_become_train_and_eval(sentiment_dict):
    cfg = build_config({"data": {"train": str(sentiment_dict), "text_column": "sentence"}})
    data = load_run_data(cfg)
    assert sorted(data.train["text"]) == sorted(f"review {i}" for i in range(12))
    assert sorted(data.eval["text"]) == sorted(f"review {100 + i}" for i in range(4))
    assert data.labels == ["negative", "positive"]


def test_an_eval_file_given_wins_over_the_validation_split(sentiment_dict):
    cfg = build_config({"data": {"train": str(sentiment_dict), "eval": f"{sentiment_dict}:train",
                                 "text_column": "sentence"}})
    assert len(load_run_data(cfg).eval) == 12


def test_a_split_is_chosen_after_a_colon(sentiment_dict):
    frame = load_labelled(f"{sentiment_dict}:validation", text_column="sentence")
    assert frame["text"].tolist() == [f"review {100 + i}" for i in range(4)]


def test_unlabelled_rows_of_a_test_split_are_missing_labels(sentiment_dict):
    assert "no usable rows" in user_error(load_labelled, f"{sentiment_dict}:test", text_column="sentence")


def test_dataset_dict_with_only_train_is_split_as_usual(tmp_path):
    DatasetDict(train=sentiment(20)).save_to_disk(tmp_path / "only")
    cfg = build_config({"data": {"train": str(tmp_path / "only"), "text_column": "sentence", "eval_fraction": 0.25}})
    data = load_run_data(cfg)
    assert (len(data.train), len(data.eval)) == (15, 5)


@pytest.mark.parametrize("suffix, fragments", [
    (":dev", ("has no split 'dev'", "train, validation, test")),
    ("", ("splits a, b", ":a")),  # no train split: the user must name one
])
def test_split_errors(tmp_path, sentiment_dict, suffix, fragments):
    directory = sentiment_dict if suffix else tmp_path / "ab"
    if not suffix:
        DatasetDict(a=sentiment(4), b=sentiment(4)).save_to_disk(directory)
    cfg = build_config({"data": {"train": f"{directory}{suffix}", "text_column": "sentence"}})
    message = user_error(load_run_data, cfg)
    assert all(fragment in message for fragment in fragments), message


def test_a_single_dataset_has_no_splits(tmp_path):
    sentiment(4).save_to_disk(tmp_path / "one")
    assert "single Dataset" in user_error(load_table, f"{tmp_path / 'one'}:train")


def test_broken_dataset_directory(tmp_path):
    sentiment(4).save_to_disk(tmp_path / "one")
    for shard in (tmp_path / "one").glob("*.arrow"):
        shard.unlink()
    assert "Could not load the datasets directory" in user_error(load_table, tmp_path / "one")


def test_plain_directory_through_the_cli(cli, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.csv").write_text("text,label\n")
    assert_user_error(cli(*train(tmp_path / "folder")), "folder", "is a directory", "save_to_disk", "train.csv")


def test_unknown_split_through_the_cli(cli, sentiment_dict):
    assert_user_error(cli(*train(f"{sentiment_dict}:dev", "--text-column", "sentence")), "has no split 'dev'",
                      "train, validation, test")


def test_train_on_a_dataset_dict_through_the_cli(cli, sentiment_dict, tmp_path):
    code, out, err = cli(*train(sentiment_dict, "--text-column", "sentence"))
    assert code == 0, err[-3000:]
    assert "training on split 'train', evaluating on" in err and ":validation" in err
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert (metrics["train_examples"], metrics["eval_examples"]) == (12, 4)
    model_config = json.loads((tmp_path / "runs" / "run" / "model" / "config.json").read_text())
    assert list(model_config["id2label"].values()) == ["negative", "positive"]


def test_ner_tags_from_a_dataset_directory(tmp_path):
    tags = ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"])
    features = Features({"tokens": List(Value("string")), "ner_tags": List(tags)})
    rows = {"tokens": [["Tom", "Hanks", "visits", "Paris"], ["Hello"]] * 3, "ner_tags": [[1, 2, 0, 3], [0]] * 3}
    DatasetDict(train=Dataset.from_dict(rows, features=features),
                validation=Dataset.from_dict(rows, features=features)).save_to_disk(tmp_path / "ner")
    cfg = build_config({"task": "tokens", "data": {"train": str(tmp_path / "ner")}, "ner": {"tags_column": "ner_tags"}})
    data = load_run_data(cfg)
    assert data.train["tags"].tolist()[:2] == [["B-PER", "I-PER", "O", "B-LOC"], ["O"]]
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_scored_pairs_and_text2text_from_dataset_directories(tmp_path):
    pairs = {"text_a": [f"a {i}" for i in range(10)], "text_b": [f"b {i}" for i in range(10)],
             "score": [i / 2 for i in range(10)]}
    Dataset.from_dict(pairs).save_to_disk(tmp_path / "sts")
    data = load_run_data(build_config({"task": "pairs", "data": {"train": str(tmp_path / "sts")}}))
    assert sorted([*data.train["label"], *data.eval["label"]]) == pairs["score"]
    Dataset.from_dict({"source": ["x y", "y z", "z x"], "target": ["X Y", "Y Z", "Z X"]}).save_to_disk(tmp_path / "t2t")
    data = load_run_data(build_config({"task": "text2text", "data": {"train": str(tmp_path / "t2t"),
                                                                     "eval": str(tmp_path / "t2t")}}))
    assert data.eval["target"].tolist() == ["X Y", "Y Z", "Z X"]


# --- predicting on empty text ----------------------------------------------------------------------------

def test_predict_refuses_an_empty_text_argument(cli, tiny_run):
    assert_user_error(cli("predict", tiny_run, "A fine film.", "   "), "text argument 2 is empty")


def test_predict_refuses_empty_cells_of_an_input_file(cli, tiny_run, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,A fine film.\n2,\n3,Dull.\n4, \n")
    assert_user_error(cli("predict", tiny_run, "--input", path), "in.csv: column 'text', data rows 2, 4 are empty")
