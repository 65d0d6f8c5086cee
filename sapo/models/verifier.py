"""PRMVerifier: a process reward model, a causal LM's decoder with a fresh scalar head read at step ends.

The verifier reads ``prompt + steps`` once and scores every step at once: step ``j``'s score is
``ĉ_j = σ(w · h_{p_j} + b)``, where ``h_t`` is the decoder's last hidden state at token ``t`` and ``p_j`` the
step-end position of :func:`~sapo.data.steps.encode_steps`. Only the decoder runs (never the language-model
head), so no ``[batch, tokens, vocabulary]`` logits are ever made.

It trains on labelled trajectories (:class:`~sapo.data.prm.PRMDataModule`), scores trajectories for the
supervision strategies and the preference pairs (:meth:`PRMVerifier.score`, a
:class:`~sapo.supervision.protocols.StepScorer`), and saves as a plain transformers token-classification
model with one label (:meth:`PRMVerifier.save_pretrained`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from tqdm.auto import tqdm
from transformers import AutoModelForTokenClassification

from sapo.data.prm import DEFAULT_PROMPT_TEMPLATE, PRMCollator, describe
from sapo.data.steps import DEFAULT_SEPARATOR
from sapo.data.trajectory import Trajectory
from sapo.models.backbone import BackboneSpec
from sapo.models.schedule import adamw_with_linear_warmup_decay
from sapo.models.verifier_metrics import FirstErrorAccuracy, ProcessBenchF1

__all__ = [
    "LOSSES",
    "VERIFIER_CONFIG_NAME",
    "PRMVerifier",
    "fill_unplaced_scores",
    "gather_steps",
    "merged_decoder_state",
    "step_loss",
]

logger = logging.getLogger(__name__)

LOSSES = ("bce", "mse")
#: the file beside a saved verifier's weights that records how it reads trajectories
VERIFIER_CONFIG_NAME = "sapo-verifier.json"
#: names transformers gives the head of ``...ForTokenClassification`` models
_CLASSIFIER_NAMES = ("score", "classifier")
#: constructor arguments recorded by :meth:`PRMVerifier.save_pretrained` (all but the backbone)
_SAVED_ARGUMENTS = (
    "loss",
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "threshold",
    "batch_size",
    "separator",
    "max_length",
    "instruction",
    "prompt_template",
    "use_chat_template",
)


def step_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, kind: str = "bce"
) -> torch.Tensor:
    """The mean loss over labelled steps of a batch, ``N = Σ m_bj`` of them.

    ``bce``: ``L = (1/N) Σ_{m_bj} −[c_bj log σ(z_bj) + (1 − c_bj) log(1 − σ(z_bj))]`` (hard or soft ``c``);
    ``mse``: ``L = (1/N) Σ_{m_bj} (σ(z_bj) − c_bj)²`` (SAPO's loss). ``z`` are the head's logits, ``c`` the
    labels, ``m`` the step mask. A batch with no labelled step gives 0 (still attached to the graph).
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    mask = mask.bool()
    z, c = logits[mask].float(), labels[mask].float()
    if z.numel() == 0:
        return logits.sum() * 0.0
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(z, c)
    return F.mse_loss(z.sigmoid(), c)


def gather_steps(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = hidden[b, max(p_bj, 0)]``: the hidden state at each step end (``[B, T, H] -> [B, S, H]``;
    padded positions, -1, read token 0 and must be masked by the caller)."""
    index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


def fill_unplaced_scores(scores: Sequence[float | None], where: str) -> tuple[list[float], int]:
    """Give each step without a position (``None``) the score of the nearest placed step before it, or, for
    steps before the first placed one, the first placed step's score. Returns the scores and how many were
    filled; raises when no step is placed."""
    placed = [s for s in scores if s is not None]
    if not placed:
        raise ValueError(f"{where}: no step has a token position to score")
    filled, previous, count = [], placed[0], 0
    for score in scores:
        if score is None:
            count += 1
            filled.append(previous)
        else:
            previous = score
            filled.append(score)
    return filled, count


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (LoRA layers injected in place), or the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _decoder(model: nn.Module) -> nn.Module:
    """The causal LM's decoder (``LlamaModel`` in ``LlamaForCausalLM``): hidden states without the LM head."""
    causal = _causal_lm(model)
    return getattr(causal, causal.base_model_prefix)


def merged_decoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The decoder's weights with LoRA merged in, under the plain model's parameter names.

    For each LoRA layer ``W' = W + Σ_a ΔW_a`` over its active adapters (``ΔW = (α / r) B A``, peft's
    ``get_delta_weight``), computed beside the live weights: the training model is left untouched (merging
    in place and unmerging would round the base weights). Adapter tensors are dropped and peft's
    ``base_layer`` names are mapped back. Without LoRA this is the decoder's ``state_dict``.
    """
    decoder = _decoder(model)
    state = {
        key.replace(".base_layer.", "."): tensor
        for key, tensor in decoder.state_dict().items()
        if "lora_" not in key
    }
    for name, layer in decoder.named_modules():
        if not (hasattr(layer, "get_delta_weight") and hasattr(layer, "base_layer")):
            continue
        if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
            continue
        key = f"{name}.weight"
        weight = state[key]
        delta = sum(layer.get_delta_weight(adapter).float() for adapter in layer.active_adapters)
        state[key] = (weight.float() + delta).to(weight.dtype)
    return state


class PRMVerifier(L.LightningModule):
    """A process reward model: a backbone's decoder and a fresh scalar head on the last hidden state.

    Defaults are SIPF's public verifier settings where it gives one (AdamW lr 5e-5, weight decay 0.01,
    warm-up 0.1 then linear decay; LoRA r 16 / alpha 32 / dropout 0.05 through
    ``backbone.lora=LoraSettings()``; 10 epochs and max grad norm 0.3 are the trainer's ``max_epochs`` and
    ``gradient_clip_val``). To start from the current reasoner, point ``backbone.name_or_path`` at its saved
    folder: the weights are the reasoner's and the head is new.

    Args:
        backbone: which causal LM to load and how (dtype, device, LoRA, 4-bit, gradient checkpointing).
        loss: ``"bce"`` (binary cross-entropy on hard or soft labels) or ``"mse"`` (SAPO's squared error on
            ``σ(z)``). Deviation from SAPO, which uses MSE: BCE is the default because it is the usual PRM
            loss (Math-Shepherd, OmegaPRM, TRL) and its gradient does not vanish when ``σ(z)`` saturates on
            the wrong side, as MSE's does.
        learning_rate: peak AdamW learning rate (SIPF's verifier: 5e-5).
        weight_decay: AdamW weight decay (SIPF: 0.01).
        warmup_ratio: share of optimiser steps spent warming up linearly before the linear decay (SIPF: 0.1).
        threshold: ProcessBench's τ: a step scored below it is wrong (for the validation metrics).
        batch_size: trajectories per forward pass in :meth:`score`.
        separator: the step separator of the trajectories (``"\\n"``; ``"\\n\\n"`` for ProcessBench).
        max_length: tokens per trajectory; steps beyond it get no label in training, and in :meth:`score`
            the score of the last step that fits (see there).
        instruction, prompt_template, use_chat_template: how the question becomes the prompt
            (:func:`~sapo.data.prm.verifier_prompt`), when no ``prompt`` is given.
        prompt: a trajectory's prompt as its task builds it (see :class:`~sapo.data.prm.PRMCollator`); not
            saved with the verifier, so give it again to :meth:`from_pretrained`.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        loss: str = "bce",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        threshold: float = 0.5,
        batch_size: int = 16,
        separator: str = DEFAULT_SEPARATOR,
        max_length: int = 1024,
        instruction: str = "",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        use_chat_template: bool = True,
        prompt: Callable[[Trajectory], str] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["prompt"])
        self.backbone_spec = backbone
        # Loaded here, not in configure_model: the DataModule needs the tokenizer during its setup.
        self.model, self.tokenizer = backbone.load()
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes as they are
        self.collator = PRMCollator(
            self.tokenizer, separator, max_length, instruction, prompt_template, use_chat_template, prompt
        )
        config = _causal_lm(self.model).config
        hidden_size = config.get_text_config().hidden_size
        # The head stays float32 (and outside peft, so it trains with or without LoRA); its initial scale
        # keeps the first logits near 0, i.e. scores near 0.5.
        self.head = nn.Linear(hidden_size, 1).to(device=backbone.device, dtype=torch.float32)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.head.bias)
        self.val_step_accuracy = BinaryAccuracy(threshold=threshold)
        self.val_auroc = BinaryAUROC()
        self.val_first_error_accuracy = FirstErrorAccuracy(threshold)
        self.val_processbench_f1 = ProcessBenchF1(threshold)

    # --- forward ----------------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states ``[B, T, H]`` (final norm applied, no LM head)."""
        output = _decoder(self.model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return output.last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, step_positions: torch.Tensor
    ) -> torch.Tensor:
        """Step logits ``z_bj = w · h_{b, p_bj} + b`` ``[B, S]`` (float32; entries with ``p_bj = -1`` are
        meaningless and must be masked)."""
        steps = gather_steps(self.hidden_states(input_ids, attention_mask), step_positions)
        with torch.autocast(device_type=steps.device.type, enabled=False):
            return self.head(steps.float()).squeeze(-1)

    def _batch_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"], batch["step_positions"])

    # --- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self._batch_logits(batch)
        loss = step_loss(logits, batch["step_labels"], batch["step_mask"], self.hparams.loss)
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/labelled_steps", batch["step_mask"].sum().float(), batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self._batch_logits(batch)
        labels, mask = batch["step_labels"], batch["step_mask"]
        loss = step_loss(logits, labels, mask, self.hparams.loss)
        scores = logits.sigmoid()
        # Step accuracy and AUROC need binary targets: a soft label counts as correct from 0.5 up.
        targets = (labels[mask] >= 0.5).long()
        self.val_step_accuracy.update(scores[mask], targets)
        self.val_auroc.update(scores[mask], targets)
        self.val_first_error_accuracy.update(scores, labels, mask)
        self.val_processbench_f1.update(scores, labels, mask)
        size = batch["input_ids"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=size)
        metrics = {
            "val/step_accuracy": self.val_step_accuracy,
            "val/auroc": self.val_auroc,
            "val/first_error_accuracy": self.val_first_error_accuracy,
            "val/processbench_f1": self.val_processbench_f1,
        }
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=size)

    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.parameters() if p.requires_grad]  # the head, and LoRA or all weights
        return adamw_with_linear_warmup_decay(
            parameters,
            self.hparams.learning_rate,
            self.hparams.weight_decay,
            self.hparams.warmup_ratio,
            int(self.trainer.estimated_stepping_batches),
        )

    # --- scoring ----------------------------------------------------------------------------------------
    def score(
        self,
        trajectories: Sequence[Trajectory],
        batch_size: int | None = None,
        description: str | None = None,
    ) -> list[list[float]]:
        """One score ``ĉ_j = σ(z_j)`` in [0, 1] per step of each trajectory (a
        :class:`~sapo.supervision.protocols.StepScorer`).

        Batched (longest first, ``batch_size`` trajectories per pass, default the constructor's), in eval
        mode without gradients; every module's training mode is restored afterwards. Labels are ignored.
        With a ``description`` a progress bar counts the trajectories scored (scoring thousands takes
        minutes on a CPU).

        A step without a token position (cut off by ``max_length``, or swallowed by a token spanning two
        steps) gets the score of the nearest placed step before it, since the verifier has read nothing of
        it; a warning counts such steps. A trajectory with no steps, or none of whose steps fits in
        ``max_length``, raises :class:`ValueError` naming its index and question id.
        """
        size = batch_size or self.hparams.batch_size
        examples = []
        for index, trajectory in enumerate(trajectories):
            where = describe(trajectory, index)
            if trajectory.num_steps == 0:
                raise ValueError(f"{where} has no steps to score")
            example = self.collator.example(trajectory, where, require_labels=False)
            if example.num_placed == 0:
                raise ValueError(
                    f"{where}: none of its {trajectory.num_steps} steps fits in max_length="
                    f"{self.collator.max_length} tokens; raise max_length or shorten the prompt"
                )
            examples.append(example)
        raw: list[list[float | None]] = [[] for _ in examples]
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        bar = tqdm(total=len(order), desc=description, unit="trajectory", disable=description is None)
        try:
            with torch.no_grad():
                for start in range(0, len(order), size):
                    rows = order[start : start + size]
                    batch = self.collator.pad([examples[i] for i in rows])
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    scores = self._batch_logits(batch).sigmoid().cpu()
                    for row, i in enumerate(rows):
                        positions = examples[i].positions
                        raw[i] = [
                            None if p is None else float(scores[row, j]) for j, p in enumerate(positions)
                        ]
                    bar.update(len(rows))
        finally:
            bar.close()
            for module, training in modes:
                module.training = training
        results, filled = [], 0
        for example, values in zip(examples, raw, strict=True):
            scores_of_steps, count = fill_unplaced_scores(values, example.where)
            results.append(scores_of_steps)
            filled += count
        if filled:
            logger.warning(
                "%d steps had no token position (beyond max_length=%d, or inside a token spanning two "
                "steps) and got the score of the step before them",
                filled,
                self.collator.max_length,
            )
        return results

    # --- saving and loading -----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Save as a transformers token-classification model with one label, plus the tokenizer.

        ``AutoModelForTokenClassification.from_pretrained(path)`` then gives logits ``[B, T, 1]`` whose
        sigmoid at the step ends equals :meth:`score` (the head becomes the model's ``score`` layer, in the
        backbone's dtype). LoRA adapters are merged into the saved weights (:func:`merged_decoder_state`);
        the module itself keeps its adapters. ``sapo-verifier.json`` records how the verifier reads
        trajectories (prompt, separator, ``max_length``) and its other arguments, for
        :meth:`from_pretrained`. 4-bit backbones cannot be saved this way (their weights would have to be
        dequantised): train with LoRA on a float backbone, or save a Lightning checkpoint.
        """
        if self.backbone_spec.load_in_4bit:
            raise ValueError(
                "save_pretrained cannot merge LoRA into 4-bit weights; save a Lightning checkpoint instead"
            )
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = merged_decoder_state(self.model)
        dtype = next(iter(state.values())).dtype
        config = copy.deepcopy(_causal_lm(self.model).config)
        config.num_labels = 1
        config.token_classification_bias = True
        config.architectures = None
        with torch.device("meta"):
            classifier = AutoModelForTokenClassification.from_config(config)
        getattr(classifier, classifier.base_model_prefix).load_state_dict(state, strict=True, assign=True)
        head_name = _classifier_name(classifier)
        head_state = {k: v.detach().to(dtype) for k, v in self.head.state_dict().items()}
        getattr(classifier, head_name).load_state_dict(head_state, strict=True, assign=True)
        classifier.config.dtype = dtype
        classifier.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        record = {
            "format": 1,
            "head": head_name,
            "arguments": {name: self.hparams[name] for name in _SAVED_ARGUMENTS},
        }
        (path / VERIFIER_CONFIG_NAME).write_text(json.dumps(record, indent=2))
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], backbone_options: dict[str, Any] | None = None, **overrides: Any
    ) -> PRMVerifier:
        """Reload a verifier written by :meth:`save_pretrained`.

        ``backbone_options`` are :class:`~sapo.models.backbone.BackboneSpec` fields other than the path
        (device, dtype, a fresh LoRA to train further); ``overrides`` replace saved constructor arguments.
        The decoder loads as a causal LM (its unused LM head is tied to the embeddings, or freshly
        initialised for untied models) and the head from the saved ``score`` layer.
        """
        path = Path(path)
        record_path = path / VERIFIER_CONFIG_NAME
        if not record_path.is_file():
            raise FileNotFoundError(
                f"{path}: no {VERIFIER_CONFIG_NAME}; not a folder written by save_pretrained"
            )
        record = json.loads(record_path.read_text())
        arguments = {**record["arguments"], **overrides}
        with _expected_head_keys(record["head"]):  # the head is read below, not by the causal LM
            verifier = cls(BackboneSpec(str(path), **(backbone_options or {})), **arguments)
        head_state = _read_tensors(path, [f"{record['head']}.weight", f"{record['head']}.bias"])
        with torch.no_grad():
            verifier.head.weight.copy_(head_state[f"{record['head']}.weight"])
            verifier.head.bias.copy_(head_state[f"{record['head']}.bias"])
        return verifier


class _HeadOnlyLoadReport(logging.Filter):
    """Drops transformers' load report when its only finding is the saved head's keys left unused."""

    def __init__(self, head: str) -> None:
        super().__init__()
        self.head = head

    def filter(self, record: logging.LogRecord) -> bool:
        text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())  # the report is coloured
        if "LOAD REPORT" not in text or f"{self.head}.weight" not in text:
            return True
        return any(word in text for word in ("MISSING", "MISMATCH", "CONVERSION"))


@contextlib.contextmanager
def _expected_head_keys(head: str) -> Iterator[None]:
    """Reloading a saved verifier loads its decoder as a causal LM, which has no ``head`` layer: transformers
    reports those keys as unexpected on every load. Silence that report only; any other finding (missing or
    mismatched weights) still shows."""
    logger = logging.getLogger("transformers.modeling_utils")
    quiet = _HeadOnlyLoadReport(head)
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _classifier_name(model: nn.Module) -> str:
    for name in _CLASSIFIER_NAMES:
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear) and layer.out_features == 1:
            return name
    raise TypeError(
        f"{type(model).__name__} has no one-output classifier layer named one of {_CLASSIFIER_NAMES}"
    )


def _read_tensors(folder: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Read ``keys`` from a saved checkpoint's safetensors file(s), sharded or not."""
    from safetensors import safe_open

    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        files = {key: folder / weight_map[key] for key in keys if key in weight_map}
    else:
        files = {key: folder / "model.safetensors" for key in keys}
    missing = [key for key in keys if key not in files]
    tensors = {}
    for key, file in files.items():
        with safe_open(str(file), framework="pt") as handle:
            if key not in handle.keys():
                missing.append(key)
                continue
            tensors[key] = handle.get_tensor(key)
    if missing:
        raise KeyError(f"{folder}: the saved verifier has no tensor(s) {missing}")
    return tensors
