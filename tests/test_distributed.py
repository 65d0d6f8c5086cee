"""The loop on two CPU processes (gloo): the chunks shared by rank, the run directory's one writer per file,
the same artifacts as one process, a rank killed and the run resumed; bad launches refused before any work."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import fit_in_this_process, loop_env, without_times

from sapo.evolution.distributed import Ranks

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SAPO = str(Path(sys.executable).parent / "sapo")
#: the files every phase writes once, which the number of processes must not change
ARTIFACTS = (
    "samples_0",
    "labels_0",
    "dropped_0",
    "heldout_0",
    "samples_1",
    "labels_1",
    "pairs_1",
    "heldout_1",
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]


def _command(run_dir: Path, cache: str, devices: int, *extra: str) -> list[str]:
    return [
        SAPO,
        "fit",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        "--trainer.devices",
        str(devices),
        "--trainer.strategy",
        "ddp" if devices > 1 else "auto",
        "--model.init_args.iterations",
        "1",
        "--model.init_args.run_dir",
        str(run_dir),
        "--model.init_args.reasoner.cache_dir",
        cache,
        *extra,
    ]


def _events(run_dir: Path) -> list[dict]:
    """Every rank's events (whole lines only: the runs append while the tests poll)."""
    events = []
    for path in sorted(run_dir.glob("events*.jsonl")):
        text = path.read_text()
        events += [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
    return events


def _records(path: Path) -> list[dict]:
    return [without_times(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, env=loop_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def without_training(tmp_path_factory, sapo_cache_dir):
    """The smoke loop (one iteration) with the optimizer steps taken out (``limit_train_batches 0``: every
    training phase sets its module up and saves it, untrained), on one process and on two."""
    cwd = tmp_path_factory.mktemp("distributed")
    runs = {}
    for devices in (1, 2):
        runs[devices] = cwd / f"run_{devices}"
        command = _command(runs[devices], sapo_cache_dir, devices, "--trainer.limit_train_batches", "0")
        if devices == 1:
            fit_in_this_process(command, cwd)
        else:  # Lightning's launcher starts the second process as a copy of the first's command
            _run(command, cwd)
    return runs


def test_two_processes_make_the_artifacts_of_one(without_training):
    one, two = without_training[1], without_training[2]
    for name in ARTIFACTS:
        assert _records(one / f"{name}.jsonl") == _records(two / f"{name}.jsonl"), name
    phases_one = json.loads((one / "manifest.json").read_text().replace(str(one), "<run>"))["phases"]
    phases_two = json.loads((two / "manifest.json").read_text().replace(str(two), "<run>"))["phases"]
    assert without_times(phases_one) == without_times(phases_two)
    # every phase keeps both ranks' memory peaks; one process keeps none
    assert all(len(entry["memory_per_rank"]) == 2 for entry in phases_two.values())
    assert not any("memory_per_rank" in entry for entry in phases_one.values())


def test_each_rank_makes_its_own_chunks_and_writes_its_own_event_log(without_training):
    run_dir = without_training[2]
    assert sorted(p.name for p in run_dir.glob("events*.jsonl")) == ["events.jsonl", "events.rank1.jsonl"]
    rank0 = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    rank1 = [json.loads(line) for line in (run_dir / "events.rank1.jsonl").read_text().splitlines()]
    assert all(e["rank"] == 1 and "pid" in e for e in rank1) and not any("rank" in e for e in rank0)
    chunk_phases = ("samples_0", "labels_0", "samples_1", "labels_1")
    for phase in chunk_phases:
        chunks = len(list((run_dir / f"{phase}.parts").glob("chunk_*.jsonl")))
        assert chunks >= 2, phase
        made = {
            rank: [
                e["chunk"] for e in events if e["phase"] == phase and e["event"] == "finish" and "chunk" in e
            ]
            for rank, events in ((0, rank0), (1, rank1))
        }
        assert sorted(made[0] + made[1]) == list(range(chunks))  # each chunk once, by one rank
        assert all(i % 2 == 0 for i in made[0]) and all(i % 2 == 1 for i in made[1])
    # both ranks pass through every phase, in the same order (the barriers between phases)
    phase_ends = [
        [e["phase"] for e in events if e["event"] == "finish" and "chunk" not in e]
        for events in (rank0, rank1)
    ]
    assert phase_ends[0] == phase_ends[1] and "eval_1" in phase_ends[0]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, sapo_cache_dir):
    """The smoke loop, trained, on two processes: rank 1 is killed (SIGKILL) once it has finished a chunk of
    the second labelling phase; then the same command is run again to the end."""
    cwd = tmp_path_factory.mktemp("distributed_kill")
    run_dir = cwd / "run"
    command = _command(run_dir, sapo_cache_dir, 2, "--data.init_args.chunk_size", "1")
    log = (cwd / "output.log").open("w")
    process = subprocess.Popen(
        command, cwd=cwd, env=loop_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    killed_at = None
    deadline = time.monotonic() + 400
    try:
        while process.poll() is None and time.monotonic() < deadline:
            done = [
                e
                for e in _events(run_dir)
                if e.get("rank") == 1 and e["phase"] == "labels_1" and e["event"] == "finish" and "chunk" in e
            ]
            if done and killed_at is None:
                os.kill(done[0]["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
            time.sleep(0.005)
        # the launch ends by itself: the other rank does not wait for a dead one
        assert process.poll() is not None, "the launch did not end after one rank was killed"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    ended = process.returncode
    finished_at_kill = list(json.loads((run_dir / "manifest.json").read_text())["phases"])
    events_at_kill = _events(run_dir)
    _run(command, cwd)
    return run_dir, killed_at, ended, finished_at_kill, events_at_kill


def test_a_killed_rank_ends_the_launch_and_the_rerun_redoes_nothing_finished(killed_and_resumed):
    run_dir, killed_at, ended, finished_at_kill, events_at_kill = killed_and_resumed
    assert killed_at is not None and ended != 0
    assert "labels_1" not in finished_at_kill and "samples_1" in finished_at_kill
    events = _events(run_dir)
    finished_chunks = Counter(
        (e["phase"], e["chunk"]) for e in events if e["event"] == "finish" and "chunk" in e
    )
    assert max(finished_chunks.values()) == 1  # no chunk was made twice, by either rank
    phase_finishes = Counter(
        (e["phase"], e.get("rank", 0)) for e in events if e["event"] == "finish" and "chunk" not in e
    )
    assert max(phase_finishes.values()) == 1 and len(phase_finishes) == 2 * 11  # 11 phases, once per rank
    before = {(e["phase"], e["chunk"]) for e in events_at_kill if e["event"] == "finish" and "chunk" in e}
    assert any(phase == "labels_1" for phase, _ in before)  # the rerun kept the chunks made before the kill
    assert (run_dir / "report.md").is_file()


def test_the_training_phases_are_data_parallel_over_both_processes(killed_and_resumed):
    run_dir = killed_and_resumed[0]
    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    rows = phases["sft"]["pairs"]
    with (run_dir / "logs" / "phases" / "sft" / "metrics.csv").open() as fh:
        steps = {int(row["step"]) for row in csv.DictReader(fh) if row.get("step")}
    # each process reads half of the rows (Lightning's distributed sampler), 8 per batch
    assert max(steps) + 1 == math.ceil(math.ceil(rows / 2) / 8)


def test_processes_that_disagree_on_the_recipe_fail_before_any_work(tmp_path, sapo_cache_dir):
    """torchrun starts the processes (Lightning's launcher starts none); one rank is given another seed."""
    wrapper = tmp_path / "disagree.py"
    wrapper.write_text(
        "import os, sys\nfrom sapo.cli import main\n"
        "sys.exit(main(sys.argv[1:] + ['--model.init_args.seed', os.environ['RANK']]))\n"
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(wrapper),
        *_command(tmp_path / "run", sapo_cache_dir, 2)[1:],
    ]
    result = subprocess.run(
        command, cwd=tmp_path, env=loop_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "rank 1 differs from rank 0 at model.init_args.seed" in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()


def test_chunks_go_round_robin_over_the_ranks():
    assert [i for i in range(7) if Ranks(rank=1, world_size=3).mine(i)] == [1, 4]
    assert all(Ranks().mine(i) for i in range(5)) and Ranks().writer and not Ranks().distributed
    assert Ranks(rank=1, world_size=2).tag() == " rank 1" and Ranks().tag() == ""
