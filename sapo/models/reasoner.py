"""The reasoner as a LightningModule: ORPOReasoner (ORPO, or plain SFT without rejected sides) and
DPOReasoner (DPO against a frozen reference)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sapo.models.backbone import BackboneSpec
from sapo.models.losses import chunked_labelled_logprob, dpo_loss, orpo_loss, sequence_logprob
from sapo.models.schedule import adamw_with_linear_warmup_decay, check_moment_dtype
from sapo.models.shared_prefix import SHARED_PREFIX_ATTENTION, shared_prefix_batch

__all__ = ["DPOReasoner", "ORPOReasoner", "PAIR_TERMS", "decoder_and_head", "freeze_token_embeddings"]

#: logged terms that exist only for rows with a rejected side, so they are averaged over those rows; the
#: others (``nll``, ``chosen_logp``) are averaged over every row of a batch
PAIR_TERMS = (
    "or_loss",
    "log_odds_ratio",
    "rejected_logp",
    "reward_accuracy",
    "dpo_loss",
    "chosen_reward",
    "rejected_reward",
    "reward_margin",
)

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


def freeze_token_embeddings(model: torch.nn.Module) -> int:
    """Stop training the token embeddings of ``model`` and its output head (one matrix when tied, as in
    SmolLM2, Llama 3.2 1B, Qwen2.5 0.5B); returns how many parameters that froze (0 where they were frozen
    already, as under LoRA). The optimizer then keeps no gradient and no moments for them."""
    frozen = 0
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        for parameter in layer.parameters() if layer is not None else ():
            if parameter.requires_grad:  # a tied matrix is frozen on its first visit, so counted once
                frozen += parameter.numel()
                parameter.requires_grad_(False)
    return frozen


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
        train_embeddings: train the token embeddings and the output head with the rest (the papers' full
            fine-tuning). Off (:func:`freeze_token_embeddings`): a deviation for memory; with a tied head
            the optimizer holds no gradient and no AdamW moments for the vocabulary's matrix (for
            SmolLM2-135M: 28M of 135M parameters, 0.32 GiB) and skips that matrix's weight gradient.
            Nothing changes under LoRA, where they are frozen already.
        moment_dtype: how AdamW stores its two moments: ``float32`` (as the float32 master weights; torch's
            and the papers' AdamW) or ``bfloat16``, a deviation for memory: half the optimizer state (for
            SmolLM2-135M, 0.5 GiB less), stochastically rounded
            (:class:`~sapo.models.optim.BFloat16MomentAdamW`), at a slower optimizer step.
        shared_prefix: compute both sides of a pair in one pass, the tokens they share (the prompt, and any
            first steps they have in common) once (:mod:`sapo.models.shared_prefix`): the same
            log-probabilities and gradients, up to rounding, for fewer tokens. It applies where the model is
            a plain decoder and head (:func:`decoder_and_head`) whose attention takes a custom mask (sdpa,
            eager, sapo_grouped_eager); elsewhere, and when off, each side has its own pass.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        orpo_weight: float = 0.1,
        learning_rate: float = 8e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        train_embeddings: bool = True,
        moment_dtype: str = "float32",
        shared_prefix: bool = True,
    ) -> None:
        super().__init__()
        if orpo_weight < 0:
            raise ValueError(f"orpo_weight must be >= 0, got {orpo_weight}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        check_moment_dtype(moment_dtype)  # before the model loads
        self.save_hyperparameters()
        self.backbone_spec = backbone
        # Loaded here, not in configure_model: the DataModule needs the tokenizer during its setup.
        self.model, self.tokenizer = backbone.load()
        if not train_embeddings:
            freeze_token_embeddings(self.model)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes as they are

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def sequence_logprob(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Token-averaged log-probability of each row's labelled tokens on ``side`` ("chosen"/"rejected").

        Where the model is a plain decoder followed by its LM head (:func:`decoder_and_head`), the head runs
        only at labelled positions, in chunks (:func:`chunked_labelled_logprob`); otherwise from the full
        logits (:func:`sequence_logprob`). Both give the same values and gradients.
        """
        return self._logprob_and_count(self.model, batch, side)[0]

    def _logprob_and_count(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], side: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sequence_logprob` of ``model`` (the policy, or DPO's reference), with each row's count of
        labelled tokens."""
        input_ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        parts = decoder_and_head(model)
        if parts is None:
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            return sequence_logprob(logits, batch[f"{side}_labels"])
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        return chunked_labelled_logprob(hidden, head, batch[f"{side}_labels"])

    def rejected_logprob_and_count(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_logprob_and_count` of the rejected sides, one entry per row of the batch. The batch holds
        rejected sides only for the rows flagged in ``has_rejected``
        (:class:`~sapo.data.preference.PairCollator`), so only those are computed; the other rows get 0,
        which the losses leave out through the same flags."""
        return self._by_row(batch, *self._logprob_and_count(model, batch, "rejected"))

    def _by_row(
        self, batch: dict[str, torch.Tensor], logp: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The flagged rows' values ``logp``, ``count`` [n] spread over the batch's rows [B], 0 elsewhere."""
        has_rejected = batch["has_rejected"].to(logp.device)
        return (
            logp.new_zeros(has_rejected.shape).masked_scatter(has_rejected, logp),
            count.new_zeros(has_rejected.shape).masked_scatter(has_rejected, count),
        )

    def pair_logprobs(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(chosen, chosen_count, rejected, rejected_count)`` of a batch with rejected sides: each side's
        :meth:`_logprob_and_count` of ``model``, one entry per row (:meth:`rejected_logprob_and_count`).

        With ``shared_prefix``, and a model that allows it, one pass over the joint layout of
        :func:`~sapo.models.shared_prefix.shared_prefix_batch`; otherwise one pass per side."""
        parts = decoder_and_head(model) if self.hparams.shared_prefix else None
        implementation = getattr(parts[0].config, "_attn_implementation", None) if parts else None
        if parts is None or implementation not in SHARED_PREFIX_ATTENTION:
            chosen, chosen_count = self._logprob_and_count(model, batch, "chosen")
            return chosen, chosen_count, *self.rejected_logprob_and_count(model, batch)
        decoder, head = parts
        joint = shared_prefix_batch(
            batch["chosen_input_ids"],
            batch["chosen_attention_mask"],
            batch["rejected_input_ids"],
            batch["rejected_attention_mask"],
            batch["has_rejected"],
        )
        mask = joint.attention_mask(implementation, decoder.get_input_embeddings().weight.dtype)
        hidden = decoder(
            input_ids=joint.input_ids, attention_mask=mask, position_ids=joint.position_ids, use_cache=False
        ).last_hidden_state
        chosen, chosen_count = chunked_labelled_logprob(
            hidden[:, : joint.chosen_width], head, batch["chosen_labels"]
        )
        rejected_hidden = hidden[joint.rejected_rows[:, None], joint.rejected_index]
        rejected = chunked_labelled_logprob(rejected_hidden, head, batch["rejected_labels"])
        return chosen, chosen_count, *self._by_row(batch, *rejected)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "rejected_input_ids" not in batch:
            chosen = self.sequence_logprob(batch, "chosen")
            nll = -chosen.mean()
            return nll, {"nll": nll.detach(), "chosen_logp": chosen.mean().detach()}
        chosen, _, rejected, _ = self.pair_logprobs(self.model, batch)
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
            moment_dtype=self.hparams.moment_dtype,
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


class DPOReasoner(ORPOReasoner):
    """A causal LM trained on preference pairs with DPO (:func:`~sapo.models.losses.dpo_loss`) against a
    frozen reference; rows without a rejected side carry no loss unless ``sft_weight > 0``.

    Logged under ``train/`` and ``val/`` as :class:`ORPOReasoner` logs: ``loss``; over every row ``nll`` (the
    chosen sides' token-averaged negative log-likelihood, the SFT term) and ``chosen_logp``; over the pairs
    ``dpo_loss`` (the preference term), ``chosen_reward`` and ``rejected_reward`` (``beta * (log pi - log
    pi_ref)`` of summed log-probabilities), ``reward_margin`` (their difference) and ``reward_accuracy`` (the
    share of pairs whose chosen reward is the higher).

    The reference ``pi_ref`` is the policy as loaded, before any training. For a peft LoRA model it is the
    same model with its adapter disabled, so no copy is made; otherwise ``reference_model`` is a frozen copy
    made here: no gradients, always in eval mode, moved to the device with the module, never optimised
    (:meth:`configure_optimizers` takes ``self.model``'s parameters) and not saved by :meth:`save_pretrained`.
    Its log-probabilities are computed without gradient at every step.

    Args:
        backbone: which model to load and how (dtype, LoRA, 4-bit, gradient checkpointing).
        beta: scale of DPO's implicit reward; 0.1 is the DPO paper's and TRL's default.
        sft_weight: weight of the chosen sides' NLL added to the loss (RPO, Pang et al. 2024, weigh it 1);
            0 is DPO's own loss.
        learning_rate: peak learning rate of AdamW; DPO's own setting (Rafailov et al. 2023: 1e-6 with a
            batch of 64).
        weight_decay: AdamW weight decay (TRL's default 0.0).
        warmup_ratio: share of the optimisation steps spent warming up linearly, after which the rate
            decays linearly to 0, as :class:`ORPOReasoner` (0.1: SIPF's).
        train_embeddings: train the token embeddings and the output head, as :class:`ORPOReasoner`; the
            reference is the policy as loaded either way.
        moment_dtype: how AdamW stores its moments, as :class:`ORPOReasoner`.
        shared_prefix: both sides of a pair in one pass, for the policy and the reference, as
            :class:`ORPOReasoner`.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        beta: float = 0.1,
        sft_weight: float = 0.0,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        train_embeddings: bool = True,
        moment_dtype: str = "float32",
        shared_prefix: bool = True,
    ) -> None:
        # checked before the model loads; dpo_loss checks them again
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
        super().__init__(
            backbone,
            orpo_weight=0.0,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_ratio=warmup_ratio,
            train_embeddings=train_embeddings,
            moment_dtype=moment_dtype,
            shared_prefix=shared_prefix,
        )
        # drops ORPO's weight, which DPOReasoner does not take (load_from_checkpoint passes hparams back)
        self.save_hyperparameters(ignore="orpo_weight")
        self.reference_model: torch.nn.Module | None = None
        if not hasattr(self.model, "disable_adapter"):  # peft models disable their adapter instead
            self.reference_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> DPOReasoner:
        super().train(mode)
        if self.reference_model is not None:  # pi_ref is fixed: no dropout, whatever the module's mode
            self.reference_model.eval()
        return self

    def _with_reference(self, compute: Callable[[torch.nn.Module], Any]) -> Any:
        """``compute(model)`` under the reference, without gradient: the frozen copy, or the policy with its
        adapter disabled."""
        with torch.no_grad():
            if self.reference_model is not None:
                return compute(self.reference_model)
            with self.model.disable_adapter():
                return compute(self.model)

    def reference_logprob(self, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
        """Summed log-probability of each row's labelled tokens on ``side`` under the reference, without
        gradient (0 for the rows without a rejected side, on that side)."""
        if side == "rejected":
            mean, count = self._with_reference(lambda model: self.rejected_logprob_and_count(model, batch))
        else:
            mean, count = self._with_reference(lambda model: self._logprob_and_count(model, batch, side))
        return mean * count

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "rejected_input_ids" not in batch:  # times 0 when sft_weight is 0: a zero with a graph
            chosen, _ = self._logprob_and_count(self.model, batch, "chosen")
            nll = -chosen.mean()
            return self.hparams.sft_weight * nll, {"nll": nll.detach(), "chosen_logp": chosen.mean().detach()}
        chosen, chosen_count, rejected, rejected_count = self.pair_logprobs(self.model, batch)
        nll = -chosen.mean()
        row_terms = {"nll": nll.detach(), "chosen_logp": chosen.mean().detach()}
        ref_chosen, ref_chosen_count, ref_rejected, ref_rejected_count = self._with_reference(
            lambda model: self.pair_logprobs(model, batch)
        )
        loss, terms = dpo_loss(
            chosen * chosen_count,
            rejected * rejected_count,
            ref_chosen * ref_chosen_count,
            ref_rejected * ref_rejected_count,
            beta=self.hparams.beta,
            has_rejected=batch["has_rejected"],
            chosen_nll=nll,
            sft_weight=self.hparams.sft_weight,
        )
        return loss, terms | row_terms
