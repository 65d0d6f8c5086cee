"""Batched generation with transformers ``generate``: the primitive every sampler in sapo builds on.

:func:`generate_batched` completes a list of prompts: it tokenises each distinct prompt once, sorts the rows
by prompt length so that a batch pads little, left-pads them (a decoder-only model continues from the right
edge) and makes **one** ``model.generate`` call per batch. Prompts in a batch usually share a lot (the k
rows of one prefix are the same prompt; every prompt starts with the same chat header and few-shot
examples), and reading a prompt (the prefill) costs as much compute per token as generating, so the batch's
key/value cache is built by :func:`shared_prefill`: the common token prefix once, each distinct prompt once,
then copied to the rows (``share_prefill=False`` turns it off). A row ends at EOS, at ``max_new_tokens``, or, when
a :class:`StopRule` is given, as soon as its text is finished (for math: once the answer line and its
newline are written), so the model never spends tokens after the answer. What each call cost (completions,
generated tokens, prompt and padding tokens, idle rows, seconds) is added to a
:class:`~sapo.data.trajectory.Cost`.

Sampling is seeded without touching the global random state: each batch runs inside
:func:`torch.random.fork_rng` with its own seed derived from the call's seed and the batch's index, so the
same prompts, settings, batch size and seed give the same samples, and the caller's random stream is the same
afterwards. Greedy results do not depend on how rows are batched.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from sapo.data.trajectory import Cost
from sapo.rollout.attention import attention_implementation, resolve_decode_attention

__all__ = [
    "Generation",
    "Prefill",
    "StopRule",
    "as_stop_rule",
    "derive_seed",
    "finish_generation",
    "first_stop_point",
    "generate_batched",
    "progress_rate",
    "shared_prefill",
]


@dataclass
class Generation:
    """One completion.

    Attributes:
        text: the generated text, special tokens removed, cut where the stop rule says it ends.
        num_tokens: tokens generated for it, up to and including the one that ended it (the stop point or
            EOS): the work the model really did for this row.
        finish_reason: ``"stop"`` (the stop rule), ``"eos"`` or ``"length"`` (``max_new_tokens`` reached).
    """

    text: str
    num_tokens: int
    finish_reason: str = "length"


@dataclass(frozen=True)
class StopRule:
    """Where a completion is finished, beyond EOS and the token budget (which always apply).

    Args:
        end: ``end(text)`` gives the length of ``text`` to keep once the completion is finished (just after
            its answer line, say), or ``None`` while it goes on.
        trigger: ``end`` is only called after a token whose text contains ``trigger``, so most decoding
            steps cost no check at all. A rule whose end can be completed by a token without it must use
            ``None`` (checked after every token). The default suits rules that end at a newline.
    """

    end: Callable[[str], int | None]
    trigger: str | None = "\n"

    @classmethod
    def regex(cls, pattern: str | re.Pattern[str], trigger: str | None = "\n") -> StopRule:
        """A rule that ends a completion just after the first match of ``pattern``."""
        compiled = re.compile(pattern)

        def end(text: str) -> int | None:
            match = compiled.search(text)
            return None if match is None else match.end()

        return cls(end, trigger)


def as_stop_rule(
    stop: StopRule | str | re.Pattern[str] | Callable[[str], int | None] | None,
) -> StopRule | None:
    """Accept a :class:`StopRule`, a regular expression (ends after its first match), a callable ``end``
    (checked after every token, since nothing says which tokens can complete it), or ``None`` (no rule)."""
    if stop is None or isinstance(stop, StopRule):
        return stop
    if isinstance(stop, (str, re.Pattern)):
        return StopRule.regex(stop)
    if callable(stop):
        return StopRule(stop, trigger=None)
    raise TypeError(
        f"stop must be a StopRule, a regular expression, a callable or None, got {type(stop).__name__}"
    )


def derive_seed(seed: int, *path: int | str) -> int:
    """A 63-bit seed for the stream named by ``path`` under ``seed`` (the same on every run and machine)."""
    return random.Random(repr((seed, *path))).getrandbits(63)


def progress_rate(cost: Cost) -> str:
    """The progress bar's postfix: sequences and generated tokens per second so far."""
    return f"{cost.sequences_per_second:.1f} seq/s, {cost.tokens_per_second:.0f} tok/s"


