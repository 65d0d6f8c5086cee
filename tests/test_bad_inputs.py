"""Bad input gets a clear error naming the file, and nothing passes silently: empty data files, files whose
every row is invalid, slices that leave nothing, skipped rows (one warning with the count), empty training
data in the DataModules, and hub ids while the hub cannot be reached or offline mode is set (fast, one
message, no retries).

No test reaches past the loopback interface: an unreachable hub is a closed port on 127.0.0.1, and every
socket connection made during a hub test is checked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

import sapo.data.hub as hub
from sapo.data.datamodule import SFTDataModule
from sapo.data.prm import PRMCollator, PRMDataModule
from sapo.data.tasks import ArithmeticTask, GSM8KTask, HumanEvalTask, MBPPTask, Task
from sapo.data.tasks.loading import EmptyDataError, HubUnavailableError, load_rows
from sapo.models import BackboneSpec, ModelLoadError, load_tokenizer

#: a closed port on the loopback interface: connections are refused at once
CLOSED_HUB = "http://127.0.0.1:9"

GSM8K_ROW = {
    "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
    "answer": "Tom has 3+4 = <<3+4=7>>7 apples.\n#### 7",
}


def mbpp_row(task_id: int, **changes) -> dict:
    """An MBPP row as in ``shared/data/mbpp/mbpp.jsonl``."""
    row = {
        "text": "Write a function that returns one.",
        "code": "def one():\n    return 1",
        "task_id": task_id,
        "test_setup_code": "",
        "test_list": ["assert one() == 1"],
        "challenge_test_list": [],
    }
    row.update(changes)
    return row


def write_lines(path: Path, lines: list[str | dict]) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


# --- empty files, invalid rows, empty slices ----------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_gsm8k_file_is_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(EmptyDataError) as caught:
        GSM8KTask(source=str(path)).load()
    assert str(caught.value) == f"{path}: holds no rows (it is empty, or has only blank lines)"


def test_empty_mbpp_and_humaneval_files_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("")
    with pytest.raises(EmptyDataError, match="holds no rows") as caught:
        MBPPTask(source=str(path), split="train").load()
    assert str(path) in str(caught.value)
    with pytest.raises(EmptyDataError, match="holds no rows") as caught:
        HumanEvalTask(source=str(path)).load()
    assert str(path) in str(caught.value)


def test_every_row_invalid_and_skipped_is_refused_with_the_count(tmp_path):
    source = write_lines(
        tmp_path / "bad.jsonl",
        [{"question": "What is 2 + 2?"}, "not json", {"question": "Name a colour.", "answer": "#### red"}],
    )
    task = GSM8KTask(source=source, skip_invalid=True)
    with pytest.raises(EmptyDataError) as caught:
        task.load()
    message = str(caught.value)
    assert message.startswith(f"{source}: no question to use: all 3 rows are invalid and were skipped")
    assert "the first: line 1: field 'answer' is missing" in message
    assert "line 2: is not valid JSON" in message and "line 3: field 'answer'" in message
    assert len(task.skipped) == 3


def test_every_mbpp_row_invalid_is_refused_with_the_count(tmp_path):
    source = write_lines(tmp_path / "mbpp.jsonl", [mbpp_row(601, test_list=[]), mbpp_row(602, text="")])
    with pytest.raises(EmptyDataError) as caught:
        MBPPTask(source=source, split="train", skip_invalid=True).load()
    message = str(caught.value)
    assert message.startswith(f"{source}: no question to use: all 2 rows are invalid and were skipped")
    assert "line 1: field 'test_list' is empty" in message and "line 2: field 'text' is empty" in message


def test_some_invalid_rows_give_one_warning_with_the_count_and_keep_the_good_rows(tmp_path, caplog):
    source = write_lines(tmp_path / "some.jsonl", [GSM8K_ROW, {"question": "q"}, "not json", GSM8K_ROW])
    task = GSM8KTask(source=source, skip_invalid=True)
    with caplog.at_level(logging.WARNING, logger="sapo.data.tasks.loading"):
        questions = task.load()
    assert [q.id for q in questions] == ["gsm8k/some/0", "gsm8k/some/3"]
    assert len(task.skipped) == 2
    (record,) = [r for r in caplog.records if r.name == "sapo.data.tasks.loading"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"{source}: skipped 2 invalid rows (skip_invalid=True), kept 2 questions; the first: "
        "line 2: field 'answer' is missing (the row has ['question']); "
        "line 3: is not valid JSON (Expecting value at column 1)"
    )


def test_some_invalid_mbpp_rows_give_one_warning(tmp_path, caplog):
    source = write_lines(tmp_path / "mbpp.jsonl", [mbpp_row(601), mbpp_row(602, test_list=[]), mbpp_row(603)])
    task = MBPPTask(source=source, split="train", skip_invalid=True)
    with caplog.at_level(logging.WARNING, logger="sapo.data.tasks.loading"):
        assert [q.id for q in task.load()] == ["mbpp/601", "mbpp/603"]
    assert len(task.skipped) == 1
    assert f"{source}: skipped 1 invalid row (skip_invalid=True), kept 2 questions" in caplog.text
    assert "line 2: field 'test_list' is empty" in caplog.text


def test_a_slice_that_leaves_nothing_says_so(tmp_path):
    source = write_lines(tmp_path / "two.jsonl", [GSM8K_ROW, GSM8K_ROW])
    with pytest.raises(EmptyDataError) as caught:
        GSM8KTask(source=source, start=10).load()
    assert str(caught.value) == f"{source}: start=10 selects no row of its 2 rows"
    with pytest.raises(EmptyDataError, match=r"start=1, stop=1 selects no row of its 2 rows"):
        GSM8KTask(source=source, start=1, stop=1).load()
    bad = write_lines(tmp_path / "bad.jsonl", [GSM8K_ROW, {"question": "q"}])
    with pytest.raises(EmptyDataError, match="the only row selected by start=1 is invalid and was skipped"):
        GSM8KTask(source=bad, start=1, skip_invalid=True).load()
    assert load_rows(source, start=10) == []  # the reader alone may give nothing; tasks may not
    with pytest.raises(EmptyDataError, match="start=10 selects no row"):
        load_rows(source, start=10, allow_empty=False)


def test_mbpp_split_or_slice_that_leaves_nothing_says_so(tmp_path):
    source = write_lines(tmp_path / "mbpp.jsonl", [mbpp_row(5), mbpp_row(700)])
    with pytest.raises(EmptyDataError) as caught:
        MBPPTask(source=source, split="validation").load()
    assert str(caught.value) == (
        f"{source}: no row lies in MBPP split 'validation' (task ids 511-600); it has 2 rows"
    )
    with pytest.raises(EmptyDataError) as caught:
        MBPPTask(source=source, split="train", start=1).load()
    assert str(caught.value) == f"{source}: start=1 selects no question of the 1 in MBPP split 'train'"


def test_a_missing_path_says_no_such_file_or_folder(tmp_path, no_connections):
    with pytest.raises(FileNotFoundError, match=r"^\./no-such-data: no such file or folder$"):
        GSM8KTask(source="./no-such-data").load()
    with pytest.raises(FileNotFoundError, match="^missing.jsonl: no such file or folder$"):
        GSM8KTask(source="missing.jsonl").load()
    with pytest.raises(ModelLoadError) as caught:
        BackboneSpec(name_or_path="./no-such-model").load()
    assert f"./no-such-model: no such file or folder ({Path.cwd() / 'no-such-model'})" in str(caught.value)
    assert "hub:" not in str(caught.value)
    with pytest.raises(ModelLoadError, match="model.safetensors: no such file or folder"):
        BackboneSpec(name_or_path="model.safetensors").load()
    assert no_connections == []


def test_arithmetic_task_refuses_zero_questions():
    with pytest.raises(ValueError, match="num_questions must be >= 1, got 0"):
        ArithmeticTask(num_questions=0)


# --- the DataModules --------------------------------------------------------------------------------------


class NoQuestions(Task):
    """A task whose source holds nothing (a custom loader that does not check)."""

    name = "none"

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def load(self):
        return []

    def extract_answer(self, completion):
        return None

    def is_correct(self, answer, question):
        return False


def attach(datamodule, tokenizer):
    """What ``setup`` reads from the trainer: the LightningModule's tokenizer."""
    datamodule.trainer = SimpleNamespace(lightning_module=SimpleNamespace(tokenizer=tokenizer))
    return datamodule


