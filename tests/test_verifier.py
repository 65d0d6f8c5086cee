"""The PRM verifier: losses, the head's positions, scoring, a short fit, saving for transformers, metrics."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForTokenClassification

from sapo.data.prm import PRMDataModule
from sapo.data.trajectory import Trajectory, write_jsonl
from sapo.models import TINY_RANDOM, BackboneSpec, LoraSettings
from sapo.models.schedule import (
    adamw_with_linear_warmup_decay,
    linear_warmup_decay,
    linear_warmup_decay_scheduler,
)
from sapo.models.verifier import PRMVerifier, fill_unplaced_scores, gather_steps, step_loss
from sapo.models.verifier_metrics import (
    FirstErrorAccuracy,
    ProcessBenchF1,
    choose_threshold,
    detection_accuracy,
    first_error_indices,
    first_error_prediction,
    processbench_f1,
    step_auroc,
    threshold_candidates,
)
from sapo.supervision.protocols import StepScorer

# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def verifier(sapo_cache_dir) -> PRMVerifier:
    torch.manual_seed(0)
    return PRMVerifier(BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir))


@pytest.fixture
def lora_verifier(sapo_cache_dir) -> PRMVerifier:
    """A LoRA verifier whose adapters are non-zero (fresh LoRA B matrices are zero, hiding a missed merge)."""
    torch.manual_seed(0)
    spec = BackboneSpec(
        TINY_RANDOM, dtype="float32", lora=LoraSettings(r=4, alpha=8), cache_dir=sapo_cache_dir
    )
    verifier = PRMVerifier(spec)
    with torch.no_grad():
        for name, parameter in verifier.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    return verifier


def trajectories() -> list[Trajectory]:
    return [
        Trajectory("q1", "What is 2+3?", ["2 + 3 = 5", "The answer is 5"]),
        Trajectory("q2", "What is 7*6?", ["7 * 6 = 42", "42 + 0 = 42", "The answer is 42"]),
        Trajectory("q3", "What is 1?", ["The answer is 1"]),
    ]


def transformers_scores(path, verifier: PRMVerifier, items: list[Trajectory]) -> list[list[float]]:
    """Step scores from the saved folder through plain transformers, read at the collator's positions."""
    model = AutoModelForTokenClassification.from_pretrained(path)
    assert model.config.num_labels == 1 and not model.training
    result = []
    for trajectory in items:
        encoding = verifier.collator.encode(trajectory)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([encoding.input_ids])).logits[0, :, 0]
        result.append([torch.sigmoid(logits[p]).item() for p in encoding.positions])
    return result


# ------------------------------------------------------------------------------------------------ losses


def test_bce_on_hard_labels_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0, 9.0], [-1.0, 5.0, 5.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = -(math.log(sigmoid(0.0)) + math.log(1 - sigmoid(2.0)) + math.log(1 - sigmoid(-1.0))) / 3
    assert step_loss(logits, labels, mask, "bce").item() == pytest.approx(expected, rel=1e-6)


def test_bce_on_soft_labels_matches_hand_computation():
    logits = torch.tensor([[0.5, -2.0]])
    labels = torch.tensor([[0.25, 0.75]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    terms = [
        -(c * math.log(sigmoid(z)) + (1 - c) * math.log(1 - sigmoid(z)))
        for z, c in [(0.5, 0.25), (-2.0, 0.75)]
    ]
    assert step_loss(logits, labels, mask, "bce").item() == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_mse_on_sigmoid_outputs_matches_hand_computation():
    logits = torch.tensor([[0.0, math.log(3.0)], [7.0, 0.0]])  # σ = 0.5, 0.75 | -, 0.5
    labels = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [False, True]])
    expected = ((0.5 - 1.0) ** 2 + (0.75 - 0.5) ** 2 + (0.5 - 0.0) ** 2) / 3
    assert step_loss(logits, labels, mask, "mse").item() == pytest.approx(expected, rel=1e-6)


def test_loss_without_labelled_steps_is_zero_and_differentiable():
    logits = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss = step_loss(logits, torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="loss must be one of"):
        step_loss(logits, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool), "hinge")


def test_gather_steps_reads_the_given_rows():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    out = gather_steps(hidden, torch.tensor([[3, 1], [2, -1]]))
    assert torch.equal(out[0, 0], hidden[0, 3]) and torch.equal(out[0, 1], hidden[0, 1])
    assert torch.equal(out[1, 0], hidden[1, 2]) and torch.equal(out[1, 1], hidden[1, 0])


