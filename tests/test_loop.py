"""The self-evolution loop behind `sapo fit`: the smoke recipe end to end, killed and resumed; every ablation
overlay; configs refused before any work; the run directory's manifest."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import fit_in_this_process, loop_env, without_times

from sapo.cli import SapoCLI
from sapo.data.tasks.arithmetic import ArithmeticTask
from sapo.eval.reasoner import paired_difference
from sapo.evolution import RunDirectory, RunMismatchError
from sapo.models import TINY_RANDOM, BackboneSpec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SAPO = str(Path(sys.executable).parent / "sapo")

pytestmark = pytest.mark.slow


def _command(run_dir: Path, cache: str, *extra: str) -> list[str]:
    return [
        SAPO,
        "fit",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        *extra,
        "--model.init_args.run_dir",
        str(run_dir),
        "--model.init_args.reasoner.cache_dir",
        cache,
    ]


def _events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return []
    # The run appends while this polls, so the last line may be half written: read whole lines only.
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.strip()]


def _run_until(command: list[str], cwd: Path, run_dir: Path, until, timeout: float = 300) -> str:
    """Start the command and SIGKILL its process group as soon as ``until(events)`` holds; return why it
    ended ("killed", "finished", or "failed" with the end of its output)."""
    log = (cwd / "output.log").open("w")
    process = subprocess.Popen(
        command, cwd=cwd, env=loop_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if until(_events(run_dir)):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return "killed"
            time.sleep(0.005)
        assert process.poll() is not None, "the run did not end in time"
        if process.returncode != 0:
            return "failed: " + (cwd / "output.log").read_text()[-3000:]
        return "finished"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _chunk_finished(phase: str):
    return lambda events: any(e["event"] == "finish" and e["phase"] == phase and "chunk" in e for e in events)


def _phase_started(phase: str, after: float = 0.0):
    def until(events):
        starts = [e for e in events if e["event"] == "start" and e["phase"] == phase]
        return bool(starts) and time.time() - starts[0]["time"] >= after

    return until


#: the smoke recipe on half its questions, each in a chunk of its own: the resume tests kill between chunks,
#: and the ablations begin from the uninterrupted run
KILLABLE = ("--data.init_args.chunk_size", "1", "--data.init_args.task.init_args.num_questions", "6")


@pytest.fixture(scope="session")  # built once per test process, even if other files run in between
def resumed_run(tmp_path_factory, sapo_cache_dir):
    """The smoke loop killed during sampling, during labelling, during a verifier's and an ORPO phase's
    training, then run to the end."""
    cwd = tmp_path_factory.mktemp("smoke")
    run_dir = cwd / "runs" / "smoke"
    command = _command(run_dir, sapo_cache_dir, *KILLABLE)
    kills = []
    points = (
        _chunk_finished("samples_1"),
        _chunk_finished("labels_1"),
        _phase_started("verifier_1", 0.5),
        _phase_started("orpo_1", 0.5),
    )
    for until in points:
        kills.append(_run_until(command, cwd, run_dir, until))
        kills.append(json.loads((run_dir / "manifest.json").read_text())["phases"].keys())
    kills.append(_run_until(command, cwd, run_dir, lambda events: False))
    return cwd, run_dir, kills


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory, sapo_cache_dir):
    """The same smoke loop run once from start to end (in the test's process: it is not killed)."""
    cwd = tmp_path_factory.mktemp("smoke_whole")
    run_dir = cwd / "runs" / "smoke"
    fit_in_this_process(_command(run_dir, sapo_cache_dir, *KILLABLE), cwd)
    return run_dir


def _report_without_times(run_dir: Path) -> list[str]:
    """The report's lines with the run's folder, the labelling table's seconds column and the memory peaks
    taken out."""
    text = (run_dir / "report.md").read_text().replace(str(run_dir), "<run>")
    text = re.sub(r"\d+\.\d\d GiB", "<memory>", text)
    lines = text.splitlines()
    return [line.rsplit("|", 2)[0] if line.startswith("| labels_") else line for line in lines]


def test_a_resumed_run_makes_the_artifacts_of_an_uninterrupted_one(resumed_run, uninterrupted_run):
    _, resumed, kills = resumed_run
    assert kills[0::2] == ["killed"] * 4 + ["finished"]
    files = sorted(p.relative_to(uninterrupted_run) for p in uninterrupted_run.rglob("*") if p.is_file())
    jsonl = [f for f in files if f.suffix == ".jsonl" and f.name != "events.jsonl" and "logs" not in f.parts]
    models = [f for f in files if f.suffix == ".safetensors"]
    assert (
        len(jsonl) >= 20 and len(models) == 6
    )  # samples, labels, pairs, heldout, chunks; 3 reasoners, 3 verifiers
    for name in jsonl:
        whole = [json.loads(line) for line in (uninterrupted_run / name).read_text().splitlines()]
        again = [json.loads(line) for line in (resumed / name).read_text().splitlines()]
        assert without_times(again) == without_times(whole), name
    for name in models:
        assert (resumed / name).read_bytes() == (uninterrupted_run / name).read_bytes(), name
    manifest = {
        p: without_times(v) for p, v in json.loads((resumed / "manifest.json").read_text())["phases"].items()
    }
    expected = json.loads((uninterrupted_run / "manifest.json").read_text())["phases"]
    expected = {p: without_times(v) for p, v in expected.items()}
    for summary in (*manifest.values(), *expected.values()):  # the folders differ, the files in them do not
        for key in ("reasoner", "verifier"):
            if key in summary:
                summary[key] = Path(summary[key]).relative_to(Path(summary[key]).parents[1]).as_posix()
    assert manifest == expected  # costs included: a resumed phase's cost adds up its chunks of every process
    assert _report_without_times(resumed) == _report_without_times(uninterrupted_run)


def test_killed_runs_resume_and_nothing_finished_is_done_twice(resumed_run):
    _, run_dir, kills = resumed_run
    outcomes, finished_at_kill = kills[0::2], kills[1::2]
    assert outcomes == ["killed"] * 4 + ["finished"]
    # each kill came inside the phase it aimed at: that phase was not finished when the process died
    for phase, finished in zip(
        ("samples_1", "labels_1", "verifier_1", "orpo_1"), finished_at_kill, strict=True
    ):
        assert phase not in finished
    events = _events(run_dir)
    finishes = Counter((e["phase"], e.get("chunk")) for e in events if e["event"] == "finish")
    assert finishes and max(finishes.values()) == 1, [k for k, n in finishes.items() if n > 1]
    # the interrupted phases had finished chunks before the kill, and the rerun did not redo them
    assert finishes[("samples_1", 0)] == 1 and finishes[("labels_1", 0)] == 1
    restarted = Counter(e["phase"] for e in events if e["event"] == "start" and "chunk" not in e)
    # the killed training phases ran again, alone
    assert restarted["orpo_1"] == 2 and restarted["verifier_1"] == 2 and restarted["sft"] == 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = ["sft", "samples_0", "labels_0", "verifier_0", "eval_0"] + [
        f"{p}_{t}" for t in (1, 2) for p in ("samples", "labels", "verifier", "pairs", "orpo", "eval")
    ]
    assert list(manifest["phases"]) == expected


def test_the_run_directory_holds_every_phase_and_a_report(resumed_run):
    cwd, run_dir, _ = resumed_run
    manifest = json.loads((run_dir / "manifest.json").read_text())["phases"]
    samples = [json.loads(line) for line in (run_dir / "samples_1.jsonl").read_text().splitlines()]
    assert len(samples) == manifest["samples_1"]["trajectories"] > 0
    assert sum(s["outcome"] for s in samples) == manifest["samples_1"]["correct"]
    labels = [json.loads(line) for line in (run_dir / "labels_1.jsonl").read_text().splitlines()]
    assert labels and all(len(t["labels"]) == len(t["steps"]) for t in labels)
    assert manifest["labels_1"]["strategy"] == "FirstErrorSupervision"
    assert manifest["labels_0"]["strategy"] == "BinarySearchSupervision"
    # the labels against the arithmetic task's exact oracle, sampled trajectories and expansions apart
    agreement = manifest["labels_1"]["labels_vs_oracle"]
    expanded = [t for t in labels if t["label_source"].endswith("/expansion")]
    assert agreement["sampled"]["trajectories"] == len(labels) - len(expanded)
    assert agreement.get("expanded", {"trajectories": 0})["trajectories"] == len(expanded)
    assert "expanded" in agreement or not expanded
    sampled = agreement["sampled"]
    assert sampled["earlier"] + sampled["later"] == round(
        sampled["trajectories"] * (1 - sampled["first_error_accuracy"])
    )
    assert "| labels_1 | FirstErrorSupervision |" in (run_dir / "report.md").read_text()
    assert "V0 trained on BinarySearchSupervision labels" in (run_dir / "report.md").read_text()
    pairs = [json.loads(line) for line in (run_dir / "pairs_1.jsonl").read_text().splitlines()]
    assert len(pairs) == manifest["pairs_1"]["pairs"]
    for name in ("sft/reasoner", "iteration_1/reasoner", "iteration_2/reasoner", "verifier_2"):
        assert (run_dir / name / "config.json").is_file(), name
    report = (run_dir / "report.md").read_text()
    for t in (0, 1, 2):
        assert f"\n| {t} | " in report
        accuracy = manifest[f"eval_{t}"]["heldout_accuracy"]
        assert 0 <= accuracy <= 1
        heldout = [json.loads(line) for line in (run_dir / f"heldout_{t}.jsonl").read_text().splitlines()]
        assert len(heldout) == 8 and accuracy == sum(h["outcome"] for h in heldout) / 8
        if t == 0:
            start = [h["outcome"] for h in heldout]
        else:  # the change against the SFT start on the same questions, with its paired interval
            change, half_width = paired_difference(start, [h["outcome"] for h in heldout])
            assert f"| {100 * change:+.1f} ± {100 * half_width:.1f} pts |" in report
    for png in ("accuracy.png", "verifier.png", "label_cost.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    # one log for the whole run, though five processes made it
    logged = list(csv.DictReader((run_dir / "logs" / "iterations" / "metrics.csv").open()))
    assert [int(r["step"]) for r in logged] == [0, 1, 2]
    assert list((run_dir / "logs" / "iterations").glob("events.out.tfevents.*"))  # TensorBoard beside it
    assert float(logged[-1]["iteration/heldout_accuracy"]) == manifest["eval_2"]["heldout_accuracy"]


OVERLAYS = sorted(p.name for p in (CONFIGS / "ablations").glob("*.yaml")) + ["../sipf.yaml"]


def _last_shared_phase(overlay: dict) -> str:
    """The last phase of the smoke recipe that an overlay's settings leave as they are: an arm may begin
    with the phases through it (``branch_after``)."""
    init = overlay["model"]["init_args"]
    source = init.get("pairs", {}).get("source", "verifier")
    if init.get("iterations") == 0 or source == "gold":
        return "sft"  # nothing sampled (or evaluated) as the smoke recipe does it
    if "initial_strategy" in init.get("labelling", {}) or source != "verifier":
        return "samples_0"  # the first labels differ, or there are none (a recipe without a verifier)
    return "samples_1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ablation_runs_on_the_smoke_recipe(overlay, tmp_path, sapo_cache_dir, uninterrupted_run):
    """Each overlay on the smoke recipe, begun from the uninterrupted run's phases that it shares (a branch,
    as the reproduction runs its arms): what tells the arms apart runs, what they share is not redone."""
    run_dir = tmp_path / "run"
    config = yaml.safe_load((CONFIGS / "ablations" / overlay).read_text())
    smaller = ["--model.init_args.iterations", str(min(1, config["model"]["init_args"].get("iterations", 1)))]
    shared = _last_shared_phase(config)
    smaller += [*KILLABLE, "--model.init_args.branch_from", str(uninterrupted_run)]
    smaller += ["--model.init_args.branch_after", shared]
    labelling = config["model"]["init_args"].get("labelling", {})
    for key in ("initial_strategy", "strategy"):  # keep the smoke run small: 2 completions per estimate
        strategy = labelling.get(key)
        if strategy and "k" in strategy.get("init_args", {}):
            smaller += [f"--model.init_args.labelling.{key}.init_args.k", "2"]
    command = _command(run_dir, sapo_cache_dir, "--config", str(CONFIGS / "ablations" / overlay), *smaller)
    fit_in_this_process(command, tmp_path)
    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    started = {e["phase"] for e in _events(run_dir) if e["event"] == "start"}
    copied = list(phases)[: list(phases).index(shared) + 1]
    assert copied[0] == "sft" and not started & set(copied)  # the shared phases were not redone
    strategy = labelling.get("strategy", {}).get("class_path")
    source = config["model"]["init_args"].get("pairs", {}).get("source")
    if source in ("rft", "outcome", "oracle"):
        assert "labels_1" not in phases and "verifier_1" not in phases and "orpo_1" in phases
        assert "this recipe trains no verifier" in (run_dir / "report.md").read_text()
        if source == "oracle":  # every trained answer is right at every step, by the exact oracle
            smoke = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())["data"]["init_args"]["task"]
            task = ArithmeticTask(**smoke["init_args"])
            questions = {q.id: q for q in task.load()}
            pairs = [json.loads(line) for line in (run_dir / "pairs_1.jsonl").read_text().splitlines()]
            assert pairs and phases["pairs_1"]["pairs"] == len(pairs)
            for pair in pairs:
                question = questions[pair["question_id"]]
                chosen = task.trajectory(question, task.completion_text(pair["chosen"]))
                assert chosen.outcome is True and min(task.oracle_labels(chosen, question)) == 1.0
        if source == "outcome":  # every pair puts a right answer over a wrong one of its question
            outcome = {}  # D_1: both rounds' samples (they accumulate) and the gold solutions
            for samples in sorted(run_dir.glob("samples_*.jsonl")):
                for row in map(json.loads, samples.read_text().splitlines()):
                    outcome[(row["question_id"], tuple(row["steps"]))] = row["outcome"]
            pairs = [json.loads(line) for line in (run_dir / "pairs_1.jsonl").read_text().splitlines()]
            with_rejected = [p for p in pairs if p["rejected"] is not None]
            assert phases["pairs_1"]["with_rejected"] == len(with_rejected)
            for pair in with_rejected:
                assert outcome[(pair["question_id"], tuple(pair["chosen"]))] is True
                assert outcome[(pair["question_id"], tuple(pair["rejected"]))] is False
    elif source == "gold":  # SFT continued: the gold solutions again, nothing sampled or labelled
        assert not any(p.startswith(("samples_", "labels_", "verifier_")) for p in phases)
        assert (
            phases["pairs_1"]["pairs"] == phases["sft"]["pairs"] and phases["pairs_1"]["with_rejected"] == 0
        )
        assert "orpo_1" in phases and "eval_1" in phases
    elif config["model"]["init_args"].get("iterations") == 0:
        assert "eval_0" in phases and not any(p.endswith("_1") for p in phases)
    else:
        assert phases["labels_1"]["strategy"] == (strategy or "x.FirstErrorSupervision").rsplit(".", 1)[1]
        if "no_expansion" in overlay:
            assert phases["labels_1"]["expanded"] == 0
    assert (run_dir / "report.md").is_file()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--model.init_args.pairs.marginn", "0.3"], "marginn"),
        (["--model.init_args.iterations", "two"], "iterations"),
        (["--model.init_args.labelling.strategy.init_args.k", "-1"], "k must be at least 1"),
        (["--model.init_args.pairs.margin", "1.5"], "model.init_args.pairs.margin"),
        (["--model.init_args.pairs.min_chosen_reward", "2"], "model.init_args.pairs.min_chosen_reward"),
        (["--model.init_args.sampling.temperature", "-1"], "model.init_args.sampling.temperature"),
        (["--model.init_args.sampling.backend", "tgi"], "model.init_args.sampling.backend"),
        (["--model.init_args.verifier.loss", "hinge"], "model.init_args.verifier.loss"),
        (["--data.init_args.chunk_size", "0"], "data.init_args.chunk_size"),
        (
            ["--model.init_args.labelling.strategy.class_path", "sapo.supervision.NoSuchSupervision"],
            "NoSuchSupervision",
        ),
        (["--model.init_args.orpo.init", "scratch"], "model.init_args.orpo.init"),
        # launches the loop cannot run (tests/test_distributed.py has ranks that disagree)
        (["--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"], "trainer.strategy"),
        (["--trainer.devices", "512", "--trainer.strategy", "ddp"], "trainer.devices"),
    ],
)
def test_a_bad_loop_config_fails_before_any_work(override, message, tmp_path, capsys):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "smoke.yaml"),
        "--model.init_args.run_dir",
        str(tmp_path / "run"),
    ]
    try:
        with pytest.raises(SystemExit) as exit_info:
            SapoCLI(args=args + override)
        code, err = exit_info.value.code, capsys.readouterr().err
    except ValueError as error:  # a constructor's own check, raised while instantiating
        code, err = 1, str(error)
    assert code != 0
    assert message in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_run_directory_refuses_other_settings(tmp_path):
    settings = {"model": {"iterations": 2, "pairs": {"margin": 0.3}}, "data": {"chunk_size": 4}}
    run = RunDirectory(tmp_path, settings)
    run.finish("sft", reasoner="x")
    assert RunDirectory(tmp_path, settings).done("sft")
    with pytest.raises(RunMismatchError, match="model.pairs.margin"):
        RunDirectory(tmp_path, {**settings, "model": {"iterations": 2, "pairs": {"margin": 0.5}}})


