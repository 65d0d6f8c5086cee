"""ORPOReasoner on the tiny random model: its loss against a float64 hand computation, and what it logs."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sapo.data.preference import IGNORE_INDEX, PairCollator, PreferencePair
from sapo.models import TINY_RANDOM, BackboneSpec
from sapo.models.losses import orpo_loss
from sapo.models.reasoner import ORPOReasoner

#: the token the crafted model is almost sure of (any id of the vocabulary will do)
SURE_TOKEN = 1000


@pytest.fixture
def reasoner(sapo_cache_dir) -> ORPOReasoner:
    """The tiny random model (2 layers, hidden 64, float32) as an ORPOReasoner that never changes weights."""
    return ORPOReasoner(
        BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir), learning_rate=0.0
    )


def make_sure_of(reasoner: ORPOReasoner, token: int = SURE_TOKEN, probability_gap: float = 1e-6) -> None:
    """Add a constant to one token's logit at every position, so the model gives it ``p ≈ 1 - gap``.

    With vocabulary size V and roughly equal other logits, ``1 - p ≈ V * exp(-bias)``.
    """
    vocab = reasoner.model.config.vocab_size
    bias = torch.zeros(vocab)
    bias[token] = math.log(vocab) - math.log(probability_gap)
    reasoner.model.get_output_embeddings().register_forward_hook(lambda module, args, output: output + bias)


def side(rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """A right-padded side of a batch from ``(token ids, prompt length)`` rows; prompt tokens unlabelled."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (ids, prompt_length) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _quiet_trainer(**options) -> L.Trainer:
    """A CPU trainer that writes nothing: no logger, checkpoint, progress bar or model summary."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def crafted_batch(chosen, rejected, has_rejected) -> dict[str, torch.Tensor]:
    """A batch laid out as :class:`PairCollator` lays it out: rejected sides only for flagged rows."""
    batch = {f"chosen_{k}": v for k, v in side(chosen).items()}
    flagged = [r for r, h in zip(rejected, has_rejected, strict=True) if h]
    if flagged:
        batch.update({f"rejected_{k}": v for k, v in side(flagged).items()})
    batch["has_rejected"] = torch.tensor(has_rejected)
    return batch


def hand_logps(reasoner: ORPOReasoner, batch: dict[str, torch.Tensor], name: str) -> list[float]:
    """Mean log-probability of each row's labelled tokens, from the model's logits in float64.

    ``log p(y_t) = z_{t-1}[y_t] - log sum_v exp(z_{t-1}[v])``: the logits one position earlier predict y_t.
    """
    with torch.no_grad():
        logits = reasoner(batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"]).double()
    labels = batch[f"{name}_labels"]
    means = []
    for row in range(labels.shape[0]):
        token_logps = [
            (logits[row, t - 1, labels[row, t]] - torch.logsumexp(logits[row, t - 1], 0)).item()
            for t in range(1, labels.shape[1])
            if labels[row, t] != IGNORE_INDEX
        ]
        means.append(math.fsum(token_logps) / len(token_logps))
    return means


def hand_orpo(chosen: list[float], rejected: list[float], has_rejected: list[bool], weight: float = 0.1):
    """ORPO's loss and logged terms with plain float64 math: odds = p / (1 - p). ``rejected`` holds the
    flagged rows' rejected sides only, in row order (the collated layout)."""

    def log_odds(logp: float) -> float:
        return logp - math.log(1 - math.exp(logp))

    pairs = list(zip([c for c, h in zip(chosen, has_rejected, strict=True) if h], rejected, strict=True))
    ratios = [log_odds(c) - log_odds(r) for c, r in pairs]
    log_sigmoids = [-math.log1p(math.exp(-x)) for x in ratios]
    nll = -sum(chosen) / len(chosen)
    return nll - weight * sum(log_sigmoids) / len(pairs), {
        "nll": nll,
        "log_odds_ratio": sum(ratios) / len(pairs),
        "chosen_logp": sum(chosen) / len(chosen),
        "rejected_logp": sum(r for _, r in pairs) / len(pairs),
        "reward_accuracy": sum(c > r for c, r in pairs) / len(pairs),
    }