def test_sft_datamodule_refuses_to_fit_on_no_question(smollm2_tokenizer, tmp_path):
    data = attach(SFTDataModule(NoQuestions("data/empty.jsonl")), smollm2_tokenizer)
    with pytest.raises(ValueError) as caught:
        data.setup("fit")
    assert str(caught.value) == (
        "SFTDataModule: task NoQuestions(source='data/empty.jsonl') gave no question to train on"
    )
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    data = attach(SFTDataModule(GSM8KTask(source=str(empty))), smollm2_tokenizer)
    with pytest.raises(EmptyDataError, match=f"{empty}: holds no rows"):
        data.setup("fit")
    source = write_lines(tmp_path / "one.jsonl", [GSM8K_ROW])
    data = attach(
        SFTDataModule(GSM8KTask(source=source), val_task=NoQuestions("val.jsonl")), smollm2_tokenizer
    )
    with pytest.raises(ValueError, match=r"val_task NoQuestions\(source='val.jsonl'\) gave no question"):
        data.setup("fit")


def test_prm_datamodule_refuses_empty_files(smollm2_tokenizer, tmp_path):
    empty = tmp_path / "labelled.jsonl"
    empty.write_text("\n")
    module = PRMDataModule(str(empty))
    module.collator = PRMCollator(smollm2_tokenizer)
    with pytest.raises(ValueError) as caught:
        module.setup("fit")
    assert (
        str(caught.value) == f"train_file {empty}: holds no trajectory (it is empty, or has only blank lines)"
    )
    module = PRMDataModule(val_file=str(empty))
    module.collator = PRMCollator(smollm2_tokenizer)
    with pytest.raises(ValueError, match=f"val_file {empty}: holds no trajectory"):
        module.setup("validate")


