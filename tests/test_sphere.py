"""SPHERE's recipe (`sapo.evolution.SphereEvolution`): the smoke recipe end to end, killed and resumed, and
settings refused before any work."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import fit_in_this_process, without_times
from test_loop import _chunk_finished, _phase_started, _run_until

from sapo.cli import SapoCLI
from sapo.data.trajectory import Trajectory, TrajectoryFormatError, read_jsonl
from sapo.eval.reasoner import paired_difference
from sapo.evolution import RunDirectory, SphereEvolution
from sapo.evolution.branch import phase_paths, phase_settings
from sapo.evolution.run_directory import ChunkedJsonl
from sapo.models.backbone import BackboneSpec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SAPO = str(Path(sys.executable).parent / "sapo")

pytestmark = pytest.mark.slow

#: what SPHERE's iteration writes, beside what every run writes
SPHERE_FILES = ("search_1.jsonl", "corrections_1.jsonl", "pairs_1.jsonl", "heldout_1.jsonl")


def _command(recipe: str, run_dir: Path, cache: str, *extra: str) -> list[str]:
    return [
        SAPO,
        "fit",
        "--config",
        str(CONFIGS / recipe),
        "--data.init_args.chunk_size",
        "2",
        *extra,
        "--model.init_args.run_dir",
        str(run_dir),
        "--model.init_args.reasoner.cache_dir",
        cache,
    ]


@pytest.fixture(scope="module")
def sapo_run(tmp_path_factory, sapo_cache_dir):
    """SAPO's smoke loop, one iteration: the run every SPHERE run here begins from (its first five phases)."""
    cwd = tmp_path_factory.mktemp("sapo_smoke")
    run_dir = cwd / "runs" / "sapo"
    fit_in_this_process(
        _command("smoke.yaml", run_dir, sapo_cache_dir, "--model.init_args.iterations", "1"), cwd
    )
    return run_dir


def _sphere(run_dir: Path, cache: str, source: Path) -> list[str]:
    branch = ["--model.init_args.branch_from", str(source), "--model.init_args.branch_after", "eval_0"]
    return _command("sphere_smoke.yaml", run_dir, cache, *branch)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, sapo_cache_dir, sapo_run):
    cwd = tmp_path_factory.mktemp("sphere_whole")
    run_dir = cwd / "runs" / "sphere"
    fit_in_this_process(_sphere(run_dir, sapo_cache_dir, sapo_run), cwd)  # not killed: in this process
    return run_dir


def _records(path: Path) -> list[dict]:
    return [without_times(json.loads(line)) for line in path.read_text().splitlines()]


