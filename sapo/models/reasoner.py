"""ORPOReasoner: the reasoner as a LightningModule, trained with ORPO, or plain SFT without rejected sides."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from sapo.models.backbone import BackboneSpec
from sapo.models.losses import orpo_loss, sequence_logprob

__all__ = ["ORPOReasoner"]


class ORPOReasoner(L.LightningModule):
    """A causal LM trained on preference pairs with ORPO; pairs without a rejected side train as SFT.

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
        logits = self(batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"])
        logp, _ = sequence_logprob(logits, batch[f"{side}_labels"])
        return logp

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen = self.sequence_logprob(batch, "chosen")
        if "rejected_input_ids" not in batch:
            nll = -chosen.mean()
            return nll, {"nll": nll.detach(), "chosen_logp": chosen.mean().detach()}
        rejected = self.sequence_logprob(batch, "rejected")
        return orpo_loss(chosen, rejected, self.hparams.orpo_weight, batch["has_rejected"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, terms = self.loss(batch)
        size = batch["chosen_input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, terms = self.loss(batch)
        size = batch["chosen_input_ids"].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=size)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_ratio * total)

        def linear_warmup_decay(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def save_pretrained(self, path: str) -> None:
        """Save the backbone (and adapters) and tokenizer so transformers (or peft) loads them."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