def test_loss_matches_hand_computation_on_collated_pairs(reasoner):
    collate = PairCollator(reasoner.tokenizer, "\n", max_length=64)
    batch = collate(
        [
            PreferencePair(
                "a", "Q: 2+3?\n", ["2 + 3 = 5", "The answer is 5"], ["2 + 3 = 6", "The answer is 6"]
            ),
            PreferencePair("b", "Q: 7-1?\n", ["The answer is 6"], ["7 - 1 = 8", "so 8", "The answer is 8"]),
            PreferencePair("c", "Q: 1?\n", ["The answer is 1"]),
        ]
    )
    chosen, rejected = hand_logps(reasoner, batch, "chosen"), hand_logps(reasoner, batch, "rejected")
    expected, terms = hand_orpo(chosen, rejected, [True, True, False])
    with torch.no_grad():
        loss, logged = reasoner.loss(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for name, value in terms.items():
        # log_odds_ratio is a difference of two numbers near -11 computed in float32 (spacing about 1e-6)
        assert logged[name].item() == pytest.approx(value, rel=1e-5, abs=1e-5), name


def test_rows_without_rejected_side_get_no_rejected_pass_and_the_same_gradient(reasoner):
    """Rejected sides are computed for flagged rows only: the loss and every gradient equal those of ORPO on
    rejected log-probabilities computed for every row (the unflagged rows' entries are left out anyway)."""
    make_sure_of(reasoner)
    sure, unsure, other = ([7, 8, SURE_TOKEN, SURE_TOKEN], 2), ([7, 8, 21, 22, 23], 2), ([7, 31, 32], 1)
    batch = crafted_batch(
        [sure, unsure, unsure, sure], [unsure, other, other, other], [True, False, True, False]
    )
    assert batch["rejected_input_ids"].shape[0] == 2
    trainable = [p for p in reasoner.model.parameters() if p.requires_grad]

    def gradients(loss):
        reasoner.model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in trainable]

    loss, _ = reasoner.loss(batch)
    grads = gradients(loss)
    every_row = crafted_batch([sure, unsure, unsure, sure], [unsure, other, other, other], [True] * 4)
    chosen = reasoner.sequence_logprob(every_row, "chosen")
    rejected = reasoner.sequence_logprob(every_row, "rejected")
    reference, _ = orpo_loss(chosen, rejected, 0.1, batch["has_rejected"])
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for grad, expected in zip(grads, gradients(reference), strict=True):
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-6)
    assert any(g.abs().max() > 0 for g in grads)


def test_a_rejected_side_marked_at_its_first_error_is_compared_from_there(reasoner):
    collate = PairCollator(reasoner.tokenizer, "\n", max_length=64)
    rejected = ["7 - 1 = 6", "6 * 2 = 13", "The answer is 13"]
    pairs = [PreferencePair("a", "Q: (7-1)*2?\n", ["7 - 1 = 6", "6 * 2 = 12", "The answer is 12"], rejected)]
    whole = collate(pairs)
    pairs[0].rejected_first_error = 1
    marked = collate(pairs)
    rejected_whole, rejected_marked = (
        hand_logps(reasoner, whole, "rejected"),
        hand_logps(reasoner, marked, "rejected"),
    )
    assert rejected_marked != pytest.approx(rejected_whole, rel=1e-3)  # the right first step is left out
    expected, terms = hand_orpo(hand_logps(reasoner, marked, "chosen"), rejected_marked, [True])
    with torch.no_grad():
        loss, logged = reasoner.loss(marked)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logged["rejected_logp"].item() == pytest.approx(terms["rejected_logp"], rel=1e-5)


def test_chosen_only_batch_is_plain_sft(reasoner):
    collate = PairCollator(reasoner.tokenizer, "\n", max_length=64)
    batch = collate(
        [PreferencePair("a", "Q\n", ["x = 1", "The answer is 1"]), PreferencePair("b", "Q\n", ["y"])]
    )
    chosen = hand_logps(reasoner, batch, "chosen")
    with torch.no_grad():
        loss, logged = reasoner.loss(batch)
    assert loss.item() == pytest.approx(-sum(chosen) / 2, rel=1e-5)
    assert set(logged) == {"nll", "chosen_logp"}


