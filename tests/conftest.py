"""Shared fixtures: one model cache per test session, the tiny random model and the real SmolLM2 tokenizer.

The cache lives in a session temporary folder, so a run never depends on (or writes to) the user's
``~/.cache/sapo``; the SmolLM2 tokenizer is converted once per session (seconds) and the SmolLM2 model
only when a test asks for it (about 20 s).
"""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: hub lookups fail fast

from collections import Counter

import pytest
import torch
from transformers.models.llama import LlamaForCausalLM

from sapo.models import PACKAGED_SMOLLM2, TINY_RANDOM, BackboneSpec, LoadedBackbone, load_tokenizer

#: the shared data files (GSM8K, MBPP, HumanEval) beside the checkout, as developers and CI have them
SHARED_DATA = Path(
    os.environ.get("SAPO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


#: fields of run records that hold wall-clock times, memory peaks and process ids: the only things two runs
#: of one recipe (resumed or not, on one process or two) may differ in
RUN_TIMES = {"seconds", "stop_check_seconds", "time", "finished_at", "memory", "memory_per_rank", "pid"}


def without_times(value):
    """``value`` (a run's JSON record) without the :data:`RUN_TIMES` fields, at any depth."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in RUN_TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


#: the benchmark scripts, which some tests load as modules
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded as a module (registered in ``sys.modules``: dataclasses look their
    module up while a class is built)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def loop_env() -> dict[str, str]:
    """The environment of a ``sapo fit`` a test starts: one thread per process, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def fit_in_this_process(command: list[str], cwd: Path) -> None:
    """Run a ``sapo fit`` command line (``[sapo, "fit", ...]``, as the subprocess tests build it) in the test
    process, from ``cwd``, on one torch thread as :func:`loop_env` gives a subprocess: the imports are then
    paid once per test worker, not once per run (about 10 s a run on a 2-core Zen 3). For runs that are not
    killed; a run that is killed, or launched on several processes, needs a process of its own."""
    from sapo.cli import SapoCLI

    previous, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(cwd)
    torch.set_num_threads(1)
    try:
        SapoCLI(args=command[1:])
    finally:
        os.chdir(previous)
        torch.set_num_threads(threads)


def pytest_configure(config):
    """pytest-xdist's workers share the cores: each gets its share of torch threads, and so do the
    subprocesses the tests start (``OMP_NUM_THREADS``); oversubscribed threads slow torch about 10x."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Keep each test file on one xdist worker (its module fixtures are built once), except tests marked
    ``spread``, whose cases go to any free worker. The longest work goes first, so that it does not start
    last and leave one worker alone at the end: the files of ``slow`` tests (whole loops), the files with
    most of them first, then the ``spread`` tests, then the rest, each file in its own order (xdist keeps
    this order with ``--no-loadscope-reorder``)."""
    slow = Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))

    def rank(item) -> tuple[int, int]:
        if item.get_closest_marker("spread") is not None:
            return (1, 0)
        weight = slow[item.module.__name__]
        return (0, -weight) if weight else (2, 0)

    items.sort(key=rank)  # stable: otherwise in order
    for item in items:
        if item.get_closest_marker("spread") is None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session")
def sapo_cache_dir(tmp_path_factory) -> str:
    """The model cache shared by every test in the session."""
    return str(tmp_path_factory.mktemp("sapo-cache"))


@pytest.fixture
def tiny_model_and_tokenizer(sapo_cache_dir):
    """A fresh tiny random Llama (2 layers, hidden 64, float32) with the real SmolLM2 tokenizer."""
    return BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir).load()


@pytest.fixture
def smollm2_tokenizer(sapo_cache_dir):
    """A fresh copy of the real SmolLM2-135M-Instruct tokenizer (fast, with chat template and pad token)."""
    return load_tokenizer(PACKAGED_SMOLLM2, cache_dir=sapo_cache_dir)


@pytest.fixture(scope="session")
def smollm2_cache_dir(tmp_path_factory) -> str:
    """A model cache of its own for the conversion tests: whatever else ran first in this process (a whole
    recipe on the packaged model converts it into ``sapo_cache_dir``), the first load here converts."""
    return str(tmp_path_factory.mktemp("smollm2-cache"))


@pytest.fixture(scope="session")
def smollm2_first_load(smollm2_cache_dir) -> LoadedBackbone:
    """The packaged SmolLM2-135M-Instruct in bfloat16, loaded once per session, converted into
    ``smollm2_cache_dir`` by this first load.

    Session-scoped because the conversion is slow; tests must not train or modify this model.
    """
    return BackboneSpec(PACKAGED_SMOLLM2, dtype="bfloat16", cache_dir=smollm2_cache_dir).load_with_info()


class WrittenReasoner(LlamaForCausalLM):
    """Writes ``plan(prompt)[j]`` and then EOS for the ``j``-th row it is asked to complete with that prompt,
    whatever the sampling settings (every logit but the chosen token's is -1e9). Rows are planned when
    ``generate`` receives them; forward passes outside ``generate`` (a shared prefill) only fill the cache."""

    def setup(self, tokenizer, plan):
        self.tokenizer, self.plan, self.seen, self.generating = tokenizer, plan, Counter(), False
        return self

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        self.rows = []
        for ids, keep in zip(input_ids, mask, strict=True):
            prompt = self.tokenizer.decode(ids[keep.bool()].tolist())
            written = self.plan(prompt)[self.seen[prompt]]
            self.seen[prompt] += 1
            self.rows.append(
                [*self.tokenizer(written, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]
            )
        self.step, self.generating = 0, True
        try:
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self.generating = False

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if not self.generating:
            return out
        logits = torch.full_like(out.logits[:, -1:], -1e9)
        for r, ids in enumerate(self.rows):
            logits[r, 0, ids[min(self.step, len(ids) - 1)]] = 0.0
        self.step += 1
        out.logits = logits
        return out
