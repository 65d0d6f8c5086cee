"""Losses against hand computations; the chunked log-probability against the full-logits one."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama import LlamaForCausalLM

from sapo.data.preference import IGNORE_INDEX
from sapo.models import tiny_random_config
from sapo.models.losses import chunked_labelled_logprob, log1mexp, orpo_loss, sequence_logprob


def test_sequence_logprob_matches_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 3, 1, 6], [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX, 4]]
    )
    logp, counts = sequence_logprob(logits, labels)
    probs = torch.softmax(logits, -1)
    # logits at t predict the label at t+1
    row0 = (math.log(probs[0, 1, 3]) + math.log(probs[0, 2, 1]) + math.log(probs[0, 3, 6])) / 3
    row1 = (math.log(probs[1, 0, 2]) + math.log(probs[1, 3, 4])) / 2
    assert counts.tolist() == [3, 2]
    assert logp.tolist() == pytest.approx([row0, row1], rel=1e-5)


@pytest.mark.parametrize("x", [-1e-6, -1e-3, -0.3, -0.69, -0.7, -2.0, -30.0])
def test_log1mexp_matches_definition(x):
    exact = math.log(1 - math.exp(x)) if x > -20 else math.log1p(-math.exp(x))
    assert log1mexp(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(exact, rel=1e-6)


def test_log1mexp_is_finite_at_probability_one():
    value = log1mexp(torch.tensor([0.0, -1e-12]))
    assert torch.isfinite(value).all()
    # naive log(1 - exp(x)) is -inf there: the stable form must not be
    assert torch.isinf(torch.log(1 - torch.exp(torch.tensor(0.0))))


def _hand_orpo(chosen: list[float], rejected: list[float], weight: float) -> float:
    def log_odds(lp: float) -> float:
        return lp - math.log(1 - math.exp(lp))

    ratio = [
        math.log(1 / (1 + math.exp(-(log_odds(c) - log_odds(r)))))
        for c, r in zip(chosen, rejected, strict=False)
    ]
    return -sum(chosen) / len(chosen) - weight * sum(ratio) / len(ratio)


@pytest.mark.parametrize(
    "chosen, rejected", [([-0.5, -1.2], [-0.9, -0.4]), ([-1e-4, -0.01], [-3.0, -1e-3]), ([-2.0], [-2.0])]
)
def test_orpo_loss_matches_hand_computation(chosen, rejected):
    loss, terms = orpo_loss(
        torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)
    )
    assert loss.item() == pytest.approx(_hand_orpo(chosen, rejected, 0.1), rel=1e-6)
    assert terms["nll"].item() == pytest.approx(-sum(chosen) / len(chosen))
    assert terms["reward_accuracy"].item() == pytest.approx(
        sum(c > r for c, r in zip(chosen, rejected, strict=False)) / len(chosen)
    )


def test_orpo_loss_rows_without_rejected_side_are_sft_only():
    chosen = torch.tensor([-0.5, -1.0], dtype=torch.float64)
    rejected = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    loss, _ = orpo_loss(chosen, rejected, 0.1, has_rejected=torch.tensor([True, False]))
    ratio_term_of_row0 = -(_hand_orpo([-0.5], [-2.0], 1.0) - 0.5)  # log sigmoid(log odds ratio) of row 0
    assert loss.item() == pytest.approx(0.75 - 0.1 * ratio_term_of_row0, rel=1e-6)
    loss_none, _ = orpo_loss(chosen, rejected, 0.1, has_rejected=torch.tensor([False, False]))
    assert loss_none.item() == pytest.approx(0.75)


def test_orpo_gradient_is_finite_near_probability_one():
    chosen = torch.tensor([-1e-9, -1e-5], requires_grad=True)
    rejected = torch.tensor([-1e-8, -5.0], requires_grad=True)
    loss, _ = orpo_loss(chosen, rejected)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_sequence_logprob_is_exact_in_float32_when_the_model_is_almost_sure():
    torch.manual_seed(0)
    logits = torch.randn(4, 2, 50_000, dtype=torch.float64)  # one labelled token per row, at position 1
    targets = torch.tensor([3, 17, 49_999, 0])
    logits[torch.arange(4), 0, targets] = torch.tensor([30.0, 26.0, 5.0, -2.0], dtype=torch.float64)
    labels = torch.stack([torch.full((4,), IGNORE_INDEX), targets], 1)
    exact = logits[:, 0].log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    assert -1e-7 < exact[0] < 0  # p is within 1e-7 of 1
    logp, _ = sequence_logprob(logits.float(), labels)
    assert logp.double().tolist() == pytest.approx(exact.tolist(), rel=1e-4)
    # the textbook form z_y - logsumexp(z) loses these digits in float32
    naive = logits[:, 0].float().log_softmax(-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    assert naive[0].item() != pytest.approx(exact[0].item(), rel=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logprob_gradient_is_one_hot_minus_softmax(dtype):
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 11).to(dtype).requires_grad_()
    labels = torch.tensor(
        [[IGNORE_INDEX, 0, 5, 10], [IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX], [1, 2, 3, 4]]
    )
    logp, counts = sequence_logprob(logits, labels)
    logp.sum().backward()
    expected = torch.zeros(3, 4, 11)
    probs = torch.softmax(logits.detach().float(), -1)
    for row in range(3):
        for t in range(1, 4):
            if labels[row, t] != IGNORE_INDEX:
                expected[row, t - 1] = -probs[row, t - 1] / counts[row]
                expected[row, t - 1, labels[row, t]] += 1 / counts[row]
    assert torch.allclose(logits.grad.float(), expected, atol=1e-6 if dtype == torch.float32 else 1e-2)


def test_sequence_logprob_passes_gradcheck_in_float64():
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 0, 5, IGNORE_INDEX], [3, 2, 3, 4]])
    assert torch.autograd.gradcheck(lambda z: sequence_logprob(z, labels)[0], (logits,))


def tiny_llama(vocab: int = 2048) -> LlamaForCausalLM:
    """A seeded tiny Llama (2 layers, hidden 64) with tied embeddings, float32."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return LlamaForCausalLM(tiny_random_config(vocab)).train()


