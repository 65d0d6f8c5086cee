"""Shared fixtures: one model cache per test session, the tiny random model and the real SmolLM2 tokenizer.

The cache lives in a session temporary folder, so a run never depends on (or writes to) the user's
``~/.cache/sapo``; the SmolLM2 tokenizer is converted once per session (seconds) and the SmolLM2 model
only when a test asks for it (about 20 s).
"""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: hub lookups fail fast

import pytest

from sapo.models import PACKAGED_SMOLLM2, TINY_RANDOM, BackboneSpec, LoadedBackbone, load_tokenizer

#: the shared data files (GSM8K, MBPP, HumanEval) beside the checkout, as developers and CI have them
SHARED_DATA = Path(
    os.environ.get("SAPO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


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
def smollm2_first_load(sapo_cache_dir) -> LoadedBackbone:
    """The packaged SmolLM2-135M-Instruct in bfloat16, loaded once per session (converting it if needed).

    Session-scoped because the conversion is slow; tests must not train or modify this model.
    """
    return BackboneSpec(PACKAGED_SMOLLM2, dtype="bfloat16", cache_dir=sapo_cache_dir).load_with_info()
