"""Reading task data: files, hub-layout folders, hub ids; locations in errors; skipping bad rows."""

from __future__ import annotations

import gzip
import json
import pickle

import pytest

from sapo.data.tasks.loading import (
    InvalidRowError,
    InvalidRows,
    Row,
    find_split_files,
    load_hub_rows,
    load_rows,
    require_field,
)

RECORDS = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(6)]


def write_jsonl(path, records, blank_lines=False):
    lines = []
    for record in records:
        lines.append(json.dumps(record))
        if blank_lines:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def hub_layout(root, splits):
    """A folder laid out like openai/gsm8k on the hub: README configs and main/{split}-00000-of-00001.parquet."""
    for split, records in splits.items():
        write_parquet(root / "main" / f"{split}-00000-of-00001.parquet", records)
    data_files = "".join(f"  - split: {split}\n    path: main/{split}-*\n" for split in splits)
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: main\n  data_files:\n{data_files}---\n")
    return root


# --- files ----------------------------------------------------------------------------------------------------


def test_jsonl_rows_name_their_line_and_index(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", RECORDS, blank_lines=True)
    rows = load_rows(path)
    assert [row.data for row in rows] == RECORDS
    assert rows[2].where == f"{path}, line 5"  # blank lines count as lines, not as records
    assert [row.index for row in rows] == list(range(6))


def test_slices_follow_python_and_keep_positions(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    assert [r.data["question"] for r in load_rows(path, start=1, stop=3)] == ["q1", "q2"]
    tail = load_rows(path, start=-2)
    assert [r.index for r in tail] == [4, 5]
    assert tail[0].where.endswith("line 5")
    assert load_rows(path, start=10) == []


def test_gzip_json_array_and_json_lines_in_json_file(tmp_path):
    gz = tmp_path / "data.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in RECORDS))
    assert len(load_rows(gz)) == 6

    array = tmp_path / "array.json"
    array.write_text(json.dumps(RECORDS))
    rows = load_rows(array, stop=2)
    assert rows[1].where == f"{array}, row 1" and rows[1].data == RECORDS[1]

    lines = write_jsonl(tmp_path / "lines.json", RECORDS)
    assert [r.data for r in load_rows(lines)] == RECORDS


def test_parquet_rows(tmp_path):
    path = write_parquet(tmp_path / "data.parquet", RECORDS)
    rows = load_rows(path, start=3)
    assert [r.data for r in rows] == RECORDS[3:]
    assert rows[0].where == f"{path}, row 3"


def test_a_file_that_is_not_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\nthis is not json\n" + json.dumps(RECORDS[1]) + "\n")
    with pytest.raises(InvalidRowError) as caught:
        load_rows(path)
    assert (
        str(path) in str(caught.value)
        and "line 2" in str(caught.value)
        and "not valid JSON" in str(caught.value)
    )
    assert caught.value.where == f"{path}, line 2"


def test_a_binary_file_is_reported_not_crashed_on(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(InvalidRowError, match=r"binary\.jsonl, line 1"):
        load_rows(path)


def test_invalid_rows_are_skipped_counted_and_keep_later_positions(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(RECORDS[0]), "{broken", "[1, 2]", json.dumps(RECORDS[1])]) + "\n")
    skipped = InvalidRows(skip=True)
    rows = load_rows(path, invalid=skipped)
    assert [r.data for r in rows] == RECORDS[:2]
    assert [r.index for r in rows] == [0, 3]
    assert len(skipped) == 2
    assert (
        "line 2" in skipped.reasons[0]
        and "line 3" in skipped.reasons[1]
        and "not a JSON object" in skipped.reasons[1]
    )
    # bad records outside the slice are not looked at
    assert [r.index for r in load_rows(path, start=3)] == [3]


def test_missing_file_and_unsupported_suffix(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError):
        load_rows("./relative/nope.parquet")
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_rows(other)


# --- folders and the hub ------------------------------------------------------------------------------------------


def test_folder_with_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", RECORDS)
    write_jsonl(tmp_path / "test.jsonl", RECORDS[:2])
    assert len(load_rows(tmp_path, "test")) == 2
    assert len(load_rows(tmp_path, "train", start=4)) == 2
    with pytest.raises(ValueError, match="several data files"):
        load_rows(tmp_path)


def test_hub_layout_folder_found_by_file_and_config(tmp_path):
    root = hub_layout(tmp_path / "gsm8k", {"train": RECORDS, "test": RECORDS[:3]})
    write_parquet(root / "socratic" / "test-00000-of-00001.parquet", RECORDS[:1])
    assert find_split_files(root, "test", "main") == [root / "main" / "test-00000-of-00001.parquet"]
    with pytest.raises(ValueError, match="several folders"):
        find_split_files(root, "test")
    rows = load_rows(root, "test", name="main", start=1)
    assert [r.data for r in rows] == RECORDS[1:3]
    assert rows[0].where.endswith("main/test-00000-of-00001.parquet, row 1")


def test_shards_are_read_in_order_with_running_positions(tmp_path):
    write_parquet(tmp_path / "data" / "train-00000-of-00002.parquet", RECORDS[:4])
    write_parquet(tmp_path / "data" / "train-00001-of-00002.parquet", RECORDS[4:])
    rows = load_rows(tmp_path, "train")
    assert [r.data for r in rows] == RECORDS and [r.index for r in rows] == list(range(6))


def test_hub_code_path_reads_a_hub_layout_folder(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    root = hub_layout(tmp_path / "gsm8k", {"train": RECORDS, "test": RECORDS[:3]})
    rows = load_hub_rows(str(root), "train", name="main", start=2, stop=4)
    assert [r.data for r in rows] == RECORDS[2:4]
    assert rows[0].where == f"hub dataset {root} (main) split train, row 2" and rows[0].index == 2
    with pytest.raises(ValueError, match="a split is needed"):
        load_hub_rows(str(root), None)


def test_hub_ids_go_to_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows("openai/gsm8k", "test", name="main", stop=2)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert rows[1].where == "hub dataset openai/gsm8k (main) split test, row 1"


# --- fields --------------------------------------------------------------------------------------------------------


def test_require_field_names_row_and_field():
    row = Row({"question": "q", "answer": None, "n": True, "empty": " "}, "data.jsonl, line 7", 6)
    assert require_field(row, "question") == "q"
    for name, problem in [("missing", "is missing"), ("answer", "is null"), ("empty", "is empty")]:
        with pytest.raises(InvalidRowError) as caught:
            require_field(row, name)
        assert str(caught.value).startswith(f"data.jsonl, line 7: field '{name}' {problem}")
        assert caught.value.field == name
    with pytest.raises(InvalidRowError, match="must be int, got bool"):
        require_field(row, "n", int)


def test_invalid_rows_raise_unless_skipping_and_errors_pickle():
    error = InvalidRowError("f.jsonl, line 3", "is broken", "answer")
    with pytest.raises(InvalidRowError):
        InvalidRows(skip=False).handle(error)
    skipping = InvalidRows(skip=True)
    out = skipping.convert(
        [Row({"a": 1}, "x, line 1"), Row({}, "x, line 2")], lambda r: require_field(r, "a", int)
    )
    assert out == [1] and len(skipping) == 1 and "x, line 2: field 'a' is missing" in skipping.reasons[0]
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.field == "answer"
