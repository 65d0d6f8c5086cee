"""DPO: the loss against hand computations; DPOReasoner's reference (a frozen copy, or the model without its
LoRA adapter), training against it, and what it saves."""

from __future__ import annotations

import math
from dataclasses import replace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sapo.data.preference import IGNORE_INDEX, PairCollator, PreferencePair
from sapo.models import TINY_RANDOM, BackboneSpec, LoraSettings
from sapo.models.losses import dpo_loss
from sapo.models.reasoner import DPOReasoner, ORPOReasoner

#: two pairs and a row without a rejected side
PAIRS = [
    PreferencePair("a", "Q: 2+3?\n", ["2 + 3 = 5", "The answer is 5"], ["2 + 3 = 6", "The answer is 6"]),
    PreferencePair("b", "Q: 7-1?\n", ["The answer is 6"], ["7 - 1 = 8", "so 8", "The answer is 8"]),
    PreferencePair("c", "Q: 1?\n", ["The answer is 1"]),
]


@pytest.fixture
def spec(sapo_cache_dir) -> BackboneSpec:
    """The tiny random model (2 layers, hidden 64, float32), fully fine-tuned."""
    return BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)


def lora(spec: BackboneSpec) -> BackboneSpec:
    return replace(spec, lora=LoraSettings(r=4, alpha=8, dropout=0.0))


def pair_batch(module: DPOReasoner, pairs=PAIRS) -> dict[str, torch.Tensor]:
    return PairCollator(module.tokenizer, "\n", max_length=64)(pairs)


def summed_logp(module: DPOReasoner, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """The policy's summed log-probability of each row's labelled tokens, without gradient."""
    count = (batch[f"{side}_labels"][:, 1:] != IGNORE_INDEX).sum(-1)
    with torch.no_grad():
        return module.sequence_logprob(batch, side) * count


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_dpo_loss_matches_hand_computation(sft_weight):
    policy_chosen, policy_rejected = [-12.0, -30.5, -8.0], [-15.0, -29.0, -8.0]
    reference_chosen, reference_rejected = [-13.0, -31.0, -9.0], [-14.0, -30.0, -9.0]
    has_rejected, nll, beta = [True, True, False], 1.7, 0.1
    rows = [
        (beta * (pc - rc), beta * (pr - rr))
        for pc, pr, rc, rr, h in zip(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, has_rejected, strict=True
        )
        if h
    ]
    log_sigmoids = [math.log(1 / (1 + math.exp(-(chosen - rejected)))) for chosen, rejected in rows]
    preference = -sum(log_sigmoids) / len(rows)

    def tensor(values):
        return torch.tensor(values, dtype=torch.float64)

    loss, terms = dpo_loss(
        tensor(policy_chosen),
        tensor(policy_rejected),
        tensor(reference_chosen),
        tensor(reference_rejected),
        beta=beta,
        has_rejected=torch.tensor(has_rejected),
        chosen_nll=tensor(nll),
        sft_weight=sft_weight,
    )
    assert loss.item() == pytest.approx(preference + sft_weight * nll, rel=1e-12)
    expected = {
        "dpo_loss": preference,
        "nll": nll,
        "chosen_reward": sum(c for c, _ in rows) / len(rows),
        "rejected_reward": sum(r for _, r in rows) / len(rows),
        "reward_margin": sum(c - r for c, r in rows) / len(rows),
        "reward_accuracy": 0.5,  # pair a's chosen reward is the higher, pair b's is not
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_dpo_loss_without_pairs_is_a_zero_with_a_graph():
    policy = torch.tensor([-3.0, -4.0], requires_grad=True)
    loss, terms = dpo_loss(
        policy, policy * 2, torch.zeros(2), torch.zeros(2), has_rejected=torch.tensor([False] * 2)
    )
    assert loss.item() == 0 and terms["reward_accuracy"].item() == 0
    loss.backward()
    assert policy.grad.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "options, match",
    [({"beta": 0.0}, "beta"), ({"beta": -0.1}, "beta"), ({"sft_weight": -0.5}, "sft_weight")],
)
def test_dpo_settings_are_checked(options, match):
    logp = torch.zeros(1)
    with pytest.raises(ValueError, match=match):
        dpo_loss(logp, logp, logp, logp, chosen_nll=logp.sum(), **options)
    with pytest.raises(ValueError, match=match):  # before the model loads: this path does not exist
        DPOReasoner(BackboneSpec("/nonexistent/model"), **options)


def test_sft_weight_needs_the_chosen_nll():
    logp = torch.zeros(1)
    with pytest.raises(ValueError, match="chosen_nll"):
        dpo_loss(logp, logp, logp, logp, sft_weight=1.0)


@pytest.mark.parametrize("use_lora", [False, True], ids=["full-copy", "lora"])
def test_dpo_term_is_log_2_at_initialisation(spec, use_lora):
    """The policy is the reference before training: every reward is 0 and the DPO term is -log sigmoid(0)."""
    module = DPOReasoner(lora(spec) if use_lora else spec)
    assert (module.reference_model is None) == use_lora
    loss, terms = module.loss(pair_batch(module))
    assert terms["dpo_loss"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # sft_weight 0: DPO's own loss
    assert terms["chosen_reward"].item() == pytest.approx(0, abs=1e-6)
    assert terms["rejected_reward"].item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in module.model.parameters())
    if not use_lora:
        assert all(p.grad is None and not p.requires_grad for p in module.reference_model.parameters())


def test_lora_reference_is_the_model_without_its_adapter(spec):
    module = DPOReasoner(lora(spec))
    batch = pair_batch(module)
    base = summed_logp(module, batch, "chosen")
    with torch.no_grad():  # adapters off their zero start, so the policy leaves the base model
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    policy = summed_logp(module, batch, "chosen")
    assert not torch.allclose(policy, base, atol=1e-3)
    assert torch.allclose(module.reference_logprob(batch, "chosen"), base, rtol=1e-6)
    assert torch.equal(summed_logp(module, batch, "chosen"), policy)  # the adapter is back on
    _, terms = module.loss(batch)
    pairs = batch["has_rejected"]
    assert terms["chosen_reward"].item() == pytest.approx(
        0.1 * (policy - base)[pairs].mean().item(), rel=1e-5
    )


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_rows_without_rejected_side_train_only_through_the_sft_term(spec, sft_weight):
    module = DPOReasoner(spec, sft_weight=sft_weight)
    chosen_only = pair_batch(module, [PAIRS[2], PreferencePair("d", "Q\n", ["x = 1", "The answer is 1"])])
    assert "rejected_input_ids" not in chosen_only
    loss, terms = module.loss(chosen_only)
    mean_logp = module.sequence_logprob(chosen_only, "chosen").mean().item()
    assert set(terms) == {"nll", "chosen_logp"}
    assert terms["nll"].item() == pytest.approx(-mean_logp, rel=1e-6)
    assert loss.item() == pytest.approx(sft_weight * -mean_logp, rel=1e-6)
    loss.backward()  # a graph even when the loss is 0
    grads = [p.grad.abs().max().item() for p in module.model.parameters() if p.grad is not None]
    assert grads and (max(grads) > 0) == (sft_weight > 0)
    loss, terms = module.loss(pair_batch(module))  # with pairs: the DPO term plus the SFT term
    assert loss.item() == pytest.approx(math.log(2) + sft_weight * terms["nll"].item(), rel=1e-6)


def test_training_moves_the_policy_towards_chosen_sides_and_leaves_the_reference(spec):
    torch.manual_seed(0)
    module = DPOReasoner(spec, learning_rate=1e-3, warmup_ratio=0.0)
    batch = pair_batch(module)
    reference_before = {k: v.clone() for k, v in module.reference_model.state_dict().items()}
    policy_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    with torch.no_grad():
        _, before = module.loss(batch)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 5, batch_size=None))
    module.train()
    assert module.model.training and not module.reference_model.training
    reference_after = module.reference_model.state_dict()
    assert all(torch.equal(reference_after[k], v) for k, v in reference_before.items())
    policy_after = module.model.state_dict()
    assert any(not torch.equal(policy_after[k], v) for k, v in policy_before.items())
    with torch.no_grad():
        _, after = module.loss(batch)
    assert after["reward_margin"].item() > before["reward_margin"].item() + 1e-3
    assert after["dpo_loss"].item() < math.log(2)
    logged = {f"train/{name}" for name in ("dpo_loss", "chosen_reward", "rejected_reward", "reward_margin")}
    assert logged <= set(trainer.callback_metrics)