def test_fill_unplaced_scores_uses_the_step_before():
    assert fill_unplaced_scores([None, 0.3, None, 0.8, None], "t") == ([0.3, 0.3, 0.3, 0.8, 0.8], 3)
    assert fill_unplaced_scores([0.1, 0.2], "t") == ([0.1, 0.2], 0)
    with pytest.raises(ValueError, match="t: no step has a token position"):
        fill_unplaced_scores([None, None], "t")


# ---------------------------------------------------------------------------------------------- the head


def test_head_reads_the_final_hidden_state_at_step_ends(verifier):
    batch = verifier.collator.pad(
        [verifier.collator.example(t, require_labels=False) for t in trajectories()]
    )
    verifier.eval()
    with torch.no_grad():
        logits = verifier(batch["input_ids"], batch["attention_mask"], batch["step_positions"])
        full = verifier.model(
            batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    last = full.hidden_states[-1]
    for row in range(3):
        for j, position in enumerate(batch["step_positions"][row].tolist()):
            if position >= 0:
                expected = verifier.head(last[row, position]).item()
                assert logits[row, j].item() == pytest.approx(expected, abs=1e-5)


def test_tokens_after_the_last_step_end_do_not_change_scores(verifier):
    example = verifier.collator.example(trajectories()[1], require_labels=False)
    ids = torch.tensor([example.input_ids])
    positions = torch.tensor([example.positions])
    last = example.positions[-1]
    assert last == len(example.input_ids) - 1  # the last step's separator is the last token
    verifier.eval()
    with torch.no_grad():
        base = verifier(ids, torch.ones_like(ids), positions)
        extended = torch.cat([ids, torch.tensor([[1234, 567]])], dim=1)  # tokens after the last step end
        after = verifier(extended, torch.ones_like(extended), positions)
        changed = ids.clone()
        changed[0, last - 1] = (changed[0, last - 1] + 1) % verifier.tokenizer.vocab_size  # inside the step
        inside = verifier(changed, torch.ones_like(changed), positions)
    assert torch.allclose(base, after, atol=1e-6)
    assert torch.allclose(base[0, :-1], inside[0, :-1], atol=1e-6)  # earlier steps cannot see it
    assert abs(base[0, -1].item() - inside[0, -1].item()) > 1e-4  # the last step's own score does


# ------------------------------------------------------------------------------------------------- score


def test_score_gives_one_probability_per_step_independent_of_batching(verifier):
    assert isinstance(verifier, StepScorer)
    items = trajectories()
    scores = verifier.score(items)
    assert [len(s) for s in scores] == [t.num_steps for t in items]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for row in scores for v in row)
    one_by_one = verifier.score(items, batch_size=1)
    for row, single in zip(scores, one_by_one, strict=True):
        assert row == pytest.approx(single, abs=1e-5)
    assert verifier.score(items[2:])[0] == pytest.approx(scores[2], abs=1e-5)


def test_score_restores_each_module_mode(verifier):
    verifier.train()
    verifier.head.eval()  # a submodule deliberately in eval mode stays so
    verifier.score(trajectories())
    assert verifier.training and verifier.model.training and not verifier.head.training


def test_score_gives_truncated_steps_the_score_of_the_last_step_that_fits(verifier):
    trajectory = trajectories()[1]
    full = verifier.collator.encode(trajectory)
    verifier.collator.max_length = full.positions[1] + 1  # the third step no longer fits
    scores = verifier.score([trajectory])[0]
    assert len(scores) == 3 and scores[2] == scores[1]
    verifier.collator.max_length = full.positions[0]  # not even the first step fits
    with pytest.raises(ValueError, match=r"trajectory 0 \(question_id 'q2'\).*max_length"):
        verifier.score([trajectory])


def test_score_rejects_a_trajectory_without_steps(verifier):
    items = [trajectories()[0], Trajectory("empty-one", "What?", [])]
    with pytest.raises(ValueError, match=r"trajectory 1 \(question_id 'empty-one'\) has no steps"):
        verifier.score(items)


# -------------------------------------------------------------------------------------------------- fit