def tiny_batch(vocab: int, lengths=(12, 9, 14), prompts=(3, 9, 2), seed: int = 4):
    """Right-padded ids, mask and labels; a row whose prompt fills it has no labelled token."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, (length, prompt) in enumerate(zip(lengths, prompts, strict=True)):
        mask[row, :length] = 1
        labels[row, prompt:length] = ids[row, prompt:length]
    return ids, mask, labels


def full_and_chunked(model, ids, mask, labels, chunk_tokens):
    """Both paths' (logp, counts) and each path's gradients of a weighted sum of logp, by parameter name."""
    weights = torch.tensor([0.7, -1.3, 2.1])[: ids.shape[0]]
    results = []
    for chunked in (False, True):
        model.zero_grad(set_to_none=True)
        if chunked:
            hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            logp, counts = chunked_labelled_logprob(
                hidden, model.get_output_embeddings(), labels, chunk_tokens
            )
        else:
            logp, counts = sequence_logprob(model(input_ids=ids, attention_mask=mask).logits, labels)
        (logp * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logp.detach(), counts, grads))
    return results


@pytest.mark.parametrize("chunk_tokens", [1, 4, 7, 1000])
def test_chunked_labelled_logprob_matches_full_logits_values_and_gradients(chunk_tokens):
    # 9, 0 and 12 labelled tokens: chunks of 4 and 7 end mid-row, 1000 holds them all
    model = tiny_llama()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    ids, mask, labels = tiny_batch(model.config.vocab_size)
    (full, full_counts, full_grads), (chunked, counts, grads) = full_and_chunked(
        model, ids, mask, labels, chunk_tokens
    )
    assert counts.tolist() == full_counts.tolist() == [9, 0, 12]
    assert torch.allclose(chunked, full, rtol=1e-6, atol=1e-6)
    assert chunked[1] == 0
    assert grads.keys() == full_grads.keys() == dict(model.named_parameters()).keys()
    for name, grad in grads.items():  # float32 rounding in another order, carried back through the layers
        expected = full_grads[name]
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()), name


def test_chunked_labelled_logprob_without_labelled_tokens_still_backpropagates():
    model = tiny_llama()
    ids, mask, labels = tiny_batch(model.config.vocab_size, lengths=(5, 4), prompts=(5, 4))
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    logp, counts = chunked_labelled_logprob(hidden, model.get_output_embeddings(), labels, 4)
    logp.sum().backward()
    assert logp.tolist() == [0.0, 0.0] and counts.tolist() == [0, 0]


def test_chunked_labelled_logprob_never_holds_the_logits_of_all_tokens():
    """The full path makes [B, T, V] logits and saves the labelled rows' float32 logits [N, V] for backward;
    the chunked path saves no vocabulary-wide tensor, and no tensor it makes, forward or backward, has more
    than one chunk of rows of V values (the head weight's transpose [H, V] aside)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    chunk = 4
    model = tiny_llama()
    vocab, hidden_size = model.config.vocab_size, model.config.hidden_size
    ids, mask, labels = tiny_batch(vocab, lengths=(40, 9, 50), prompts=(3, 9, 2))
    labelled = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert labelled > hidden_size

    def vocab_rows(t) -> int:
        """Rows of ``t`` as rows of V values; 0 for tensors without a vocabulary dimension last."""
        if not isinstance(t, torch.Tensor) or not t.dim() or t.shape[-1] != vocab:
            return 0
        return 0 if tuple(t.shape) == (hidden_size, vocab) else t.numel() // vocab

    class MadeRows(TorchDispatchMode):
        rows = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                self.rows = max(self.rows, vocab_rows(t))
            return out

    def measure(chunked: bool) -> tuple[int, int]:
        saved = [0]

        def pack(t):
            saved.append(vocab_rows(t))
            return t

        model.zero_grad(set_to_none=True)
        with MadeRows() as made:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if chunked:
                    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
                    logp, _ = chunked_labelled_logprob(hidden, model.get_output_embeddings(), labels, chunk)
                else:
                    logp, _ = sequence_logprob(model(input_ids=ids, attention_mask=mask).logits, labels)
            logp.sum().backward()
        return max(saved), made.rows

    full_saved, full_made = measure(chunked=False)
    chunked_saved, chunked_made = measure(chunked=True)
    assert (full_saved, full_made) == (labelled, ids.numel())  # the measure sees what the full path holds
    assert (chunked_saved, chunked_made) == (0, chunk)