def test_hparams_are_dpo_reasoners_own(spec):
    """load_from_checkpoint passes the hyperparameters back to __init__: ORPO's weight must not be there."""
    module = DPOReasoner(spec, beta=0.2, sft_weight=1.0)
    assert dict(module.hparams) == {
        "backbone": spec,
        "beta": 0.2,
        "sft_weight": 1.0,
        "learning_rate": 1e-6,
        "weight_decay": 0.0,
        "warmup_ratio": 0.1,
        "train_embeddings": True,
        "moment_dtype": "float32",
        "shared_prefix": True,
    }


def test_save_pretrained_writes_the_policy_alone(spec, tmp_path):
    from transformers import AutoModelForCausalLM

    module = DPOReasoner(spec)
    with torch.no_grad():  # the policy leaves the reference
        for parameter in module.model.parameters():
            parameter.add_(0.01)
    saved = module.save_pretrained(tmp_path / "dpo")
    orpo = ORPOReasoner(spec).save_pretrained(tmp_path / "orpo")
    sizes = {f.name: f.stat().st_size for f in saved.iterdir()}
    assert sizes == {f.name: f.stat().st_size for f in orpo.iterdir()}  # one model's weights, no more
    ids = torch.tensor([[1, 20, 30, 40]])
    mask = torch.ones_like(ids)
    plain = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids, attention_mask=mask).logits, module(ids, mask), atol=1e-5)


def test_rejected_sides_are_computed_for_the_flagged_rows_only(spec):
    """The batch holds the two pairs' rejected sides alone; each row's entry is its own pair's (row 2: 0,
    left out of the loss through ``has_rejected``)."""
    module = DPOReasoner(spec)
    batch = pair_batch(module)
    assert batch["rejected_input_ids"].shape[0] == 2 and batch["has_rejected"].tolist() == [True, True, False]
    reference = module.reference_logprob(batch, "rejected")
    assert reference.shape == (3,) and reference[2].item() == 0
    for row in (0, 1):  # before training the policy is the reference
        alone = summed_logp(module, pair_batch(module, [PAIRS[row]]), "rejected")
        assert reference[row].item() == pytest.approx(alone.item(), rel=1e-5)
        assert reference[row].item() < 0