def test_the_strategy_is_one_command_line_flag(tmp_path):
    args = ["--config", str(CONFIGS / "demo.yaml"), "--model.init_args.run_dir", str(tmp_path / "run")]
    flag = ["--model.init_args.labelling.strategy", "sapo.supervision.MonteCarloSupervision"]
    cli = SapoCLI(args=args + flag + ["--model.init_args.labelling.strategy.init_args.k", "3"], run=False)
    strategy = cli.model.labelling.strategy
    assert type(strategy).__name__ == "MonteCarloSupervision" and strategy.k == 3
    assert type(SapoCLI(args=args, run=False).model.labelling.strategy).__name__ == "FirstErrorSupervision"


@pytest.mark.parametrize("setting", [None, False, True])
def test_the_verifier_recomputes_activations_as_its_own_setting_says(sapo_cache_dir, setting, tmp_path):
    """verifier.gradient_checkpointing: null follows the reasoner's setting, a value overrides it."""
    from sapo.evolution import SelfEvolution
    from sapo.evolution.settings import VerifierSettings

    reasoner = BackboneSpec(
        TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir, gradient_checkpointing=True
    )
    loop = SelfEvolution(reasoner, verifier=VerifierSettings(gradient_checkpointing=setting))
    verifier = loop.verifier.backbone(loop.reasoner_spec, tmp_path / "reasoner", loop.verifier_lora)
    assert verifier.gradient_checkpointing is (True if setting is None else setting)
    assert verifier.name_or_path == str(tmp_path / "reasoner") and verifier.lora == loop.verifier_lora


def test_the_verifier_trains_and_scores_with_the_reasoners_attention(sapo_cache_dir, tmp_path):
    """reasoner.attention reaches the verifier's backbone and the verifier the loop loads to score."""
    from sapo.data.tasks.arithmetic import ArithmeticTask
    from sapo.evolution import SAPSDataModule, SelfEvolution
    from sapo.models import PRMVerifier
    from sapo.rollout.attention import GROUPED_EAGER

    reasoner = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir, attention=GROUPED_EAGER)
    loop = SelfEvolution(reasoner)
    spec = loop.verifier.backbone(loop.reasoner_spec, tmp_path / "reasoner", loop.verifier_lora)
    assert spec.attention == GROUPED_EAGER
    PRMVerifier(BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)).save_pretrained(
        tmp_path / "verifier"
    )
    loop.data, loop._prompts = SAPSDataModule(task=ArithmeticTask(num_questions=4)), None  # as fit sets them
    loaded = loop._load_verifier(tmp_path / "verifier")
    assert loaded.model.config._attn_implementation == GROUPED_EAGER
