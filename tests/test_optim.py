"""BFloat16MomentAdamW against torch's AdamW, its stochastic rounding, and how the reasoner and loop choose it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from sapo.models import TINY_RANDOM, BackboneSpec
from sapo.models.optim import BFloat16MomentAdamW, stochastic_round_to_bfloat16
from sapo.models.schedule import adamw


def _noise(shape, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << 31), 1 << 31, shape, dtype=torch.int32, generator=generator)


def _neighbours(x: float) -> tuple[float, float]:
    """The two bfloat16 values around ``x`` (by truncating toward zero and stepping one unit away)."""
    low = torch.tensor([x]).view(torch.int32).bitwise_and(-(1 << 16))
    return low.view(torch.float32).item(), (low + (1 << 16)).view(torch.float32).item()


@pytest.mark.parametrize("x", [1.0 + 0.3 * 2**-7, -3.7e-5, 12345.678])
def test_stochastic_rounding_lands_on_a_neighbour_and_is_unbiased(x):
    n = 200_000
    value = torch.full((n,), x)
    out = torch.empty(n, dtype=torch.bfloat16)
    stochastic_round_to_bfloat16(value, _noise((n,)), out)
    low, high = _neighbours(x)
    rounded = out.float()
    assert set(rounded.unique().tolist()) == {low, high}
    assert torch.equal(value, rounded)  # the float32 input holds the rounded value
    share_up = (rounded == high).double().mean().item()
    assert share_up == pytest.approx((x - low) / (high - low), abs=0.005)
    # round-to-nearest would give the same neighbour every time
    assert len(set(torch.full((4,), x).to(torch.bfloat16).float().tolist())) == 1


def test_values_already_in_bfloat16_are_left_as_they_are():
    value = torch.randn(1000).to(torch.bfloat16).float()
    out = torch.empty(1000, dtype=torch.bfloat16)
    stochastic_round_to_bfloat16(value.clone(), _noise((1000,)), out)
    assert torch.equal(out.float(), value)
    with pytest.raises(TypeError, match="float32 into bfloat16"):
        stochastic_round_to_bfloat16(value.double(), _noise((1000,)), out)


def _two_optimizers(weight_decay=0.01, chunk=777):
    torch.manual_seed(0)
    start = torch.randn(300, 40)
    reference = torch.nn.Parameter(start.clone())
    half = torch.nn.Parameter(start.clone())
    return (
        start,
        (reference, torch.optim.AdamW([reference], lr=1e-2, weight_decay=weight_decay)),
        (half, BFloat16MomentAdamW([half], lr=1e-2, weight_decay=weight_decay, chunk=chunk)),
    )


def test_the_update_follows_torchs_adamw_with_moments_half_the_size():
    start, (reference, torch_adamw), (half, ours) = _two_optimizers()
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        gradient = 0.1 * torch.randn(300, 40, generator=generator) + 0.05
        reference.grad, half.grad = gradient.clone(), gradient.clone()
        torch_adamw.step()
        ours.step()
    state, expected = ours.state[half], torch_adamw.state[reference]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    assert state["step"].item() == expected["step"].item() == 200
    moved = (reference - start).norm()
    assert (half - reference).norm() / moved < 0.02
    for key in ("exp_avg", "exp_avg_sq"):
        assert (state[key].float() - expected[key]).norm() / expected[key].norm() < 0.02


def test_the_second_moment_keeps_decaying_where_round_to_nearest_would_stall():
    """beta2 = 0.999 moves v by 0.1% a step, under half of bfloat16's unit (0.2-0.4%): with gradients
    halved after v settled at 1, round-to-nearest keeps v at 1 for ever, stochastic rounding follows the
    float32 decay to 0.25 + 0.75 * 0.999^t."""
    n, steps = 20_000, 1000
    parameter = torch.nn.Parameter(torch.zeros(n))
    optimizer = BFloat16MomentAdamW([parameter], lr=0.0, weight_decay=0.0)
    parameter.grad = torch.ones(n)
    optimizer.step()
    state = optimizer.state[parameter]
    state["exp_avg_sq"].fill_(1.0)
    parameter.grad = torch.full((n,), 0.5)
    for _ in range(steps):
        optimizer.step()
    expected = 0.25 + 0.75 * 0.999**steps
    assert state["exp_avg_sq"].float().mean().item() == pytest.approx(expected, rel=0.01)
    nearest = torch.tensor(0.999 * 1.0 + 0.001 * 0.25).to(torch.bfloat16).item()
    assert nearest == 1.0  # what round-to-nearest stores after the first of those steps


def test_a_resumed_optimizer_gives_the_uninterrupted_weights_and_the_seed_chooses_the_rounding():
    torch.manual_seed(0)
    start = torch.randn(64, 64)
    gradients = [torch.randn(64, 64) for _ in range(6)]

    def optimizer_for(parameter):
        return BFloat16MomentAdamW([parameter], lr=1e-2, chunk=1000)

    whole = torch.nn.Parameter(start.clone())
    optimizer = optimizer_for(whole)
    for gradient in gradients:
        whole.grad = gradient
        optimizer.step()

    first = torch.nn.Parameter(start.clone())
    optimizer = optimizer_for(first)
    for gradient in gradients[:3]:
        first.grad = gradient
        optimizer.step()
    saved = {"weights": first.detach().clone(), "optimizer": optimizer.state_dict()}
    resumed = torch.nn.Parameter(saved["weights"].clone())
    optimizer = optimizer_for(resumed)
    optimizer.load_state_dict(saved["optimizer"])
    state = optimizer.state[resumed]
    assert state["exp_avg"].dtype == torch.bfloat16  # torch's loader casts to the parameter's float32
    for gradient in gradients[3:]:
        resumed.grad = gradient
        optimizer.step()
    assert torch.equal(resumed, whole)
    assert state["step"].item() == 6
    other_seed = torch.nn.Parameter(start.clone())
    optimizer = BFloat16MomentAdamW([other_seed], lr=1e-2, chunk=1000, seed=1)
    for gradient in gradients:
        other_seed.grad = gradient
        optimizer.step()
    assert not torch.equal(other_seed, whole)  # the seed chooses the rounding


def test_adamw_chooses_by_moment_dtype_and_names_a_bad_one():
    parameters = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(adamw(parameters, 1e-3, 0.0, "bfloat16"), BFloat16MomentAdamW)
    assert type(adamw(parameters, 1e-3, 0.0)) is torch.optim.AdamW
    with pytest.raises(ValueError, match="moment_dtype must be one of .*'float16'"):
        adamw(parameters, 1e-3, 0.0, "float16")


def test_a_reasoner_trains_with_bfloat16_moments(sapo_cache_dir):
    from test_reasoner import _one_pair_batch, _quiet_trainer

    from sapo.models.reasoner import ORPOReasoner

    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)
    reasoner = ORPOReasoner(spec, learning_rate=1e-2, warmup_ratio=0.0, moment_dtype="bfloat16")
    before = {name: p.detach().clone() for name, p in reasoner.model.named_parameters()}
    trainer = _quiet_trainer(max_steps=2, gradient_clip_val=1.0)
    trainer.fit(reasoner, train_dataloaders=DataLoader([_one_pair_batch()] * 2, batch_size=None))
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, BFloat16MomentAdamW)
    states = list(optimizer.state.values())
    assert len(states) == sum(p.requires_grad for p in reasoner.model.parameters())
    assert {s["exp_avg_sq"].dtype for s in states} == {torch.bfloat16}
    assert {s["step"].item() for s in states} == {2}
    assert all(not torch.equal(p.detach(), before[n]) for n, p in reasoner.model.named_parameters())
    with pytest.raises(ValueError, match="moment_dtype"):
        ORPOReasoner(spec, moment_dtype="int8")


@pytest.mark.parametrize("loss", ["orpo", "dpo"])
def test_the_loop_gives_each_phase_its_own_moment_dtype(sapo_cache_dir, loss):
    from sapo.evolution import SelfEvolution
    from sapo.evolution.settings import ORPOSettings, SFTSettings

    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)
    loop = SelfEvolution(spec, sft=SFTSettings(), orpo=ORPOSettings(loss=loss, moment_dtype="bfloat16"))
    sft, round_ = loop._reasoner_module(spec, loop.sft), loop._reasoner_module(spec, loop.orpo, loss)
    assert (sft.hparams.moment_dtype, round_.hparams.moment_dtype) == ("float32", "bfloat16")
    with pytest.raises(ValueError, match=r"orpo\.moment_dtype must be one of"):
        ORPOSettings(moment_dtype="fp16")
    with pytest.raises(ValueError, match=r"sft\.moment_dtype must be one of"):
        SFTSettings(moment_dtype="fp16")
