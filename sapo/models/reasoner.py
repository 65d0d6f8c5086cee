"""ORPOReasoner: the reasoner as a LightningModule, trained with ORPO, or plain SFT without rejected sides."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sapo.models.backbone import BackboneSpec
from sapo.models.losses import chunked_labelled_logprob, orpo_loss, sequence_logprob
from sapo.models.schedule import adamw_with_linear_warmup_decay

__all__ = ["ORPOReasoner", "PAIR_TERMS", "decoder_and_head"]

#: logged terms that exist only for rows with a rejected side, so they are averaged over those rows; the
#: others (``nll``, ``chosen_logp``) are averaged over every row of a batch
PAIR_TERMS = ("or_loss", "log_odds_ratio", "rejected_logp", "reward_accuracy")

#: transformers causal LMs whose logits are exactly ``lm_head(model(...).last_hidden_state)``: no logit
#: scale or softcapping (subclasses are not included: they may change forward)
HEAD_ON_HIDDEN_STATES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The decoder (token ids to last hidden states, final norm included) and the LM head of ``model``,
    a transformers causal LM or a peft LoRA model around one; ``None`` where logits are not just the head
    applied to the decoder's output (other architectures, softcapping, prompt-learning adapters)."""
    if hasattr(model, "get_base_model"):  # peft
        peft_config = getattr(model, "active_peft_config", None)
        if peft_config is None or getattr(peft_config, "is_prompt_learning", True):
            return None
        model = model.get_base_model()
    cls = type(model)
    if cls.__name__ not in HEAD_ON_HIDDEN_STATES or not cls.__module__.startswith("transformers."):
        return None
    config = model.config
    if any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None:
        return None
    return decoder, head


class ORPOReasoner(L.LightningModule):
    """A causal LM trained on preference pairs with ORPO; pairs without a rejected side train as SFT.

    Logged under ``train/`` (every step) and ``val/`` (epoch means): ``loss``; ``nll``, the mean negative
    token-averaged log-probability of the chosen sides; ``chosen_logp``; and, over the pairs that have a
    rejected side, ``or_loss`` (``-log sigmoid(log odds ratio)``), ``log_odds_ratio``, ``rejected_logp`` and
    ``reward_accuracy``, the share of pairs whose chosen side is more likely than the rejected one (log odds
    ratio > 0). Epoch means weight each batch by its rows, or by its pairs for the pair terms, so they equal
    the means over all rows (pairs) of the epoch.

    Args:
        backbone: which model to load and how (dtype, LoRA, 4-bit, gradient checkpointing).
        orpo_weight: lambda of ORPO's odds-ratio term; 0.1 is ORPO's and SIPF's best value.
        learning_rate: peak learning rate of AdamW; 8e-5 is SIPF's public ORPO setting.
        weight_decay: AdamW weight decay (SIPF: 0.01 for the verifier; ORPO's TRL default 0.0).
        warmup_ratio: share of the optimisation steps spent warming up linearly (SIPF: 0.1), after which
            the rate decays linearly to 0 (SIPF's linear schedule).
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        orpo_weight: float = 0.1,
        learning_rate: float = 8e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        if orpo_weight < 0:
            raise ValueError(f"orpo_weight must be >= 0, got {orpo_weight}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.save_hyperparameters()
        self.backbone_spec = backbone
        # Loaded here, not in configure_model: the DataModule needs the tokenizer during its setup.
        self.model, self.tokenizer = backbone.load()
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes as they are

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def sequence_logprob(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Token-averaged log-probability of each row's labelled tokens on ``side`` ("chosen"/"rejected").

        Where the model is a plain decoder followed by its LM head (:func:`decoder_and_head`), the head runs
        only at labelled positions, in chunks (:func:`chunked_labelled_logprob`); otherwise from the full
        logits (:func:`sequence_logprob`). Both give the same values and gradients.
        """
        input_ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        parts = decoder_and_head(self.model)
        if parts is None:
            logp, _ = sequence_logprob(self(input_ids, mask), batch[f"{side}_labels"])
            return logp
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logp, _ = chunked_labelled_logprob(hidden, head, batch[f"{side}_labels"])
        return logp

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen = self.sequence_logprob(batch, "chosen")
        if "rejected_input_ids" not in batch:
            nll = -chosen.mean()
            return nll, {"nll": nll.detach(), "chosen_logp": chosen.mean().detach()}
        rejected = self.sequence_logprob(batch, "rejected")
        return orpo_loss(chosen, rejected, self.hparams.orpo_weight, batch["has_rejected"])

    def log_terms(
        self, stage: str, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> None:
        """Log the loss and its terms under ``stage/``; pair terms weigh a batch by its pairs, not its rows."""
        rows = batch["chosen_input_ids"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=rows)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items() if k not in PAIR_TERMS}, batch_size=rows)
        pairs = int(batch["has_rejected"].sum()) if "has_rejected" in batch else 0
        if pairs:
            self.log_dict({f"{stage}/{k}": v for k, v in terms.items() if k in PAIR_TERMS}, batch_size=pairs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, terms = self.loss(batch)
        self.log_terms("train", loss, terms, batch)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, terms = self.loss(batch)
        self.log_terms("val", loss, terms, batch)

    def configure_optimizers(self) -> Any:
        return adamw_with_linear_warmup_decay(
            (p for p in self.model.parameters() if p.requires_grad),
            learning_rate=self.hparams.learning_rate,
            weight_decay=self.hparams.weight_decay,
            warmup_ratio=self.hparams.warmup_ratio,
            total_steps=self.trainer.estimated_stepping_batches,
        )

    def save_pretrained(self, path: str | os.PathLike[str], merge_lora: bool = True) -> Path:
        """Save the model and tokenizer as a plain transformers checkpoint (what the loop's next phases, vLLM
        and any other tool load). LoRA adapters are merged into a copy (the module keeps its adapters);
        ``merge_lora=False`` saves the adapter alone, for peft to load on top of the base model."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self.model
        if merge_lora and hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path