# --- hub ids while the hub cannot be used -------------------------------------------------------------------


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def connections(monkeypatch):
    """Every address a socket connects to during the test; a connection or a name lookup for anything but
    the loopback is refused (and recorded, so the test fails)."""
    seen: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        seen.append(address)
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in LOOPBACK:
            raise OSError(f"test guard: no connection to {address!r}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            seen.append(("lookup", host))
            raise socket.gaierror(f"test guard: no name lookup for {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


@pytest.fixture
def no_connections(monkeypatch):
    """Refuse any socket connection or name lookup; the list of attempts stays empty when none was made."""
    seen: list = []

    def connect(sock, address):
        seen.append(address)
        raise OSError(f"test guard: no connection to {address!r}")

    def getaddrinfo(host, *args, **kwargs):
        seen.append(("lookup", host))
        raise socket.gaierror(f"test guard: no name lookup for {host!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return seen


@pytest.fixture
def hf_caches(monkeypatch, tmp_path):
    """Empty Hugging Face caches (hub files and datasets), and no remembered reachability check."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(hub, "_checked", {})
    return tmp_path / "hf-hub"


@pytest.fixture
def unreachable_hub(monkeypatch, hf_caches, connections):
    """``HF_ENDPOINT=http://127.0.0.1:9`` without offline mode (the libraries read both when imported, so
    their constants are set too)."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_HUB)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_HUB)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", CLOSED_HUB + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", CLOSED_HUB)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return connections


@pytest.fixture
def offline_hub(monkeypatch, hf_caches, no_connections):
    """``HF_HUB_OFFLINE=1``; any connection attempt fails the test."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return no_connections


def timed(call):
    """``(the exception call raised, seconds it took)``."""
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        call()
    return caught.value, time.monotonic() - started


def test_a_model_hub_id_fails_fast_when_the_hub_is_unreachable(unreachable_hub):
    error, seconds = timed(lambda: BackboneSpec(name_or_path="someone/model").load())
    assert seconds < 10
    assert isinstance(error, ModelLoadError)
    message = str(error)
    assert (
        "hub: 'someone/model' was taken for a hub model id, but the Hugging Face hub at http://127.0.0.1:9 "
        "cannot be reached (ConnectError: " in message
    )
    assert message.endswith(
        "and the model is not in the local Hugging Face cache; pass a local path as name_or_path instead "
        "(a checkpoint folder or a .gguf file)"
    )
    assert error.__suppress_context__ and error.__cause__ is None  # one traceback, not three
    assert unreachable_hub == [("127.0.0.1", 9)]  # one check, no retries


def test_a_dataset_hub_id_fails_fast_when_the_hub_is_unreachable(unreachable_hub):
    error, seconds = timed(lambda: GSM8KTask(source="someone/data").load())
    assert seconds < 10
    assert isinstance(error, HubUnavailableError)
    assert str(error) == (
        "'someone/data' was taken for a hub dataset id, but the Hugging Face hub at http://127.0.0.1:9 cannot "
        "be reached (ConnectError: [Errno 111] Connection refused); pass a local path as source instead "
        "(a data file such as train.jsonl, .json or .parquet, or a folder holding one), or set "
        "HF_HUB_OFFLINE=1 to read a copy already in the local Hugging Face cache"
    )
    assert unreachable_hub == [("127.0.0.1", 9)]
    error, seconds = timed(lambda: load_rows("someone/data", "train"))
    assert seconds < 10 and isinstance(error, HubUnavailableError)
    assert "'someone/data' was taken for a hub dataset id" in str(
        error
    ) and "pass a local path instead" in str(error)


def test_offline_mode_never_tries_the_hub(offline_hub):
    error, seconds = timed(lambda: BackboneSpec(name_or_path="someone/model").load())
    assert seconds < 10 and isinstance(error, ModelLoadError)
    assert (
        "hub: 'someone/model' was taken for a hub model id, but offline mode is set (HF_HUB_OFFLINE=1), so the "
        "hub is not tried, and the model is not in the local Hugging Face cache; pass a local path as "
        "name_or_path instead (a checkpoint folder or a .gguf file)"
    ) in str(error)
    error, seconds = timed(lambda: GSM8KTask(source="someone/data").load())
    assert seconds < 10 and isinstance(error, HubUnavailableError)
    assert str(error) == (
        "'someone/data' was taken for a hub dataset id, but offline mode is set (HF_HUB_OFFLINE=1), so the hub "
        "is not tried, and the dataset is not in the local Hugging Face cache; pass a local path as source "
        "instead (a data file such as train.jsonl, .json or .parquet, or a folder holding one)"
    )
    error, _ = timed(lambda: load_tokenizer("someone/model"))
    assert isinstance(error, ModelLoadError)
    assert str(error).startswith(
        "could not load the tokenizer of 'someone/model': hub: 'someone/model' was taken"
    )
    assert offline_hub == []


def test_a_model_in_the_hub_cache_still_loads_without_the_hub(
    tiny_model_and_tokenizer, unreachable_hub, hf_caches
):
    model, tokenizer = tiny_model_and_tokenizer
    snapshot = hf_caches / "models--someone--tiny" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (hf_caches / "models--someone--tiny" / "refs").mkdir()
    (hf_caches / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)

    started = time.monotonic()
    loaded = BackboneSpec(name_or_path="someone/tiny", dtype="float32").load_with_info()
    assert time.monotonic() - started < 10
    assert (loaded.info.source, loaded.info.checkpoint) == ("hub", "someone/tiny")
    assert unreachable_hub == [("127.0.0.1", 9)]  # the check only: the copy is read in offline mode
    assert not huggingface_hub.constants.HF_HUB_OFFLINE  # and offline mode is off again


def test_hf_endpoint_from_the_environment_fails_fast(tmp_path):
    """The whole path as a user meets it: ``HF_ENDPOINT`` read by the libraries at import (a fresh process)."""
    script = (
        "import json, time\n"
        "from sapo.models import BackboneSpec\n"
        "from sapo.data.tasks import GSM8KTask\n"
        "out = {}\n"
        "for name, call in [('model', lambda: BackboneSpec(name_or_path='someone/model').load()),\n"
        "                   ('data', lambda: GSM8KTask(source='someone/data').load())]:\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as error:\n"
        "        out[name] = [type(error).__name__, str(error), time.monotonic() - started]\n"
        "print(json.dumps(out))\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HF_ENDPOINT=CLOSED_HUB, HF_HOME=str(tmp_path / "hf-home"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    kind, message, seconds = out["model"]
    assert kind == "ModelLoadError" and seconds < 10
    assert "'someone/model' was taken for a hub model id" in message and "http://127.0.0.1:9" in message
    assert "pass a local path as name_or_path instead" in message
    kind, message, seconds = out["data"]
    assert kind == "HubUnavailableError" and seconds < 10
    assert "'someone/data' was taken for a hub dataset id" in message and "http://127.0.0.1:9" in message
    assert "pass a local path as source instead" in message
    assert "Retrying" not in done.stderr