def test_the_smoke_recipe_searches_corrects_and_trains_with_dpo(whole_run):
    phases = json.loads((whole_run / "manifest.json").read_text())["phases"]
    assert list(phases)[-5:] == ["search_1", "corrections_1", "pairs_1", "orpo_1", "eval_1"]
    for phase, group in (("search_1", "search"), ("corrections_1", "correction")):  # a branch can copy them
        assert all((whole_run / path).exists() for path in phase_paths(phase)[:-1])
        assert f"model.init_args.{group}" in phase_settings(phase)
    leaves = read_jsonl(whole_run / "search_1.jsonl")
    searched = [leaf for leaf in leaves if leaf.label_source != "gold"]
    assert phases["search_1"]["leaves"] == len(leaves) and len({leaf.question_id for leaf in searched}) == 6
    for leaf in searched:  # every step has the verifier's score and its proposer; max_depth 3 holds
        assert len(leaf.meta["step_scores"]) == len(leaf.meta["proposers"]) == leaf.num_steps <= 3
        assert leaf.outcome is not None
    assert {name for leaf in searched for name in leaf.meta["proposers"]} == {"reasoner", "diversity"}
    # the wrong leaves rewritten: per_iteration of them, each from a step of its own
    corrections = _records(whole_run / "corrections_1.jsonl")
    assert len(corrections) == phases["corrections_1"]["rewritten"] == 6
    for c in corrections:
        assert c["original"]["outcome"] is False and 0 <= c["first_error"] < len(c["original"]["steps"])
        assert 1 <= c["attempts"] <= 2 and c["located_by"] == "verifier"
    pairs = _records(whole_run / "pairs_1.jsonl")
    assert phases["pairs_1"]["with_rejected"] == sum(p["rejected"] is not None for p in pairs) >= 1
    # DPO from M_0, whose reference is M_0: its first step's preference term is exactly -log sigmoid(0)
    with (whole_run / "logs" / "phases" / "orpo_1" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/dpo_loss")]
    assert rows and math.isclose(float(rows[0]["train/dpo_loss"]), math.log(2), rel_tol=1e-4)
    # the label cost of iteration 1 holds the search's and the corrections' completions
    search, correct = phases["search_1"]["search_cost"], phases["corrections_1"]["correction_cost"]
    total = phases["eval_1"]["label_cost"]["completions"]
    assert total == phases["labels_0"]["cost"]["completions"] + search["completions"] + correct["completions"]
    assert "| 1 |" in (whole_run / "report.md").read_text()


def test_the_report_sets_sphere_beside_the_sapo_run_it_began_from(whole_run, sapo_run):
    # the first five phases are the SAPO run's, copied: the same SFT start answered the same questions
    assert (whole_run / "heldout_0.jsonl").read_bytes() == (sapo_run / "heldout_0.jsonl").read_bytes()
    rows = json.loads((whole_run / "comparison" / "table.json").read_text())
    assert [r["name"] for r in rows] == ["SFT", "SAPO 1", "SPHERE 1"]

    def outcomes(run: Path, t: int) -> list[bool]:
        return [
            bool(a.outcome)
            for a in sorted(read_jsonl(run / f"heldout_{t}.jsonl"), key=lambda a: a.question_id)
        ]

    sft, sapo, sphere = outcomes(whole_run, 0), outcomes(sapo_run, 1), outcomes(whole_run, 1)
    assert rows[2]["vs_reference"] == pytest.approx(list(paired_difference(sft, sphere)))
    assert rows[2]["vs_method"] == pytest.approx(list(paired_difference(sapo, sphere)))
    assert rows[2]["label_cost"]["completions"] > rows[1]["label_cost"]["completions"] > 0
    report = (whole_run / "report.md").read_text()
    assert "## SPHERE beside SAPO" in report and "| SPHERE 1 |" in report


def test_a_killed_sphere_run_resumes_to_the_same_files(whole_run, sapo_run, tmp_path, sapo_cache_dir):
    run_dir = tmp_path / "runs" / "sphere"
    command = _sphere(run_dir, sapo_cache_dir, sapo_run)
    for until in (
        _chunk_finished("search_1"),
        _chunk_finished("corrections_1"),
        _phase_started("orpo_1", 0.3),
    ):
        assert _run_until(command, tmp_path, run_dir, until) == "killed"
    assert _run_until(command, tmp_path, run_dir, lambda events: False) == "finished"
    for name in SPHERE_FILES:
        assert _records(run_dir / name) == _records(whole_run / name), name
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    chunks = [(e["phase"], e["chunk"]) for e in events if e["event"] == "finish" and "chunk" in e]
    assert len(chunks) == len(set(chunks))  # no finished chunk was made twice


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.search.width", "0"], "model.init_args.search.width"),
        (["--model.init_args.search.max_depth", "0"], "model.init_args.search.max_depth"),
        (["--model.init_args.search.method", "greedy"], "model.init_args.search.method"),
        (["--model.init_args.diversity.model", "no-such-model-anywhere"], "model.init_args.diversity.model"),
        (["--model.init_args.correction.threshold", "1.5"], "model.init_args.correction.threshold"),
        (["--model.init_args.orpo.loss", "ipo"], "model.init_args.orpo.loss"),
        (["--model.init_args.pairs.source", "rft"], "model.init_args.pairs.source"),
    ],
)
def test_bad_sphere_settings_fail_before_any_work(override, message, tmp_path, capsys, sapo_cache_dir):
    _expect_refusal(override, message, tmp_path, capsys, sapo_cache_dir)


def test_a_second_model_with_another_tokenizer_is_refused(tmp_path, capsys, sapo_cache_dir):
    model, tokenizer = BackboneSpec("tiny-random-1x64", dtype="float32", cache_dir=sapo_cache_dir).load()
    tokenizer.add_tokens(["<step>"])
    model.resize_token_embeddings(len(tokenizer))
    folder = tmp_path / "other"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _expect_refusal(
        ["--model.init_args.diversity.model", str(folder)],
        "another tokenizer",
        tmp_path,
        capsys,
        sapo_cache_dir,
    )


def _expect_refusal(override: list[str], message: str, tmp_path: Path, capsys, cache: str) -> None:
    run = tmp_path / "run"
    args = ["fit", "--config", str(CONFIGS / "sphere_smoke.yaml"), "--model.init_args.run_dir", str(run)]
    args += ["--model.init_args.reasoner.cache_dir", cache, *override]
    try:
        with pytest.raises(SystemExit) as exit_info:
            SapoCLI(args=args)
        code, err = exit_info.value.code, capsys.readouterr().err
    except ValueError as error:  # a constructor's own check, raised while instantiating
        code, err = 1, str(error)
    assert code != 0
    assert message in err
    assert not run.exists()  # nothing was started


def test_a_damaged_correction_chunk_is_named(tmp_path):
    run = RunDirectory(tmp_path, {"model": {}, "data": {}})
    store = ChunkedJsonl(run, "corrections_1", "corrections_1")
    original = Trajectory("q", "question", ["1 + 1 = 3", "The answer is 3."], outcome=False)
    store.write(0, [{"original": original.to_dict(), "located_by": "verifier", "attempts": 1}])
    with pytest.raises(
        TrajectoryFormatError, match=r"chunk_00000.jsonl, line 1: not a correction.*first_error"
    ):
        SphereEvolution._read_corrections(store, 1)
