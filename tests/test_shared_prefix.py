"""Both sides of a pair in one pass: the joint layout, and the same log-probabilities and gradients as one
pass per side, for ORPO and DPO, under sdpa, eager and sapo's grouped eager attention."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sapo.data.preference import PairCollator, PreferencePair
from sapo.models import TINY_RANDOM, BackboneSpec
from sapo.models.reasoner import DPOReasoner, ORPOReasoner
from sapo.models.shared_prefix import shared_prefix_batch
from sapo.rollout.attention import GROUPED_EAGER

#: pairs whose sides share the prompt only, the prompt and a right first step (marked at its first error),
#: or nothing but the prompt with a shorter rejected side; and a row without a rejected side
PAIRS = [
    PreferencePair("a", "Q: 2+3?\n", ["2 + 3 = 5", "The answer is 5"], ["2 + 3 = 6", "The answer is 6"]),
    PreferencePair("b", "Q: 7-1?\n", ["The answer is 6"]),
    PreferencePair(
        "c",
        "Q: (7-1)*2?\n",
        ["7 - 1 = 6", "6 * 2 = 12", "The answer is 12"],
        ["7 - 1 = 6", "6 * 2 = 13", "The answer is 13"],
        rejected_first_error=1,
    ),
    PreferencePair(
        "d", "Q: a longer question?\n", ["x = 1", "y = 2", "z = 3", "The answer is 3"], ["The answer is 9"]
    ),
]


def test_layout_puts_each_rejected_tail_after_its_chosen_side():
    chosen = torch.tensor([[1, 2, 3, 4, 0], [1, 5, 0, 0, 0], [1, 2, 6, 7, 8]])
    chosen_mask = (torch.arange(5) < torch.tensor([[4], [2], [5]])).long()
    rejected = torch.tensor([[1, 2, 9, 0], [1, 2, 6, 3]])  # rows 0 and 2: 2 and 3 tokens shared
    rejected_mask = (torch.arange(4) < torch.tensor([[3], [4]])).long()
    joint = shared_prefix_batch(
        chosen, chosen_mask, rejected, rejected_mask, torch.tensor([True, False, True])
    )
    assert joint.shared.tolist() == [2, 3]
    assert joint.input_ids.shape == (3, 6) and joint.chosen_width == 5
    assert joint.input_ids[0, :5].tolist() == [1, 2, 3, 4, 9]
    assert joint.position_ids[0, :5].tolist() == [0, 1, 2, 3, 2]  # the tail takes its own side's positions
    assert joint.input_ids[2].tolist() == [1, 2, 6, 7, 8, 3]
    assert joint.position_ids[2].tolist() == [0, 1, 2, 3, 4, 3]
    assert joint.rejected_rows.tolist() == [0, 2]
    assert joint.rejected_index[0, :3].tolist() == [0, 1, 4] and joint.rejected_index[1].tolist() == [
        0,
        1,
        2,
        5,
    ]
    allowed = joint.allowed[0]
    assert allowed[4].tolist() == [True, True, False, False, True, False]  # the tail sees the prefix, itself
    assert allowed[3].tolist() == [True, True, True, True, False, False]  # chosen tokens: causal, as before
    assert not allowed[:5, 5].any() and allowed[5, 5]  # no token sees padding; padding sees itself at least
    assert joint.allowed[1, 1].tolist() == [True, True, False, False, False, False]
    with pytest.raises(ValueError, match="2 rows are flagged"):
        shared_prefix_batch(
            chosen, chosen_mask, rejected[:1], rejected_mask[:1], torch.tensor([True, False, True])
        )


@pytest.fixture
def spec(sapo_cache_dir) -> BackboneSpec:
    return BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)


def _logprobs_and_gradients(module: ORPOReasoner, batch: dict[str, torch.Tensor], shared: bool):
    module.hparams.shared_prefix = shared
    module.model.zero_grad(set_to_none=True)
    chosen, chosen_count, rejected, rejected_count = module.pair_logprobs(module.model, batch)
    # arbitrary weights, so that every row's value reaches the gradient
    (chosen @ torch.tensor([0.3, -1.0, 2.0, 0.5]) + rejected @ torch.tensor([1.0, 0.0, -2.0, 0.7])).backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return (chosen.detach(), chosen_count, rejected.detach(), rejected_count), grads


@pytest.mark.parametrize("attention", ["sdpa", "eager", GROUPED_EAGER])
def test_one_joint_pass_gives_each_sides_log_probabilities_and_gradients(spec, attention):
    torch.manual_seed(0)
    module = ORPOReasoner(replace(spec, attention=attention))
    assert module.model.config._attn_implementation == attention
    batch = PairCollator(module.tokenizer, "\n", max_length=64)(PAIRS)
    (separate, separate_grads), (joint, joint_grads) = (
        _logprobs_and_gradients(module, batch, shared) for shared in (False, True)
    )
    assert torch.equal(joint[1], separate[1]) and torch.equal(joint[3], separate[3])  # token counts
    assert separate[3].tolist()[1] == 0 and all(c > 0 for i, c in enumerate(separate[3].tolist()) if i != 1)
    assert torch.allclose(joint[0], separate[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(joint[2], separate[2], rtol=1e-5, atol=1e-6)
    assert separate_grads.keys() == joint_grads.keys() and separate_grads
    for name, grad in joint_grads.items():
        expected = separate_grads[name]
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), name


def test_the_joint_pass_computes_fewer_positions(spec):
    module = ORPOReasoner(spec)
    batch = PairCollator(module.tokenizer, "\n", max_length=64)(PAIRS)
    joint = shared_prefix_batch(
        batch["chosen_input_ids"],
        batch["chosen_attention_mask"],
        batch["rejected_input_ids"],
        batch["rejected_attention_mask"],
        batch["has_rejected"],
    )
    separate = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
    shared = int(joint.shared.sum())
    assert int(joint.allowed.diagonal(dim1=1, dim2=2).sum()) >= separate - shared  # every token, once
    # pair c shares its prompt and its right first step: more than the prompt alone
    prompt_c = len(module.tokenizer(PAIRS[2].prompt, add_special_tokens=False)["input_ids"])
    assert joint.shared.tolist()[1] > prompt_c


@pytest.mark.parametrize("loss", ["orpo", "dpo"])
def test_losses_are_the_same_with_and_without_shared_prefixes(spec, loss):
    torch.manual_seed(0)
    module = ORPOReasoner(spec) if loss == "orpo" else DPOReasoner(spec, sft_weight=0.5)
    batch = PairCollator(module.tokenizer, "\n", max_length=64)(PAIRS)
    if loss == "dpo":  # the policy away from its reference, so that the DPO term has a gradient
        with torch.no_grad():
            for parameter in module.model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    values = {}
    for shared in (False, True):
        module.hparams.shared_prefix = shared
        values[shared], terms = module.loss(batch)
        assert all(torch.isfinite(v) for v in terms.values())
    assert values[True].item() == pytest.approx(values[False].item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["orpo", "dpo"])
@pytest.mark.parametrize("shared", [True, False])
def test_the_loop_passes_orpo_shared_prefix_to_each_round(spec, loss, shared):
    from sapo.evolution import SelfEvolution
    from sapo.evolution.settings import ORPOSettings

    loop = SelfEvolution(spec, orpo=ORPOSettings(loss=loss, shared_prefix=shared))
    round_ = loop._reasoner_module(spec, loop.orpo, loss)
    assert isinstance(round_, DPOReasoner if loss == "dpo" else ORPOReasoner)
    assert round_.hparams.shared_prefix is shared
