"""Tiny random models for tests: a SmolLM2-shaped Llama, shrunk and seeded, with the real SmolLM2 tokenizer.

``tiny-random`` is 2 layers with hidden size 64; ``tiny-random-<layers>x<hidden>`` picks a size and
``tiny-random-<layers>x<hidden>h<head>`` a head size too (16 by default; vLLM's CPU attention needs 32 or
more). Each size and seed is built once into its cache folder (:func:`_ensure_tiny_random`). :data:`TINY_RANDOM` and
:func:`tiny_random_config` are public through :mod:`sapo.models.backbone`.
"""

import re
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.models.llama import LlamaConfig, LlamaForCausalLM

from sapo.models._gguf import _ensure_packaged_smollm2_tokenizer
from sapo.models._model_cache import _ensure_cache_entry, _save_model_on_this_rank

TINY_RANDOM = "tiny-random"
"""Name of the default tiny random model (2 layers, hidden size 64); ``tiny-random-<L>x<H>`` picks a size."""

_TINY_PATTERN = re.compile(r"^tiny-random(?:-(\d+)x(\d+)(?:h(\d+))?)?$")


def tiny_random_config(vocab_size: int, layers: int = 2, hidden: int = 64, head: int = 16) -> LlamaConfig:
    """A SmolLM2-shaped Llama (tied embeddings, grouped-query attention, head size ``head``), shrunk.

    ``hidden`` must be a multiple of 64 so the key/value projections are a multiple of 32 wide, which the
    bitsandbytes CPU kernels need for 4-bit tests; ``head`` must divide ``hidden`` into an even number of
    heads (half of them key/value heads).
    """
    if layers < 1 or hidden < 64 or hidden % 64:
        raise ValueError(f"tiny model needs layers >= 1 and hidden a multiple of 64, got {layers}x{hidden}")
    if head < 1 or hidden % (2 * head):
        raise ValueError(f"tiny model needs an even number of heads of size {head} in hidden size {hidden}")
    heads = hidden // head
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=head,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )


def _ensure_tiny_random(
    cache_root: Path, layers: int, hidden: int, seed: int, head: int = 16
) -> tuple[Path, bool]:
    tokenizer_folder, _ = _ensure_packaged_smollm2_tokenizer(cache_root)
    # the default head size keeps the names (and cache folders) from before head sizes could be chosen
    size = f"{layers}x{hidden}" if head == 16 else f"{layers}x{hidden}h{head}"
    folder = cache_root / f"{TINY_RANDOM}-{size}-seed{seed}"
    source = {"kind": "tiny-random", "layers": layers, "hidden": hidden, "seed": seed}
    if head != 16:
        source["head"] = head

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        config = tiny_random_config(len(tokenizer), layers, hidden, head)
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        _save_model_on_this_rank(model, tmp)
        tokenizer.save_pretrained(tmp)

    return _ensure_cache_entry(folder, source, build)