def toy_labelled(count: int) -> list[Trajectory]:
    """Steps saying "good" are right (1), steps saying "bad" are wrong (0), in every mix."""
    items = []
    for i in range(count):
        words = ["good" if (i >> k) & 1 else "bad" for k in range(3)]
        steps = [f"this step is {w}" for w in words]
        items.append(
            Trajectory(f"toy{i}", f"Toy question {i % 4}", steps, labels=[float(w == "good") for w in words])
        )
    return items


def dataset_loss(verifier: PRMVerifier, items: list[Trajectory]) -> float:
    batch = verifier.collator(items)
    verifier.eval()
    with torch.no_grad():
        logits = verifier(batch["input_ids"], batch["attention_mask"], batch["step_positions"])
    verifier.train()
    return step_loss(logits, batch["step_labels"], batch["step_mask"]).item()


def test_short_fit_learns_a_toy_labelling(tmp_path, sapo_cache_dir):
    L.seed_everything(0)
    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)
    verifier = PRMVerifier(spec, learning_rate=3e-3, warmup_ratio=0.1, batch_size=8)
    train = toy_labelled(16)
    data = PRMDataModule(
        str(write_jsonl(train, tmp_path / "train.jsonl")),
        str(write_jsonl(toy_labelled(8), tmp_path / "val.jsonl")),
        batch_size=8,
    )
    before = dataset_loss(verifier, train)
    trainer = L.Trainer(
        max_epochs=15,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(verifier, datamodule=data)
    after = dataset_loss(verifier, train)
    assert after < 0.5 * before
    scores = verifier.score(train)
    good = [
        s for t, row in zip(train, scores, strict=True) for s, c in zip(row, t.labels, strict=True) if c == 1
    ]
    bad = [
        s for t, row in zip(train, scores, strict=True) for s, c in zip(row, t.labels, strict=True) if c == 0
    ]
    assert min(good) > max(bad)  # it learned the labelling, not just the label mean
    metrics = trainer.callback_metrics
    for name in (
        "val/loss",
        "val/step_accuracy",
        "val/auroc",
        "val/first_error_accuracy",
        "val/processbench_f1",
    ):
        assert name in metrics
    assert metrics["val/auroc"].item() > 0.9 and metrics["val/step_accuracy"].item() > 0.9


def test_lora_verifier_trains_the_head_and_the_adapters_only(lora_verifier):
    trainable = {n for n, p in lora_verifier.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all("lora_" in n for n in trainable - {"head.weight", "head.bias"})
    batch = lora_verifier.collator(toy_labelled(2))
    logits = lora_verifier(batch["input_ids"], batch["attention_mask"], batch["step_positions"])
    step_loss(logits, batch["step_labels"], batch["step_mask"]).backward()
    assert lora_verifier.head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- saving and loading


def test_save_pretrained_loads_in_plain_transformers_with_the_same_scores(verifier, tmp_path, caplog):
    items = trajectories()
    expected = verifier.score(items)
    verifier.save_pretrained(tmp_path / "prm")
    got = transformers_scores(tmp_path / "prm", verifier, items)
    for row, other in zip(expected, got, strict=True):
        assert row == pytest.approx(other, abs=1e-5)
    with caplog.at_level(logging.WARNING):
        reloaded = PRMVerifier.from_pretrained(tmp_path / "prm", backbone_options={"dtype": "float32"})
    # the saved head is read separately: transformers' "unexpected score.*" report is not shown
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage()]
    assert reloaded.hparams.separator == verifier.hparams.separator
    for row, other in zip(expected, reloaded.score(items), strict=True):
        assert row == pytest.approx(other, abs=1e-5)


def test_reload_still_reports_missing_weights(verifier, tmp_path, caplog):
    """Only the head's unused keys are silenced: a checkpoint missing decoder weights is still reported."""
    from safetensors.torch import load_file, save_file

    verifier.save_pretrained(tmp_path / "prm")
    weights = tmp_path / "prm" / "model.safetensors"
    state = load_file(weights)
    dropped = next(k for k in state if k.endswith("q_proj.weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        PRMVerifier.from_pretrained(tmp_path / "prm", backbone_options={"dtype": "float32"})
    reports = [r.getMessage() for r in caplog.records if "LOAD REPORT" in r.getMessage()]
    assert reports and "q_proj" in reports[0]


def test_save_pretrained_merges_lora_and_keeps_the_adapters(lora_verifier, tmp_path):
    items = trajectories()
    expected = lora_verifier.score(items)
    lora_verifier.save_pretrained(tmp_path / "prm")
    assert any("lora_" in n for n, _ in lora_verifier.model.named_parameters())  # still a LoRA model
    assert lora_verifier.score(items) == expected  # saving did not touch the live weights
    got = transformers_scores(tmp_path / "prm", lora_verifier, items)
    for row, other in zip(expected, got, strict=True):
        assert row == pytest.approx(other, abs=1e-5)
    # without the merge, the saved base weights would score differently
    with lora_verifier.model.disable_adapter():
        unmerged = lora_verifier.score(items)
    assert (
        max(abs(a - b) for r, u in zip(expected, unmerged, strict=True) for a, b in zip(r, u, strict=True))
        > 1e-4
    )


def test_verifier_starts_from_a_saved_reasoner_with_a_fresh_head(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.5)  # the "trained reasoner"
    model.save_pretrained(tmp_path / "reasoner")
    tokenizer.save_pretrained(tmp_path / "reasoner")
    torch.manual_seed(1)
    first = PRMVerifier(BackboneSpec(str(tmp_path / "reasoner"), dtype="float32"))
    reasoner_state = model.model.state_dict()
    for key, value in first.model.model.state_dict().items():
        assert torch.equal(value, reasoner_state[key]), key
    torch.manual_seed(2)
    second = PRMVerifier(BackboneSpec(str(tmp_path / "reasoner"), dtype="float32"))
    assert not torch.equal(first.head.weight, second.head.weight)  # the head is new each time


# ----------------------------------------------------------------------------------------------- schedule


def test_linear_warmup_decay_matches_hand_values():
    values = [linear_warmup_decay(t, warmup_steps=2, total_steps=10) for t in (0, 1, 2, 6, 10, 11)]
    assert values == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5, 0.0, 0.0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_warmup_decay_scheduler(optimizer, total_steps=10, warmup_ratio=0.2)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1 / 3, 2 / 3, 1.0, 7 / 8])


@pytest.mark.parametrize("ratio, first_rates", [(0.1, [0.5, 1.0, 2 / 3]), (0.0, [1.0, 0.75, 0.5])])
def test_a_short_schedule_with_a_warmup_ratio_still_warms_up_one_step(ratio, first_rates):
    # 4 steps at a ratio of 0.1: floor(0.4) = 0 warm-up steps would start at the peak rate
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_warmup_decay_scheduler(optimizer, total_steps=4, warmup_ratio=ratio)
    rates = []
    for _ in range(3):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx(first_rates)


class _Line(L.LightningModule):
    """A least-squares line trained by Lightning with the loop's optimizer rule."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer, self.fused = torch.nn.Linear(4, 1), fused

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y) * 100  # large gradients: clipping acts

    def configure_optimizers(self):
        if self.fused:
            return adamw_with_linear_warmup_decay(self.parameters(), 0.1, 0.01, 0.0, 4)["optimizer"]
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.01, foreach=True)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_the_fused_adamw_takes_clipped_gradients_and_steps_as_torchs_default(precision):
    # Lightning's mixed precision refuses to clip for an optimizer that unscales inside its own step, which a
    # fused AdamW offers to do; sapo's declines, so the recipes' clipping works, and the update is AdamW's
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True) * 3), batch_size=4
    )
    weights = []
    for fused in (True, False):
        module = _Line(fused)
        trainer = L.Trainer(
            accelerator="cpu",
            precision=precision,
            gradient_clip_val=0.5,
            max_steps=4,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, data)
        weights.append(module.layer.weight.detach().clone())
        assert bool(trainer.optimizers[0].defaults["fused"]) is fused
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(weights[0], _Line(True).layer.weight)  # it trained


# ------------------------------------------------------------------------------------------------ metrics


def test_first_error_prediction_is_the_first_score_below_threshold():
    assert first_error_prediction([0.9, 0.6, 0.4, 0.1], 0.5) == 2
    assert first_error_prediction([0.9, 0.6], 0.5) == -1
    assert first_error_prediction([0.9, 0.6], 0.7) == 1
    assert first_error_prediction([0.5], 0.5) == -1  # strictly below


def test_processbench_f1_on_a_hand_made_set():
    labels = [2, 0, 1, -1, -1, -1]
    predictions = [2, 1, 1, -1, 0, -1]  # error rows: 2 of 3 exact; correct rows: 2 of 3
    result = processbench_f1(predictions, labels)
    assert result["error_accuracy"] == pytest.approx(2 / 3)
    assert result["correct_accuracy"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert (result["num_error"], result["num_correct"]) == (3, 3)
    skewed = processbench_f1([0, -1, -1], [0, -1, 2])  # error 1/2, correct 1/1
    assert skewed["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert processbench_f1([-1, -1], [1, -1])["f1"] == 0.0  # flags nothing: F1 is 0, not 0.5


def test_choose_threshold_maximises_f1():
    scores = [[0.9, 0.35, 0.2], [0.8, 0.7, 0.6], [0.45, 0.9]]
    labels = [1, -1, 0]
    assert threshold_candidates([[0.2, 0.4]]) == pytest.approx([0.2, 0.3, math.nextafter(0.4, 1)])
    tau, result = choose_threshold(scores, labels)
    assert 0.45 < tau <= 0.6 and result["f1"] == 1.0  # only (0.45, 0.6] flags rows 0 and 2 and not row 1
    tau, result = choose_threshold(scores, labels, candidates=[0.3, 0.95])
    assert tau == 0.3 and result["error_accuracy"] == 0.0  # 0.3 flags no error row correctly, 0.95 neither
    assert choose_threshold(scores, labels, candidates=[0.5])[1] == processbench_f1(
        [first_error_prediction(s, 0.5) for s in scores], labels
    )


def test_first_error_indices_respects_the_mask():
    values = torch.tensor([[0.9, 0.1, 0.2], [0.9, 0.8, 0.1], [0.9, 0.9, 0.9]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    assert first_error_indices(values, mask, 0.5).tolist() == [1, -1, -1]


def test_metric_classes_accumulate_over_padded_batches_like_the_functions():
    f1, accuracy = ProcessBenchF1(threshold=0.5), FirstErrorAccuracy(threshold=0.5)
    # batch 1: row 0 error at 1 predicted 1; row 1 correct predicted -1 (its padded step would flag 0)
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.8, 0.7, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # batch 2: soft labels; row 0's first error (0.3 < 0.5) at 0, predicted 2; row 1 correct, predicted 0
    scores2 = torch.tensor([[0.9, 0.6, 0.4], [0.1, 0.9, 0.9]])
    labels2 = torch.tensor([[0.3, 0.2, 0.1], [0.7, 0.9, 1.0]])
    mask2 = torch.ones(2, 3, dtype=torch.bool)
    for metric in (f1, accuracy):
        metric.update(scores, labels, mask)
        metric.update(scores2, labels2, mask2)
    expected = processbench_f1([1, -1, 2, 0], [1, -1, 0, -1])
    assert f1.compute_all() == expected
    assert f1.compute().item() == pytest.approx(expected["f1"]) == pytest.approx(0.5)
    assert accuracy.compute().item() == pytest.approx(2 / 4)


def test_step_auroc_equals_torchmetrics_on_rows_of_different_lengths():
    from torchmetrics.functional.classification import binary_auroc

    generator = torch.Generator().manual_seed(0)
    lengths = [3, 1, 5, 2, 4] * 8
    # scores rounded to one decimal, so that ties between a right and a wrong step occur
    scores = [(torch.rand(n, generator=generator) * 10).round().div(10).tolist() for n in lengths]
    labels = [(torch.rand(n, generator=generator) < 0.6).float().tolist() for n in lengths]
    expected = binary_auroc(torch.tensor(sum(scores, [])), torch.tensor(sum(labels, [])).long())
    assert step_auroc(scores, labels) == pytest.approx(float(expected), abs=1e-6)
    assert step_auroc([[0.2, 0.9]], [[0.0, 1.0]]) == 1.0 and step_auroc([[0.9, 0.2]], [[0.0, 1.0]]) == 0.0
    assert step_auroc([[0.3, 0.4]], [[1.0, 1.0]]) is None  # no wrong step: no ranking to judge


def test_detection_accuracy_counts_rows_with_an_error_only():
    # rows 2 and 3 have errors (at 1 and 0); row 1 has none and is not counted whatever was detected
    result = detection_accuracy([0, 1, 2], [-1, 1, 0], [2, 4, 5])
    assert result == {"accuracy": 0.5, "random_step": pytest.approx((1 / 4 + 1 / 5) / 2), "rows": 2}
    assert detection_accuracy([0], [-1], [3]) == {"accuracy": 0.0, "random_step": 0.0, "rows": 0}
    with pytest.raises(ValueError, match="2 detections, 1 labels"):
        detection_accuracy([0, 1], [0], [2])
