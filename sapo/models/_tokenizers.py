"""Tokenizers read once per process: the loop loads a checkpoint (and the same tokenizer saved beside it) in
almost every phase, and reading SmolLM2's tokenizer files took 0.6 s each time on a 2-core Zen 3 (16 reads,
10 s, of a 48 s smoke run), where a copy of one already read took 0.2-0.4 s."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

#: the files of a folder that decide what AutoTokenizer reads from it (config.json names the model type)
_TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template", "vocab", "merges")

#: the tokenizers read so far, by the bytes of the files they were read from
_READ: dict[str, PreTrainedTokenizerBase] = {}


def _files_digest(folder: Path, kwargs: dict[str, Any]) -> str | None:
    """A digest of the tokenizer's files in ``folder`` (with ``config.json``) and of the arguments they are
    read with, or None where the folder has no tokenizer files."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.name.startswith(_TOKENIZER_FILES) or p.name == "config.json")
    )
    if not any(p.name.startswith(_TOKENIZER_FILES) for p in files):
        return None  # AutoTokenizer would look elsewhere (a base model's hub id): read it as it says
    digest = hashlib.blake2b(repr(sorted(kwargs.items())).encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_tokenizer(name_or_folder: str | Path, **kwargs: Any) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name_or_folder, **kwargs)``, from memory where a folder with the same
    tokenizer files was read before in this process. Each call returns its own tokenizer (a copy): callers
    change theirs (padding side, pad token)."""
    folder = Path(name_or_folder)
    key = _files_digest(folder, kwargs) if not kwargs.get("gguf_file") and folder.is_dir() else None
    if key is None:
        return AutoTokenizer.from_pretrained(name_or_folder, **kwargs)
    if key not in _READ:
        _READ[key] = AutoTokenizer.from_pretrained(name_or_folder, **kwargs)
    tokenizer = copy.deepcopy(_READ[key])
    tokenizer.name_or_path = str(name_or_folder)  # this folder's, not the first one read
    return tokenizer
