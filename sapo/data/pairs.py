"""Preference pairs from scored trajectories (the loop's ``Pairs(V_t, D_t)``), and RFT's SFT-only data.

The verifier scores every step of every sampled trajectory; a trajectory's reward is its mean step score
(:func:`~sapo.data.reward.trajectory_reward`), and for each question the trajectories whose rewards differ
by at least a margin become ORPO pairs (chosen, rejected). RFT, the rejection-sampling baseline, instead fine-tunes on the correct samples alone.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Mapping, Sequence

from sapo.data.preference import PreferencePair
from sapo.data.reward import trajectory_reward
from sapo.data.steps import normalised_steps
from sapo.data.trajectory import NO_ERROR, Trajectory, first_error_of

__all__ = [
    "build_pairs",
    "outcome_pairs",
    "rft_pairs",
    "trajectory_reward",
]

#: how a pair's prompt is found: a function of the trajectory, a mapping from question id to prompt, or
#: ``None`` for the trajectory's question text
PromptSource = Callable[[Trajectory], str] | Mapping[str, str] | None

#: slack on the margin test, so that rewards like 0.7 and 0.4 (a float difference of 0.29999999999999993)
#: count as 0.3 apart
MARGIN_TOLERANCE = 1e-9


def reaches_reward(reward: float, least: float) -> bool:
    """``reward >= least`` up to :data:`MARGIN_TOLERANCE`: whether a right answer may train as a chosen side
    or an unpaired row under ``min_chosen_reward``."""
    return reward >= least - MARGIN_TOLERANCE


def prompt_of(trajectory: Trajectory, prompt: PromptSource) -> str:
    """The prompt of ``trajectory``'s question from a :data:`PromptSource`."""
    if prompt is None:
        return trajectory.question
    if isinstance(prompt, Mapping):
        if trajectory.question_id not in prompt:
            raise KeyError(f"no prompt for question id {trajectory.question_id!r}")
        return prompt[trajectory.question_id]
    return prompt(trajectory)


def check_pair_settings(margin: float, max_pairs_per_question: int) -> None:
    """Raise ``ValueError`` naming the argument when the margin is outside [0, 1] or no pair is allowed."""
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0.0 <= margin <= 1.0:
        raise ValueError(
            f"margin must be a number in [0, 1] (rewards are mean step scores in [0, 1]), got {margin!r}"
        )
    if (
        isinstance(max_pairs_per_question, bool)
        or not isinstance(max_pairs_per_question, int)
        or max_pairs_per_question < 1
    ):
        raise ValueError(f"max_pairs_per_question must be an integer >= 1, got {max_pairs_per_question!r}")


def checked_rewards(trajectories: Sequence[Trajectory], scores: Sequence[Sequence[float]]) -> list[float]:
    """Each trajectory's reward, after checking that its scores are one number in [0, 1] per step."""
    if len(scores) != len(trajectories):
        raise ValueError(
            f"scores has {len(scores)} lists for {len(trajectories)} trajectories; give one list per trajectory"
        )
    rewards = []
    for index, (trajectory, step_scores) in enumerate(zip(trajectories, scores, strict=True)):
        where = f"trajectory {index} (question_id {trajectory.question_id!r})"
        if len(step_scores) != trajectory.num_steps:
            raise ValueError(f"{where}: {len(step_scores)} scores for {trajectory.num_steps} steps")
        if trajectory.num_steps == 0:
            raise ValueError(f"{where}: has no steps, so no reward; drop it before pairing")
        for j, value in enumerate(step_scores):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}: score of step {j} must be a number in [0, 1], got {value!r}")
        rewards.append(trajectory_reward(step_scores))
    return rewards


def candidate_pairs(
    members: Sequence[int],
    trajectories: Sequence[Trajectory],
    rewards: Sequence[float],
    margin: float,
    require_correct_chosen: bool,
    dedup_key: Callable[[Trajectory], Hashable] = normalised_steps,
    min_chosen_reward: float = 0.0,
) -> list[tuple[float, int, int]]:
    """``(r_w - r_l, w, l)`` for every ordered pair of one question's trajectories that may be a pair.

    A pair needs ``r_w - r_l >= margin`` and ``r_w > r_l`` (so a zero margin never pairs equal rewards both
    ways), ``r_w >= min_chosen_reward``, two different solutions (``dedup_key`` differs), and, with
    ``require_correct_chosen``, a chosen side whose outcome is True. Sorted by margin, largest first; ties by
    the input order of the chosen side, then of the rejected side.
    """
    found = []
    for w in members:
        if require_correct_chosen and trajectories[w].outcome is not True:
            continue
        if not reaches_reward(rewards[w], min_chosen_reward):
            continue
        for lose in members:
            gap = rewards[w] - rewards[lose]
            if gap <= 0 or gap < margin - MARGIN_TOLERANCE:
                continue
            if dedup_key(trajectories[w]) == dedup_key(trajectories[lose]):
                continue
            found.append((gap, w, lose))
    found.sort(key=lambda c: (-c[0], c[1], c[2]))
    return found