@torch.no_grad()
def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    batch_size: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: StopRule | str | Callable[[str], int | None] | None = None,
    seed: int | None = None,
    progress: bool = False,
    description: str = "generating",
    cost: Cost | None = None,
    share_prefill: bool = True,
    decode_attention: str = "auto",
) -> list[Generation]:
    """Complete every prompt (in input order); greedy when ``temperature == 0``, else sampled with
    ``temperature`` and nucleus ``top_p`` (no top-k cut).

    Args:
        prompts: full prompt texts (chat template and all); a prompt may appear several times, for several
            samples. They are tokenised without adding special tokens (templates carry their own).
        batch_size: rows per ``generate`` call.
        stop: where a row is finished (see :class:`StopRule` and :func:`as_stop_rule`); EOS and
            ``max_new_tokens`` always apply.
        seed: seeds batch ``b`` with ``derive_seed(seed, b)`` inside a forked random state; ``None`` uses
            (and advances) the global torch random state.
        progress: show a progress bar with sequences/s and tokens/s.
        cost: when given, this call's cost is added to it.
        share_prefill: build each batch's cache with :func:`shared_prefill` (shared prompt prefixes read
            once). Off: ``generate`` reads every row's prompt itself, as plain batched generation does. The
            two give the same distribution of samples (and, up to floating-point summation order, the same
            greedy completions).
        decode_attention: the attention implementation ``generate`` decodes with, after the prefill
            (:func:`~sapo.rollout.attention.resolve_decode_attention`): ``"auto"`` decodes with
            :data:`~sapo.rollout.attention.GROUPED_EAGER` on a CPU (the same attention as eager, its
            key/value heads read in place; sampling 1.6-2.7x faster than under sdpa on 2 cores) and with the
            model's own implementation elsewhere; ``"model"``: the model's own. With ``share_prefill`` the
            prompts are read with the model's own implementation either way; without it ``generate`` reads
            them under ``decode_attention``, which for eager-style attention keeps ``[rows, heads, prompt,
            prompt]`` attention weights a layer (large for long prompts).
    """
    call_cost = Cost(calls=1)
    started = time.perf_counter()
    if not prompts:
        _add_cost(cost, call_cost, started)
        return []
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
    rule = as_stop_rule(stop)
    token_ids = _tokenise_once(tokenizer, prompts)
    # by length, and the rows of one prompt next to each other, so that a batch holds whole groups
    first_seen = {p: i for i, p in reversed(list(enumerate(prompts)))}
    order = sorted(range(len(prompts)), key=lambda i: (len(token_ids[i]), first_seen[prompts[i]]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    end_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    device = model.device
    decoding = resolve_decode_attention(model, decode_attention)
    results: list[Generation | None] = [None] * len(prompts)
    triggers: dict[int, bool] = {}  # token id -> its text contains the rule's trigger (shared by the batches)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=description, unit="seq", disable=not progress)
    try:
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            row_ids = [token_ids[i] for i in rows]
            if share_prefill:
                prefill = shared_prefill(model, row_ids, pad_id)
            else:
                ids, mask = _left_pad(row_ids, pad_id, device)
                prefill = Prefill(ids, mask, None, positions=ids.numel(), padding=int((mask == 0).sum()))
            input_ids, attention_mask = prefill.input_ids, prefill.attention_mask
            width = input_ids.shape[1]
            watcher = _StopWatcher(tokenizer, rule, width, end_ids, triggers) if rule is not None else None
            with _seeded(seed, batch_index, device), attention_implementation(model, decoding):
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    past_key_values=prefill.cache,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    stopping_criteria=StoppingCriteriaList([watcher]) if watcher is not None else None,
                    **sampling,
                )
            new_tokens = out[:, width:].tolist()
            steps = len(new_tokens[0])
            for r, i in enumerate(rows):
                stop_at = watcher.stopped_at[r] if watcher is not None else None
                results[i] = finish_generation(tokenizer, new_tokens[r], end_ids, rule, stopped_at=stop_at)
                call_cost.prompt_tokens += len(token_ids[i])
                call_cost.generated_tokens += results[i].num_tokens  # type: ignore[union-attr]
                call_cost.idle_row_steps += steps - results[i].num_tokens  # type: ignore[union-attr]
            call_cost.prefill_tokens += prefill.positions
            call_cost.padding_tokens += prefill.padding
            call_cost.batches += 1
            call_cost.completions += len(rows)
            call_cost.stop_check_seconds += watcher.seconds if watcher is not None else 0.0
            call_cost.seconds = time.perf_counter() - started
            bar.update(len(rows))
            bar.set_postfix_str(progress_rate(call_cost), refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    _add_cost(cost, call_cost, started)
    return results  # type: ignore[return-value]


def _add_cost(total: Cost | None, call_cost: Cost, started: float) -> None:
    call_cost.seconds = time.perf_counter() - started
    if total is not None:
        total.add(call_cost)


def _tokenise_once(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of every prompt; each distinct prompt is tokenised once (samples repeat prompts)."""
    distinct = list(dict.fromkeys(prompts))
    encoded = tokenizer(distinct, add_special_tokens=False)["input_ids"]
    by_prompt = dict(zip(distinct, encoded, strict=True))
    return [by_prompt[p] for p in prompts]


@dataclass
class Prefill:
    """A batch ready for ``generate``: its token ids and mask, and the cache that already holds all but the
    last column (``None``: nothing prefilled yet). ``positions`` and ``padding`` count the token positions the
    model computed to read the prompts, and the padding among them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: Any = None
    positions: int = 0
    padding: int = 0


@torch.no_grad()
def shared_prefill(model: Any, rows: Sequence[Sequence[int]], pad_id: int) -> Prefill:
    """Read a batch's prompts into a key/value cache, each shared part once.

    Rows are laid out as ``[common prefix][padding][own suffix]``: the longest token prefix common to all
    rows comes first (so its cache is computed once, at batch 1, and copied), then each row's own tokens,
    right-aligned so every row's next token lands in the last column. The suffixes of the *distinct* prompts
    are prefilled once each (one forward pass at their batch), and the cache rows are then copied to the rows
    that repeat them. Position ids follow the attention mask (``cumsum(mask) - 1``, as ``generate`` computes
    them), so a row sees exactly the positions and keys it would see left-padded on its own. The last column
    is left for ``generate``, which needs at least one token to read. Cost: ``P + U·S`` positions instead of
    ``B·W`` (P the common prefix, U distinct prompts with suffixes padded to S, B rows left-padded to W).
    """
    from transformers import DynamicCache

    device = model.device
    distinct = list(dict.fromkeys(tuple(r) for r in rows))
    index_of = {r: i for i, r in enumerate(distinct)}
    common = min(_common_prefix_length(distinct), min(len(r) for r in distinct) - 1)
    suffixes = [list(r[common:]) for r in distinct]
    suffix_width = max(len(s) for s in suffixes)
    prefix = torch.tensor([list(distinct[0][:common])], dtype=torch.long, device=device)
    suffix_ids, suffix_mask = _left_pad(suffixes, pad_id, device)
    input_ids = torch.cat([prefix.expand(len(distinct), -1), suffix_ids], dim=1)
    attention_mask = torch.cat(
        [torch.ones((len(distinct), common), dtype=torch.long, device=device), suffix_mask], dim=1
    )
    cache = DynamicCache(config=model.config)
    positions = common + len(distinct) * (suffix_width - 1) + len(rows)  # + the last column, in generate
    if common:
        model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(distinct))
    if suffix_width > 1:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        model(
            input_ids=input_ids[:, common:-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=position_ids[:, common:-1],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    padding = int((suffix_mask[:, :-1] == 0).sum())
    select = torch.tensor([index_of[tuple(r)] for r in rows], dtype=torch.long, device=device)
    if cache.get_seq_length() > 0:
        cache.batch_select_indices(select)
    else:
        cache = None  # every prompt is one token: nothing to prefill
    return Prefill(input_ids[select], attention_mask[select], cache, positions, padding)


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    length = min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < length and r[k] == first[k]:
            k += 1
        length = k
    return length


def _left_pad(rows: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor(
        [[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device
    )
    return ids, mask


@contextmanager
def _seeded(seed: int | None, batch_index: int, device: Any) -> Iterator[None]:
    """Run one batch on its own seeded random stream, leaving the caller's random state as it was."""
    if seed is None:
        yield
        return
    devices = [device] if getattr(device, "type", str(device)) == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, batch_index))
        yield


class _StopWatcher(StoppingCriteria):
    """Ends each row of one batch as soon as the stop rule finds its text finished, and remembers where.

    ``stopped_at[r]`` is the number of tokens row ``r`` had generated when the rule ended it (``None``: it
    did not). Only rows whose newest token carries the rule's trigger are decoded and checked.
    """

    def __init__(
        self, tokenizer: Any, rule: StopRule, prompt_width: int, end_ids: set[int], triggers: dict[int, bool]
    ) -> None:
        self.tokenizer = tokenizer
        self.rule = rule
        self.prompt_width = prompt_width
        self.end_ids = end_ids
        self.triggers = triggers
        self.stopped_at: list[int | None] = []
        self.ended: list[bool] = []
        self.seconds = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        started = time.perf_counter()
        if not self.ended:
            self.ended = [False] * input_ids.shape[0]
            self.stopped_at = [None] * input_ids.shape[0]
        generated = input_ids.shape[1] - self.prompt_width
        for r, token in enumerate(input_ids[:, -1].tolist()):
            if self.ended[r]:
                continue
            if token in self.end_ids:  # generate ends this row itself; nothing left to check
                self.ended[r] = True
                continue
            if self.rule.trigger is not None and not self._has_trigger(token):
                continue
            text = self.tokenizer.decode(input_ids[r, self.prompt_width :].tolist(), skip_special_tokens=True)
            if self.rule.end(text) is not None:
                self.ended[r] = True
                self.stopped_at[r] = generated
        done = [s is not None for s in self.stopped_at]
        self.seconds += time.perf_counter() - started
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _has_trigger(self, token: int) -> bool:
        known = self.triggers.get(token)
        if known is None:
            known = self.triggers[token] = self.rule.trigger in self.tokenizer.decode([token])  # type: ignore[operator]
        return known


def finish_generation(
    tokenizer: Any,
    tokens: list[int],
    end_ids: set[int],
    rule: StopRule | None,
    stopped_at: int | None = None,
) -> Generation:
    """Turn one row of generated token ids into a :class:`Generation`: cut it at its stop point or first
    EOS/pad, decode it, and cut the text where the rule says it ends.

    ``stopped_at`` is how many tokens the row had when the rule ended it (``None``: the rule did not end
    it); a backend that cannot stop on a rule while generating finds it with :func:`first_stop_point`.
    """
    first_end = next((k + 1 for k, token in enumerate(tokens) if token in end_ids), None)
    if stopped_at is not None and (first_end is None or stopped_at < first_end):
        count, reason = stopped_at, "stop"
    elif first_end is not None:
        count, reason = first_end, "eos"
    else:
        count, reason = len(tokens), "length"
    text = tokenizer.decode(tokens[:count], skip_special_tokens=True)
    if rule is not None:
        end = rule.end(text)
        if end is not None:
            text, reason = text[:end], "stop"
    return Generation(text, count, reason)


def first_stop_point(
    tokenizer: Any, tokens: list[int], end_ids: set[int], rule: StopRule | None
) -> int | None:
    """How many of ``tokens`` the rule would have let the model generate (``None``: it never ends them)."""
    if rule is None:
        return None
    for k, token in enumerate(tokens):
        if token in end_ids:
            return None
        if rule.trigger is not None and rule.trigger not in tokenizer.decode([token]):
            continue
        if rule.end(tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)) is not None:
            return k + 1
    return None