@pytest.mark.parametrize("rejected_sure", [False, True])
def test_loss_stays_exact_when_the_chosen_side_is_almost_certain(reasoner, rejected_sure):
    make_sure_of(reasoner)
    sure = [7, 8, 9] + [SURE_TOKEN] * 6
    other = [7, 8, 9, 11, 12, SURE_TOKEN, 13] if not rejected_sure else [7, 8, 9, SURE_TOKEN, SURE_TOKEN, 14]
    batch = crafted_batch([(sure, 3)], [(other, 3)], [True])
    chosen, rejected = hand_logps(reasoner, batch, "chosen"), hand_logps(reasoner, batch, "rejected")
    assert -1e-5 < chosen[0] < -1e-7  # p is within about 1e-6 of 1
    expected, terms = hand_orpo(chosen, rejected, [True])
    loss, logged = reasoner.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in reasoner.model.parameters() if p.grad is not None)
    assert logged["chosen_logp"].item() == pytest.approx(chosen[0], rel=1e-4)
    assert logged["log_odds_ratio"].item() == pytest.approx(terms["log_odds_ratio"], rel=1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_logged_metrics_under_train_and_val(reasoner):
    make_sure_of(reasoner)
    sure, unsure = ([7, 8, SURE_TOKEN, SURE_TOKEN, SURE_TOKEN], 2), ([7, 8, 21, 22, 23, 24], 2)
    # pair 0: the chosen side is the likely one; pair 1: the rejected side is; row 2 has no rejected side
    train_batch = crafted_batch([sure, unsure, unsure], [unsure, sure, unsure], [True, True, False])
    # validation: 4 rows with 1 pair the chosen side wins, then 2 rows with 2 pairs it loses
    val_batches = [
        crafted_batch(
            [sure, unsure, unsure, sure], [unsure, unsure, unsure, sure], [True, False, False, False]
        ),
        crafted_batch([unsure, unsure], [sure, sure], [True, True]),
    ]

    def hand(batch):
        chosen, rejected = hand_logps(reasoner, batch, "chosen"), hand_logps(reasoner, batch, "rejected")
        return chosen, rejected, hand_orpo(chosen, rejected, batch["has_rejected"].tolist())

    train_loss, train_terms = hand(train_batch)[2]
    assert train_terms["reward_accuracy"] == 0.5
    (chosen_a, rejected_a, (loss_a, terms_a)), (chosen_b, rejected_b, (loss_b, terms_b)) = map(
        hand, val_batches
    )
    chosen, rejected = chosen_a + chosen_b, rejected_a + rejected_b
    val_loss = (4 * loss_a + 2 * loss_b) / 6  # batch losses weighted by rows
    val_terms = {  # means over all rows, or over all pairs
        "nll": -sum(chosen) / 6,
        "chosen_logp": sum(chosen) / 6,
        "log_odds_ratio": (terms_a["log_odds_ratio"] + 2 * terms_b["log_odds_ratio"]) / 3,
        "rejected_logp": sum(rejected) / 3,
        "reward_accuracy": 1 / 3,
    }

    trainer = _quiet_trainer(max_steps=1, num_sanity_val_steps=0)
    trainer.fit(
        reasoner,
        train_dataloaders=DataLoader([train_batch], batch_size=None),
        val_dataloaders=DataLoader(val_batches, batch_size=None),
    )
    metrics = trainer.callback_metrics
    for stage, loss, terms in (("train", train_loss, train_terms), ("val", val_loss, val_terms)):
        assert metrics[f"{stage}/loss"].item() == pytest.approx(loss, rel=1e-5)
        for name, value in terms.items():
            assert metrics[f"{stage}/{name}"].item() == pytest.approx(value, rel=1e-4, abs=1e-6), (
                f"{stage}/{name}"
            )


def test_save_pretrained_merges_lora_into_a_plain_checkpoint_and_keeps_the_adapters(sapo_cache_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from sapo.models.backbone import LoraSettings

    module = ORPOReasoner(
        BackboneSpec(
            TINY_RANDOM,
            dtype="float32",
            cache_dir=sapo_cache_dir,
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        )
    )
    with torch.no_grad():  # move the adapters off their zero start, so merging matters
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    ids = torch.tensor([[1, 20, 30, 40]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = module(ids, mask)
    merged = module.save_pretrained(tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)
    assert hasattr(module.model, "merge_and_unload")  # the module itself still trains its adapters
    adapter = module.save_pretrained(tmp_path / "adapter", merge_lora=False)
    assert (adapter / "adapter_config.json").is_file()


@pytest.mark.parametrize("lora", [False, True], ids=["full-checkpointed", "lora"])
def test_sequence_logprob_from_labelled_chunks_matches_full_logits(sapo_cache_dir, monkeypatch, lora):
    """The head on labelled positions only, 3 at a time (chunks end mid-row), against the full logits:
    same log-probabilities and gradients, for full fine-tuning (with gradient checkpointing, as the demo
    trains) and for LoRA adapters."""
    from functools import partial

    from sapo.models import reasoner as reasoner_module
    from sapo.models.backbone import LoraSettings
    from sapo.models.losses import chunked_labelled_logprob, sequence_logprob

    spec = BackboneSpec(
        TINY_RANDOM,
        dtype="float32",
        cache_dir=sapo_cache_dir,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None,
        gradient_checkpointing=not lora,
    )
    with torch.random.fork_rng(devices=[]):  # the same adapter initialisation every run
        torch.manual_seed(0)
        module = ORPOReasoner(spec)
    with torch.no_grad():  # adapters off their zero start, so that lora_A gets a gradient too
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    assert reasoner_module.decoder_and_head(module.model) is not None
    monkeypatch.setattr(
        reasoner_module, "chunked_labelled_logprob", partial(chunked_labelled_logprob, chunk_tokens=3)
    )
    batch = crafted_batch(
        [([7, 8, 9, 10, 11, 12, 13], 2), ([7, 8, 21, 22], 1)], [([7, 8, 9], 2)] * 2, [True] * 2
    )
    weights = torch.tensor([0.6, -1.4])
    trainable = {n: p for n, p in module.model.named_parameters() if p.requires_grad}

    def run(chunked: bool):
        module.model.zero_grad(set_to_none=True)
        if chunked:
            logp = module.sequence_logprob(batch, "chosen")
        else:
            logits = module(batch["chosen_input_ids"], batch["chosen_attention_mask"])
            logp, _ = sequence_logprob(logits, batch["chosen_labels"])
        (logp * weights).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in trainable.items()}

    (full, full_grads), (chunked, grads) = run(chunked=False), run(chunked=True)
    assert torch.allclose(chunked, full, rtol=1e-6, atol=1e-6)
    assert all(g.abs().max() > 0 for g in full_grads.values())
    for name, grad in grads.items():  # float32 rounding in another order, carried back through the layers
        expected = full_grads[name]
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()), name


def test_sequence_logprob_falls_back_to_full_logits_for_softcapped_models(reasoner):
    from sapo.models.reasoner import decoder_and_head

    batch = crafted_batch([([7, 8, 9, 10], 2)], [([7, 8, 9], 2)], [True])
    expected = hand_logps(reasoner, batch, "chosen")
    reasoner.model.config.final_logit_softcapping = 30.0  # Llama ignores it; Gemma-2 would cap its logits
    assert decoder_and_head(reasoner.model) is None
    with torch.no_grad():
        assert reasoner.sequence_logprob(batch, "chosen").tolist() == pytest.approx(expected, rel=1e-5)


def _one_pair_batch() -> dict[str, torch.Tensor]:
    return crafted_batch([([7, 8, 21, 22, 23], 2)], [([7, 8, 31, 32], 2)], [True])


@pytest.mark.parametrize("train_embeddings", [True, False])
def test_frozen_token_embeddings_stay_as_loaded_and_hold_no_optimizer_state(sapo_cache_dir, train_embeddings):
    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)
    reasoner = ORPOReasoner(spec, learning_rate=1e-2, warmup_ratio=0.0, train_embeddings=train_embeddings)
    model = reasoner.model
    embeddings = model.get_input_embeddings().weight
    assert embeddings is model.get_output_embeddings().weight  # the tiny model ties them, as SmolLM2
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = _quiet_trainer(max_steps=2)
    trainer.fit(reasoner, train_dataloaders=DataLoader([_one_pair_batch()] * 2, batch_size=None))

    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    name = "model.embed_tokens.weight"
    assert (id(embeddings) in optimized) is train_embeddings
    assert (name in changed) is train_embeddings
    assert changed - {name}, "the rest of the model trains either way"
    assert len(optimized) == sum(p.requires_grad for p in model.parameters())


def test_freezing_counts_a_tied_matrix_once_an_untied_head_too_and_nothing_under_lora(sapo_cache_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sapo.models.backbone import LoraSettings
    from sapo.models.reasoner import freeze_token_embeddings

    shape = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    for tied in (True, False):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=100, tie_word_embeddings=tied, **shape))
        assert freeze_token_embeddings(model) == (1 if tied else 2) * 100 * 16
        assert not model.get_input_embeddings().weight.requires_grad
        assert not model.get_output_embeddings().weight.requires_grad
        assert all(p.requires_grad for p in model.model.layers.parameters())
        assert freeze_token_embeddings(model) == 0  # already frozen

    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir, lora=LoraSettings())
    lora = ORPOReasoner(spec, train_embeddings=True).model
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert freeze_token_embeddings(lora) == 0
    assert [name for name, p in lora.named_parameters() if p.requires_grad] == trainable


@pytest.mark.parametrize("loss", ["orpo", "dpo"])
def test_the_loop_freezes_token_embeddings_in_the_phase_whose_setting_says_so(sapo_cache_dir, loss):
    from sapo.evolution import SelfEvolution
    from sapo.evolution.settings import ORPOSettings, SFTSettings

    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)
    loop = SelfEvolution(spec, sft=SFTSettings(), orpo=ORPOSettings(loss=loss, train_embeddings=False))
    sft, round_ = loop._reasoner_module(spec, loop.sft), loop._reasoner_module(spec, loop.orpo, loss)
    assert sft.model.get_input_embeddings().weight.requires_grad
    assert not round_.model.get_input_embeddings().weight.requires_grad
    assert type(round_).__name__ == ("DPOReasoner" if loss == "dpo" else "ORPOReasoner")
    assert round_.hparams.train_embeddings is False