def select_pairs(candidates: Sequence[tuple[float, int, int]], limit: int) -> list[tuple[float, int, int]]:
    """Up to ``limit`` candidates, preferring trajectories not yet used on the same side.

    Pass 1 walks the candidates in order (largest margin first) and takes one when its chosen trajectory is
    not yet a chosen side and its rejected trajectory not yet a rejected side; pass 2 fills the remaining
    places with the skipped candidates, in the same order. So the pairs are as varied as the margins allow,
    and a question with one good and many bad samples still gets ``limit`` pairs.
    """
    chosen_used: set[int] = set()
    rejected_used: set[int] = set()
    taken, skipped = [], []
    for candidate in candidates:
        _, w, lose = candidate
        if w in chosen_used or lose in rejected_used:
            skipped.append(candidate)
            continue
        taken.append(candidate)
        chosen_used.add(w)
        rejected_used.add(lose)
        if len(taken) == limit:
            return taken
    return taken + skipped[: limit - len(taken)]


def build_pairs(
    trajectories: Sequence[Trajectory],
    scores: Sequence[Sequence[float]],
    margin: float = 0.3,
    max_pairs_per_question: int = 4,
    require_correct_chosen: bool = True,
    prompt: PromptSource = None,
    dedup_key: Callable[[Trajectory], Hashable] = normalised_steps,
    min_chosen_reward: float = 0.0,
    first_error_below: float | None = None,
) -> list[PreferencePair]:
    """ORPO pairs ``(τ_w, τ_l)`` per question with ``r(τ_w) - r(τ_l) >= margin``, largest margin first.

    ``r`` is :func:`trajectory_reward`, the mean of the verifier's step scores (``scores[i]`` holds one score
    in [0, 1] per step of ``trajectories[i]``). With ``require_correct_chosen`` (default) the chosen side
    must have outcome True; off, any trajectory may be chosen (the paper's score-only rule). A pair also
    needs a strictly higher chosen reward and two different solutions (:func:`candidate_pairs`).

    Reuse rule: per question, a trajectory is on the chosen side of at most one pair and on the rejected
    side of at most one pair while candidates with unused trajectories remain; only when those run out
    before ``max_pairs_per_question`` are trajectories reused, again largest margin first
    (:func:`select_pairs`). A trajectory can be chosen in one pair and rejected in another (a middling
    sample beats a bad one and loses to a good one). Ties in margin go to the earlier chosen trajectory in
    ``trajectories``, then to the earlier rejected one, so the result depends only on the inputs' order.

    Args:
        trajectories: sampled trajectories of any number of questions, with outcomes.
        scores: the verifier's step scores, one list per trajectory, one value per step.
        margin: the least reward difference η of a pair, in [0, 1] (0.3: the paper's value).
        max_pairs_per_question: at most this many pairs per question (>= 1).
        require_correct_chosen: the chosen side must be a correct answer.
        prompt: the prompt the reasoner sees: a function of the trajectory, a mapping from question id to
            prompt, or ``None`` for the trajectory's question text.
        dedup_key: when two trajectories are the same solution (never a pair); pass the task's
            ``dedup_key``. Default: :func:`~sapo.data.steps.normalised_steps`, the base task's rule.
        min_chosen_reward: the least reward of a chosen side (0: any); a trajectory below it may still be
            a rejected side.
        first_error_below: τ; when given, each pair's rejected side gets its first step scored under it
            (:func:`~sapo.data.trajectory.first_error_of`) as ``rejected_first_error``, so that the
            preference term acts from that step on; a rejected side with no such step has none, and the
            term sees it whole. ``None``: no pair marks a first error.

    Returns:
        The pairs, question by question in order of first appearance, each with its reward margin.

    Raises:
        ValueError: the margin or ``min_chosen_reward`` is outside [0, 1], ``max_pairs_per_question < 1``, or
            the scores do not match the trajectories (the message names the trajectory's index and question
            id).
    """
    check_pair_settings(margin, max_pairs_per_question)
    if not 0.0 <= min_chosen_reward <= 1.0:
        raise ValueError(
            f"min_chosen_reward must be in [0, 1] (a mean step score), got {min_chosen_reward!r}"
        )
    rewards = checked_rewards(trajectories, scores)

    def select(members: list[int]) -> list[tuple[float, int, int]]:
        candidates = candidate_pairs(
            members, trajectories, rewards, margin, require_correct_chosen, dedup_key, min_chosen_reward
        )
        return select_pairs(candidates, max_pairs_per_question)

    first_errors = (
        None if first_error_below is None else [first_error_of(s, first_error_below) for s in scores]
    )
    return _pairs_per_question(trajectories, select, prompt, first_errors)


