"""Branches (a run begun with another run's phases) and the comparison of arms built on them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import benchmark_script, fit_in_this_process, loop_env

from sapo.eval.reasoner import paired_difference
from sapo.evolution.branch import begin_branch, phase_paths, phase_settings
from sapo.evolution.compare import Arm, compare_arms, heldout_outcomes, write_comparison
from sapo.evolution.run_directory import RunDirectory, RunMismatchError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SAPO = str(Path(sys.executable).with_name("sapo"))


def _settings(**init_args) -> dict:
    base = {"seed": 0, "sampling": {"temperature": 0.7}, "pairs": {"source": "verifier"}, "run_dir": "x"}
    return {
        "model": {"class_path": "sapo.evolution.SelfEvolution", "init_args": {**base, **init_args}},
        "data": {"init_args": {"task": {"init_args": {"num_questions": 10}}, "heldout_task": _heldout(3)}},
    }


def _heldout(count: int) -> dict:
    return {"class_path": "sapo.data.tasks.arithmetic.ArithmeticTask", "init_args": {"num_questions": count}}


def _source_run(path: Path) -> RunDirectory:
    """A finished run of three phases, its artifacts written by hand (no model is trained here)."""
    run = RunDirectory(path, _settings(run_dir=str(path)))
    (path / "sft" / "reasoner").mkdir(parents=True)
    (path / "sft" / "reasoner" / "model.safetensors").write_bytes(b"weights")
    run.finish("sft", reasoner=str(path / "sft" / "reasoner"), pairs=3)
    parts = path / "samples_0.parts"
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({"fingerprint": run.fingerprint}))
    (parts / "chunk_00000.jsonl").write_text('{"question_id": "q0"}\n')
    (path / "samples_0.jsonl").write_text('{"question_id": "q0"}\n')
    run.finish("samples_0", trajectories=1, vllm_engine={"checkpoint": str(path / "sft" / "reasoner")})
    (path / "heldout_0.jsonl").write_text('{"question_id": "q0", "outcome": true}\n')
    run.finish("eval_0", heldout_accuracy=1.0)
    return run


def test_a_branch_begins_with_the_copied_phases_pointing_at_its_own_files(tmp_path):
    source = _source_run(tmp_path / "source")
    branch = RunDirectory(
        tmp_path / "branch", _settings(run_dir=str(tmp_path / "branch"), pairs={"source": "rft"})
    )
    copied = begin_branch(branch, source.path, "samples_0", branch.manifest["settings"])

    assert copied == ["sft", "samples_0"] and branch.finished == ["sft", "samples_0"]
    assert not (branch.path / "heldout_0.jsonl").exists()  # after the branch point: not copied
    weights = branch.path / "sft" / "reasoner" / "model.safetensors"
    assert weights.read_bytes() == b"weights"
    assert branch.summary("sft")["reasoner"] == str(branch.path / "sft" / "reasoner")
    assert branch.summary("samples_0")["vllm_engine"]["checkpoint"] == str(branch.path / "sft" / "reasoner")
    record = json.loads((branch.path / "samples_0.parts" / "settings.json").read_text())
    assert record["fingerprint"] == branch.fingerprint != source.fingerprint
    # the source's own record is untouched (the copy's was replaced, not written through a link)
    assert json.loads((source.path / "samples_0.parts" / "settings.json").read_text())["fingerprint"] == (
        source.fingerprint
    )
    reopened = RunDirectory(branch.path, branch.manifest["settings"])  # as a rerun of the branch sees it
    assert reopened.finished == ["sft", "samples_0"]
    assert os.stat(weights).st_ino == os.stat(source.path / "sft" / "reasoner" / "model.safetensors").st_ino


def test_a_branch_refuses_a_phase_the_source_has_not_finished(tmp_path):
    source = _source_run(tmp_path / "source")
    branch = RunDirectory(tmp_path / "branch", _settings())
    with pytest.raises(RunMismatchError, match=r"branch_after.*'orpo_1'.*sft, samples_0, eval_0"):
        begin_branch(branch, source.path, "orpo_1", branch.manifest["settings"])
    with pytest.raises(RunMismatchError, match="no manifest.json"):
        begin_branch(branch, tmp_path / "nowhere", "sft", None)
    assert branch.finished == []


def test_a_branch_refuses_settings_that_a_copied_phase_depends_on(tmp_path):
    source = _source_run(tmp_path / "source")
    hotter = _settings(sampling={"temperature": 1.0})
    branch = RunDirectory(tmp_path / "branch", hotter)
    with pytest.raises(RunMismatchError, match=r"model\.init_args\.sampling\.temperature"):
        begin_branch(branch, source.path, "samples_0", hotter)
    assert begin_branch(branch, source.path, "sft", hotter) == ["sft"]  # sampling comes after the SFT phase
    with pytest.raises(RunMismatchError, match="already holds phases"):
        branch.copy_phases(source.path, ["sft"], ["sft"])


def test_a_branch_may_change_how_training_computes_but_not_what(tmp_path):
    """Gradient checkpointing of the verifier and ORPO's shared prefixes give the same values up to rounding:
    a branch (and a rerun) may change them after the phases they belong to; a learning rate it may not."""
    from sapo.evolution.branch import COMPUTE_ONLY, RERUN_ADJUSTABLE

    source = _source_run(tmp_path / "source")
    (source.path / "verifier_0").mkdir()
    (source.path / "verifier_0" / "model.safetensors").write_bytes(b"weights")
    source.finish("verifier_0", verifier=str(source.path / "verifier_0"))
    assert set(COMPUTE_ONLY) <= set(RERUN_ADJUSTABLE)
    recomputed = _settings(verifier={"gradient_checkpointing": False}, orpo={"shared_prefix": False})
    branch = RunDirectory(tmp_path / "branch", recomputed)
    assert begin_branch(branch, source.path, "verifier_0", recomputed)[-1] == "verifier_0"
    assert (branch.path / "verifier_0" / "model.safetensors").is_file()
    trained_otherwise = _settings(verifier={"learning_rate": 1.0})
    with pytest.raises(RunMismatchError, match=r"model\.init_args\.verifier\.learning_rate"):
        begin_branch(
            RunDirectory(tmp_path / "other", trained_otherwise), source.path, "verifier_0", trained_otherwise
        )


def test_a_branch_of_a_run_recorded_before_a_setting_existed_takes_the_setting_at_its_default(tmp_path):
    source = _source_run(tmp_path / "source")  # its record has no sampling.min_p, which samples_0 depends on
    defaults = {"model": {"init_args": {"sampling": {"temperature": 1.0, "min_p": 0.0}}}}

    def branch_settings(min_p: float) -> dict:
        config = _settings()
        config["model"]["init_args"]["sampling"]["min_p"] = min_p
        return config

    other = branch_settings(min_p=0.1)
    branch = RunDirectory(tmp_path / "branch", other)
    with pytest.raises(RunMismatchError, match=r"at: model\.init_args\.sampling\.min_p; branch"):
        begin_branch(branch, source.path, "samples_0", other, defaults=defaults)
    at_default = branch_settings(min_p=0.0)
    with pytest.raises(RunMismatchError, match=r"sampling\.min_p"):  # a null is the only default known
        begin_branch(branch, source.path, "samples_0", at_default)
    assert branch.finished == []
    assert begin_branch(branch, source.path, "samples_0", at_default, defaults=defaults) == [
        "sft",
        "samples_0",
    ]


def test_a_branch_may_ask_for_other_heldout_questions_unless_it_copies_an_evaluation(tmp_path):
    source = _source_run(tmp_path / "source")
    more = _settings()
    more["data"]["init_args"]["heldout_task"] = _heldout(1000)
    branch = RunDirectory(tmp_path / "branch", more)
    with pytest.raises(RunMismatchError, match=r"data\.init_args\.heldout_task\.init_args\.num_questions"):
        begin_branch(branch, source.path, "eval_0", more)  # the copied answers are of the other questions
    assert branch.finished == []
    assert begin_branch(branch, source.path, "samples_0", more) == ["sft", "samples_0"]
    # the training questions are another matter: every phase reads them
    other_task = _settings()
    other_task["data"]["init_args"]["task"]["init_args"]["num_questions"] = 11
    with pytest.raises(RunMismatchError, match=r"data\.init_args\.task\.init_args\.num_questions"):
        begin_branch(RunDirectory(tmp_path / "other", other_task), source.path, "sft", other_task)


def test_phase_paths_and_settings_name_each_phase_of_the_loop():
    assert phase_paths("samples_2") == ["samples_2.jsonl", "samples_2.parts", "logs/phases/samples_2"]
    assert phase_paths("orpo_1")[0] == "iteration_1"
    assert "model.init_args.labelling.initial_strategy" in phase_settings("labels_0")
    assert "model.init_args.labelling.strategy" in phase_settings("labels_1")
    assert "model.init_args.pairs" not in phase_settings("verifier_1")
    assert "data.init_args.heldout_task" in phase_settings("eval_1")
    assert "data.init_args.heldout_task" not in phase_settings("orpo_1")
    with pytest.raises(ValueError, match="not a phase"):
        phase_paths("warmup_1")


def _answers(path: Path, outcomes: list[bool]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    RunDirectory(path.parent, None)
    rows = [{"question_id": f"q{i}", "outcome": o} for i, o in enumerate(outcomes)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_arms_pairs_every_arm_with_the_reference_and_the_method(tmp_path):
    _answers(tmp_path / "a" / "heldout_0.jsonl", [True, False, False, False])
    _answers(tmp_path / "a" / "heldout_1.jsonl", [True, True, True, False])
    _answers(tmp_path / "b" / "heldout_1.jsonl", [False, True, False, False])
    sft, method, other = (
        Arm("SFT", tmp_path / "a", 0),
        Arm("SAPO 1", tmp_path / "a", 1),
        Arm("B", tmp_path / "b", 1),
    )
    rows = compare_arms([sft, method, other], reference=sft, method=method)
    assert [r.accuracy for r in rows] == [0.25, 0.75, 0.25]
    assert rows[0].vs_reference is None and rows[1].vs_method is None
    assert rows[2].vs_method == paired_difference([True, True, True, False], [False, True, False, False])
    assert rows[2].vs_method[0] == pytest.approx(-0.5)
    _answers(tmp_path / "c" / "heldout_1.jsonl", [True, True, True])
    with pytest.raises(ValueError, match="different held-out questions"):
        compare_arms([Arm("C", tmp_path / "c", 1)], reference=sft)


def test_compare_arms_sets_each_round_beside_the_methods_round_of_the_same_number(tmp_path):
    _answers(tmp_path / "a" / "heldout_0.jsonl", [False, False, False, False])
    _answers(tmp_path / "a" / "heldout_1.jsonl", [True, False, False, False])
    _answers(tmp_path / "a" / "heldout_2.jsonl", [True, True, True, False])
    _answers(tmp_path / "b" / "heldout_1.jsonl", [True, True, False, False])
    _answers(tmp_path / "b" / "heldout_2.jsonl", [True, True, False, False])
    _answers(tmp_path / "c" / "heldout_3.jsonl", [True, True, True, True])
    sft = Arm("SFT", tmp_path / "a", 0)
    rounds = {t: Arm(f"SAPO {t}", tmp_path / "a", t) for t in (1, 2)}
    b1, b2, c3 = Arm("B 1", tmp_path / "b", 1), Arm("B 2", tmp_path / "b", 2), Arm("C 3", tmp_path / "c", 3)
    rows = compare_arms([sft, rounds[1], b1, rounds[2], b2, c3], reference=sft, method=rounds)
    by_name = {r.name: r for r in rows}
    assert by_name["B 1"].vs_method[0] == pytest.approx(0.25)  # B's round 1 is one question above SAPO's
    assert by_name["B 2"].vs_method[0] == pytest.approx(-0.25)  # and its round 2 one below SAPO's round 2
    assert by_name["SAPO 1"].vs_method is None and by_name["SAPO 2"].vs_method is None
    assert by_name["C 3"].vs_method is None and by_name["C 3"].vs_reference[0] == pytest.approx(1.0)


def test_the_comparison_table_has_a_method_column_only_with_a_method(tmp_path):
    _answers(tmp_path / "a" / "heldout_0.jsonl", [True, False, False, False])
    _answers(tmp_path / "a" / "heldout_1.jsonl", [True, True, True, False])
    sft, first = Arm("SFT", tmp_path / "a", 0), Arm("SAPO 1", tmp_path / "a", 1)

    def table(method, out):
        rows = compare_arms([sft, first], reference=sft, method=method)
        lines = write_comparison(rows, tmp_path / out, "SFT", method and "SAPO").read_text().splitlines()
        return [line for line in lines if line.startswith("|")], "\n".join(lines)

    rows, text = table(None, "alone")
    assert rows[0].split("|")[1:-1] == [
        " row ", " run, iteration ", " held-out ", " vs SFT ", " labels ", " completions ",
        " generated tokens ", " seconds ",
    ]  # fmt: skip
    assert all(r.count("|") == rows[0].count("|") for r in rows)  # every row has the header's columns
    assert '"vs SFT" is the paired difference' in text and "vs SAPO" not in text
    assert rows[3].split("|")[4].startswith(" +50.0 ± ")  # SAPO 1 against SFT, in its own column
    rows, text = table(first, "beside")
    assert " vs SAPO " in rows[0].split("|") and all(r.count("|") == 10 for r in rows)
    assert '"vs SFT" and "vs SAPO" are paired differences' in text


def test_heldout_outcomes_names_the_file_and_line_of_a_damaged_answer(tmp_path):
    (tmp_path / "heldout_0.jsonl").write_text('{"question_id": "q0", "outcome": true}\n{"outcome": true}\n')
    with pytest.raises(ValueError, match=r"heldout_0\.jsonl, line 2"):
        heldout_outcomes(tmp_path, 0)


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def test_the_reproduction_refuses_more_baseline_rounds_than_the_methods_before_any_run(tmp_path, capsys):
    argv = ["--iterations", "1", "--baseline-iterations", "2", "--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit):
        benchmark_script("reproduction").main(argv)
    assert "--baseline-iterations: from 1 to --iterations (1), not 2" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.spread
def test_the_reproduction_runs_arms_begun_from_the_method_on_the_smoke_recipe(tmp_path, sapo_cache_dir):
    reproduction = benchmark_script("reproduction")
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--config", str(CONFIGS / "smoke.yaml"), "--iterations", "1", "--arms", "rft,outcome", "--k", "2"]
    argv += [
        "--runs",
        str(runs),
        "--out",
        str(out),
        "--",
        "--model.init_args.reasoner.cache_dir",
        sapo_cache_dir,
    ]
    old = dict(os.environ)
    os.environ.update(loop_env())
    try:
        reproduction.main(argv)
    finally:
        os.environ.clear()
        os.environ.update(old)

    method = json.loads((runs / "sapo" / "manifest.json").read_text())["phases"]
    for arm in ("rft", "outcome"):
        phases = json.loads((runs / arm / "manifest.json").read_text())["phases"]
        started = {e["phase"] for e in _events(runs / arm) if e["event"] == "start"}
        copied = ["sft", "samples_0", "labels_0", "verifier_0", "eval_0", "samples_1"]
        assert list(phases)[:6] == copied and not started & set(copied)  # copied, never redone
        assert (runs / arm / "samples_1.jsonl").read_text() == (runs / "sapo" / "samples_1.jsonl").read_text()
        assert phases["eval_0"]["heldout_accuracy"] == method["eval_0"]["heldout_accuracy"]
        assert "orpo_1" in started and "eval_1" in started
    rft = json.loads((runs / "rft" / "manifest.json").read_text())["phases"]
    outcome = json.loads((runs / "outcome" / "manifest.json").read_text())["phases"]
    assert "labels_1" not in rft and outcome["labels_1"]["strategy"] == "OutcomeSupervision"

    table = json.loads((out / "table.json").read_text())
    assert [r["name"] for r in table] == ["SFT", "RFT 1", "SAPO 1", "outcome labels (no process feedback)"]
    sft_answers = heldout_outcomes(out.parent / "runs" / "sapo", 0)
    for row in table[1:]:
        answers = heldout_outcomes(Path(row["run_dir"]), row["iteration"])
        ids = sorted(sft_answers)
        expected = paired_difference([sft_answers[i] for i in ids], [answers[i] for i in ids])
        assert row["vs_reference"] == pytest.approx(list(expected))
    assert table[1]["label_cost"] == {} and table[3]["label_cost"].get("completions", 0) == 0  # no rollouts
    assert table[2]["label_cost"] == method["labels_1"]["cost"]
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "heldout_rft_1.jsonl").is_file()

    # rerunning an arm resumes it: nothing is started again
    before = len(_events(runs / "rft"))
    command = [
        SAPO,
        "fit",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        "--config",
        str(CONFIGS / "ablations" / "rft.yaml"),
    ]
    command += [
        "--model.init_args.run_dir",
        str(runs / "rft"),
        "--trainer.default_root_dir",
        str(runs / "rft"),
    ]
    command += ["--model.init_args.iterations", "1", "--model.init_args.branch_from", str(runs / "sapo")]
    command += [
        "--model.init_args.branch_after",
        "samples_1",
        "--model.init_args.reasoner.cache_dir",
        sapo_cache_dir,
    ]
    fit_in_this_process(command, tmp_path)
    assert not [e for e in _events(runs / "rft")[before:] if e["event"] == "start"]

    # so does a rerun without the flags that began it: they are read before the branch's first phase only
    flags = {"--model.init_args.branch_from", "--model.init_args.branch_after"}
    bare = [a for i, a in enumerate(command) if a not in flags and command[i - 1] not in flags]
    assert len(bare) == len(command) - 4
    fit_in_this_process(bare, tmp_path)
    assert not [e for e in _events(runs / "rft")[before:] if e["event"] == "start"]