def _pairs_per_question(
    trajectories: Sequence[Trajectory],
    select: Callable[[list[int]], list[tuple[float, int, int]]],
    prompt: PromptSource,
    first_errors: Sequence[int] | None = None,
) -> list[PreferencePair]:
    """The pairs ``select`` picks among each question's trajectories (indices into ``trajectories``, as
    ``(margin, chosen, rejected)``), question by question in order of first appearance; with
    ``first_errors`` (one per trajectory, :data:`~sapo.data.trajectory.NO_ERROR` for none), each rejected
    side's becomes its pair's ``rejected_first_error``."""
    by_question: dict[str, list[int]] = {}
    for index, trajectory in enumerate(trajectories):
        by_question.setdefault(trajectory.question_id, []).append(index)
    return [
        PreferencePair(
            question_id=question_id,
            prompt=prompt_of(trajectories[w], prompt),
            chosen=list(trajectories[w].steps),
            rejected=list(trajectories[lose].steps),
            margin=gap,
            rejected_first_error=(
                None if first_errors is None or first_errors[lose] == NO_ERROR else first_errors[lose]
            ),
        )
        for question_id, members in by_question.items()
        for gap, w, lose in select(members)
    ]


def outcome_pairs(
    trajectories: Sequence[Trajectory],
    scores: Sequence[Sequence[float]] | None,
    max_pairs_per_question: int = 4,
    prompt: PromptSource = None,
    dedup_key: Callable[[Trajectory], Hashable] = normalised_steps,
) -> list[PreferencePair]:
    """SPHERE's pairs: a right solution (outcome True) over a wrong one (outcome False) of the same question,
    whatever the verifier's rewards; the rewards choose which.

    Candidates are ordered by the rejected side's reward, highest first (the wrong solutions the verifier
    rated best are the ones the reasoner most needs to unlearn), then by the chosen side's reward, highest
    first, then by input order; :func:`select_pairs` takes up to ``max_pairs_per_question`` with its reuse
    rule. Each pair's ``margin`` is ``r_w - r_l`` (negative where the verifier preferred the wrong side).
    Solutions equal under ``dedup_key`` are never paired; ``scores`` are checked as in :func:`build_pairs`.
    ``scores=None`` pairs without a verifier (the paper's "w/o RM"): every reward is 0, so the input order
    decides, and every margin is 0.
    """
    check_pair_settings(0.0, max_pairs_per_question)
    if scores is None:
        scores = [[0.0] * t.num_steps for t in trajectories]
    rewards = checked_rewards(trajectories, scores)

    def select(members: list[int]) -> list[tuple[float, int, int]]:
        right = [i for i in members if trajectories[i].outcome is True]
        wrong = [i for i in members if trajectories[i].outcome is False]
        candidates = [
            (w, lose)
            for w in right
            for lose in wrong
            if dedup_key(trajectories[w]) != dedup_key(trajectories[lose])
        ]
        candidates.sort(key=lambda c: (-rewards[c[1]], -rewards[c[0]], c[0], c[1]))
        ordered = [(rewards[w] - rewards[lose], w, lose) for w, lose in candidates]
        return select_pairs(ordered, max_pairs_per_question)

    return _pairs_per_question(trajectories, select, prompt)


def rft_pairs(
    trajectories: Sequence[Trajectory],
    prompt: PromptSource = None,
    dedup_key: Callable[[Trajectory], Hashable] = normalised_steps,
) -> list[PreferencePair]:
    """RFT's data: one SFT pair (no rejected side) per distinct correct trajectory of each question.

    Keeps trajectories whose outcome is True; of those with equal ``(question_id, dedup_key(τ))`` the first
    is kept. ``dedup_key`` defaults to the normalised steps; a task's ``dedup_key`` (equations for math,
    normalised source for code) can be passed instead. Which trajectories count (self-sampled only, or with
    the gold solutions) is the caller's choice: pass the ones to train on.
    """
    seen: set[tuple[str, Hashable]] = set()
    pairs = []
    for trajectory in trajectories:
        if trajectory.outcome is not True:
            continue
        key = (trajectory.question_id, dedup_key(trajectory))
        if key in seen:
            continue
        seen.add(key)
        pairs.append(
            PreferencePair(trajectory.question_id, prompt_of(trajectory, prompt), list(trajectory.steps))
        )
    return pairs


def unpaired_correct(
    trajectories: Sequence[Trajectory],
    pairs: Sequence[PreferencePair],
    prompt: PromptSource = None,
    dedup_key: Callable[[Trajectory], Hashable] = normalised_steps,
) -> list[PreferencePair]:
    """SFT rows (no rejected side) of the distinct correct trajectories that no pair of ``pairs`` holds as
    its chosen side: :func:`rft_pairs` less the chosen sides, compared by ``(question_id, dedup_key(τ))``.

    With them a round trains on every correct solution RFT would, and adds the preference term where a
    pair was found: a right sample that no pair chose (the only distinct sample of its question, a tie of
    rewards, one beyond ``max_pairs_per_question``) is not lost.
    """
    key_of = {(t.question_id, tuple(t.steps)): dedup_key(t) for t in trajectories}
    chosen = {(p.question_id, key_of.get((p.question_id, tuple(p.chosen)))) for p in pairs}
    return [
        row
        for row in rft_pairs(trajectories, prompt=prompt, dedup_key=dedup_key)
        if (row.question_id, key_of[(row.question_id, tuple(row.chosen))]) not in chosen
    ]
