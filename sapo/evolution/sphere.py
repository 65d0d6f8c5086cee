"""SphereEvolution: SPHERE's self-evolution (tree search, self-correction, diversity, DPO) on the loop's phases.

::

    M0 = SFT(M, D_org)                                          phase "sft"
    V  = TrainVerifier(M0, BinarySearch(Sample(M0) ∪ D_org))     "samples_0", "labels_0", "verifier_0", "eval_0"
    for t in 1..T:
        St = TreeSearch(M_{t-1} + second model, pruned by V)     "search_t"
        Ct = SelfCorrect(M_{t-1}, V, wrong leaves of St)         "corrections_t"
        Pt = right over wrong leaves of St ∪ Ct's pairs          "pairs_t"
        Mt = DPO(init = M_{t-1}, reference = M_{t-1}, Pt)        "orpo_t" (with orpo.loss: dpo), then "eval_t"

SPHERE ("Self-Evolved Preference Optimization for Enhancing Mathematical Reasoning in Small Language Models",
2025) prunes its trees with a process reward model; here that is the loop's first verifier, trained as the
SAPO loop trains it (binary-search labels on M0's samples), and kept for every iteration. Every phase runs
through the loop's skeleton, so a SPHERE run resumes, logs and reports as a SAPO run does; the search and
the corrections write chunk by chunk. The components are the library's: :mod:`sapo.rollout.tree_search`,
:func:`sapo.supervision.self_correct`, :class:`sapo.models.reasoner.DPOReasoner`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L

from sapo.data.pairs import outcome_pairs, unpaired_correct
from sapo.data.tasks.base import Question
from sapo.data.trajectory import Cost, Trajectory, TrajectoryFormatError, read_jsonl, write_jsonl
from sapo.evolution.backends import frozen_dtype
from sapo.evolution.chunks import label_subset, progress, sampler_factory, trajectories_in_chunks
from sapo.evolution.compare import Arm, compare_arms, write_comparison
from sapo.evolution.data import SAPSDataModule
from sapo.evolution.loop import SelfEvolution
from sapo.evolution.run_directory import ChunkedJsonl
from sapo.evolution.settings import FLAG, CorrectionSettings, DiversitySettings, SearchSettings
from sapo.models.backbone import BackboneSpec, load_tokenizer
from sapo.models.verifier import PRMVerifier
from sapo.rollout import GenerationBackend, Sampler, TaskRolloutSampler, TransformersBackend, derive_seed
from sapo.rollout.tree_search import StepBeamSearch, StepMCTS, StepProposer, StepTreeSearch
from sapo.supervision import Correction, correction_pairs, self_correct

__all__ = ["SphereEvolution"]


class SphereEvolution(SelfEvolution):
    """SPHERE's loop: each iteration searches a step tree per question, rewrites wrong leaves from their first
    error, and trains the reasoner on the pairs (see :mod:`sapo.evolution.sphere` for the phases).

    Takes every argument of :class:`~sapo.evolution.SelfEvolution` (``sampling`` and ``labelling`` make the
    verifier of round 0, and ``sampling`` the rewrites; ``orpo`` trains each round: SPHERE's is ``loss: dpo``
    with ``init: previous``, as ``configs/sphere.yaml`` sets; ``pairs`` gives ``max_per_question`` and
    ``add_unpaired_correct``: SPHERE pairs right over wrong answers (:func:`~sapo.data.pairs.outcome_pairs`),
    so ``margin`` and ``require_correct_chosen`` do not apply) and:

    Args:
        search: the tree search (SPHERE: 5 candidate steps per node at temperature 0.8).
        diversity: the second model's candidate steps (SPHERE: about 10 per node).
        correction: rewriting wrong leaves from their first error.
        compare_with: a SAPO run directory answered on the same held-out questions (by default the run this
            one began from, ``branch_from``): the report ends with its iterations set beside this run's,
            each with paired 95% intervals against the SFT start and against SAPO's last iteration
            (:func:`~sapo.evolution.compare.compare_arms`; files under ``<run_dir>/comparison``).
    """

    def __init__(
        self,
        *args: Any,
        search: SearchSettings = SearchSettings(),
        diversity: DiversitySettings = DiversitySettings(),
        correction: CorrectionSettings = CorrectionSettings(),
        compare_with: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: the SAPO run set beside this one in the report: the one given, else the run this one began from
        self.compare_with = compare_with if compare_with is not None else self.branch_from
        # copies: the defaults are shared instances
        self.search, self.diversity, self.correction = copy.deepcopy((search, diversity, correction))
        if self.pairs.source != "verifier":
            raise ValueError(
                f"{FLAG}.pairs.source must be 'verifier' for SPHERE (its verifier prunes the search), got "
                f"{self.pairs.source!r}"
            )

    def fit(
        self, trainer: L.Trainer, data: SAPSDataModule, settings: dict[str, Any] | None = None
    ) -> list[dict]:
        """Check the second model (it loads, and shares the reasoner's tokenizer) before any work, then run."""
        self._check_diversity_model()
        return super().fit(trainer, data, settings)

    def _check_diversity_model(self) -> None:
        if self.diversity.model is None or self.diversity.candidates == 0:
            return
        flag = f"{FLAG}.diversity.model"
        reasoner = load_tokenizer(self.reasoner_spec.name_or_path, cache_dir=self.reasoner_spec.cache_dir)
        try:
            second = load_tokenizer(self.diversity.model, cache_dir=self.reasoner_spec.cache_dir)
            model, _ = self._diversity_spec().load()  # loaded once here, so that a broken model fails now
            del model
        except Exception as error:  # any loading failure, reported with the key that named the model
            raise ValueError(f"{flag}: {self.diversity.model!r} does not load: {error}") from error
        if second.get_vocab() != reasoner.get_vocab():
            raise ValueError(
                f"{flag}: {self.diversity.model!r} has another tokenizer than the reasoner "
                f"({len(second.get_vocab())} against {len(reasoner.get_vocab())} tokens); SPHERE's second model "
                "must share the reasoner's vocabulary"
            )

    # --- the phases -----------------------------------------------------------------------------------------
    def _run_phases(self) -> list[dict]:
        reasoner, _, _, verifier = self._round_zero()
        for t in range(1, self.iterations + 1):
            leaves = self._search_phase(t, reasoner, verifier)
            corrections = self._correction_phase(t, reasoner, verifier, leaves)
            pairs_file = self._sphere_pairs_phase(t, leaves, corrections)
            reasoner = self._orpo_phase(t, pairs_file, reasoner)
            self._eval_phase(t, reasoner, verifier)
        metrics = self._finish()
        if self.compare_with is not None and self.ranks.writer:
            self._compare(Path(self.compare_with))
        return metrics

    def _compare(self, other: Path) -> None:
        """This run's iterations beside ``other``'s (SAPO's), appended to the report."""
        theirs = [t for t in range(1, self.iterations + 1) if (other / f"heldout_{t}.jsonl").is_file()]
        ours = [t for t in range(1, self.iterations + 1) if (self.run_dir / f"heldout_{t}.jsonl").is_file()]
        if not theirs:
            print(f"[sapo] {FLAG}.compare_with: {other} has no finished iteration to compare with")
            return
        sapo = Arm(f"SAPO {theirs[-1]}", other, theirs[-1])
        arms = [Arm("SFT", self.run_dir, 0)] + [Arm(f"SAPO {t}", other, t) for t in theirs]
        arms += [Arm(f"SPHERE {t}", self.run_dir, t) for t in ours]
        try:  # the run is finished and reported: a comparison that cannot be made is said, not raised
            results = compare_arms(arms, reference=arms[0], method=sapo)
        except (ValueError, FileNotFoundError) as error:
            print(f"[sapo] {FLAG}.compare_with: no comparison with {other}: {error}")
            return
        table = write_comparison(
            results, self.run_dir / "comparison", "SFT", sapo.name, title=f"SPHERE beside SAPO ({other})"
        )
        with (self.run_dir / "report.md").open("a", encoding="utf-8") as report:
            report.write("\n" + table.read_text(encoding="utf-8").replace("# SPHERE", "## SPHERE", 1))
        print(f"[sapo] SPHERE beside SAPO: {table}")

    def _search_phase(self, t: int, reasoner: Path, verifier: Path) -> list[Trajectory]:
        name, path = f"search_{t}", self.run_dir / f"search_{t}.jsonl"

        def work() -> dict[str, Any]:
            backend, tokenizer = self._backends.open(reasoner, self.search.batch_size)
            second = self._diversity_backend(tokenizer)
            scorer = self._load_verifier(verifier)
            questions = self.data.iteration_questions(t, self.search.questions_per_iteration, self.seed)
            cost = Cost()

            def search(chunk: Sequence[Question], seed: int) -> tuple[list[Trajectory], Cost]:
                tree = self._tree_search(backend, second, tokenizer, scorer, seed, chunk)
                return tree.search(chunk), tree.last_cost

            with self._precision():
                leaves = trajectories_in_chunks(
                    self.data.chunks(questions),
                    search,
                    derive_seed(self.seed, name),
                    self._store(name),
                    cost,
                    self.ranks,
                )
            if self.search.include_gold:
                gold = self.data.gold_trajectories(questions)
                with self._precision():
                    for trajectory, scores in zip(gold, scorer.score(gold), strict=True):
                        trajectory.meta["step_scores"] = scores
                leaves = gold + leaves
            if self.ranks.writer:
                write_jsonl(leaves, path)
            right = {s.question_id for s in leaves if s.outcome}
            return {
                "questions": len(questions),
                "leaves": len(leaves),
                "correct": sum(bool(s.outcome) for s in leaves),
                "questions_with_correct": len(right),
                "search_cost": cost.to_dict(),
                **self._backends.summary(),
            }

        self._phase(name, work, method=self.search.method)
        return read_jsonl(path)

    def _tree_search(
        self,
        backend: GenerationBackend,
        second: GenerationBackend | None,
        tokenizer: Any,
        scorer: PRMVerifier,
        seed: int,
        questions: Sequence[Question],
    ) -> StepTreeSearch:
        """One chunk's search: the reasoner's proposer and, with diversity induction, the second model's."""
        settings = self.search

        def sampler(on: GenerationBackend, temperature: float, role: str) -> Sampler:
            return Sampler(
                None,
                tokenizer,
                max_new_tokens=settings.step_max_new_tokens,
                temperature=temperature,
                top_p=settings.top_p,
                batch_size=settings.batch_size,
                seed=derive_seed(seed, role),
                backend=on,
                progress=False,
            )

        proposers = [StepProposer(sampler(backend, settings.temperature, "reasoner"), settings.candidates)]
        if self.diversity.candidates:
            on = backend if second is None else second
            diverse = sampler(on, self.diversity.temperature, "diversity")
            proposers.append(StepProposer(diverse, self.diversity.candidates, name="diversity"))
        common = {"max_depth": settings.max_depth, "questions": questions}
        if settings.method == "beam":
            return StepBeamSearch(self.data.task, proposers, scorer, width=settings.width, **common)
        return StepMCTS(
            self.data.task,
            proposers,
            scorer,
            simulations=settings.simulations,
            exploration=settings.exploration,
            **common,
        )

    def _diversity_backend(self, tokenizer: Any) -> GenerationBackend | None:
        """The second model's backend (transformers), or None when the reasoner stands in for it."""
        if self.diversity.model is None or not self.diversity.candidates:
            if self.diversity.candidates and self.ranks.writer:
                print(
                    f"[sapo] diversity induction: no second model ({FLAG}.diversity.model is null), so the "
                    f"reasoner proposes {self.diversity.candidates} more candidate steps at temperature "
                    f"{self.diversity.temperature}"
                )
            return None
        model, _ = self._diversity_spec().load()
        model.eval()
        return TransformersBackend(
            model, tokenizer, self.search.batch_size, decode_attention=self.sampling.decode_attention
        )

    def _diversity_spec(self) -> BackboneSpec:
        """The second model, loaded as the reasoner's frozen copies are (dtype, device), without adapters."""
        return replace(
            self.reasoner_spec,
            name_or_path=str(self.diversity.model),
            dtype=frozen_dtype(self.reasoner_spec),
            lora=None,
            load_in_4bit=False,
            gradient_checkpointing=False,
        )

    def _correction_phase(
        self, t: int, reasoner: Path, verifier: Path, leaves: list[Trajectory]
    ) -> list[Correction]:
        name, path = f"corrections_{t}", self.run_dir / f"corrections_{t}.jsonl"
        wrong = [s for s in leaves if s.outcome is False and s.num_steps > 0]
        count = self.correction.per_iteration
        subset = label_subset(wrong, count, derive_seed(self.seed, name), t)
        by_id = {q.id: q for q in self.data.questions}
        chunks = self.data.chunks(subset)

        def work() -> dict[str, Any]:
            store = self._store(name)
            backend, tokenizer = self._backends.open(reasoner)
            scorer = self._load_verifier(verifier)
            make_sampler = sampler_factory(self.sampling, backend, tokenizer)
            with self._precision():
                for index, chunk in enumerate(chunks):
                    if self.ranks.mine(index) and not store.has(index):
                        store.start(index, of=len(chunks))
                        rollouts = TaskRolloutSampler(
                            make_sampler(derive_seed(self.seed, name, index)),
                            self.data.task,
                            [by_id[s.question_id] for s in chunk],
                        )
                        made = self_correct(
                            chunk, rollouts, scorer, self.correction.attempts, self.correction.threshold
                        )
                        store.write(index, [c.to_dict() for c in made])
                        progress(name, index, len(chunks), self.ranks)
            self.ranks.barrier()
            corrections = self._read_corrections(store, len(chunks))
            if self.ranks.writer:
                write_jsonl([c.to_dict() for c in corrections], path)
            del backend, scorer
            cost = sum((c.cost for c in corrections), Cost())
            return {
                "wrong_leaves": len(wrong),
                "rewritten": len(corrections),
                "corrected": sum(c.corrected is not None for c in corrections),
                "correction_cost": cost.to_dict(),
            }

        if count == 0:
            return []
        self._phase(name, work, trajectories=len(subset))
        return self._read_corrections(self._store(name), len(chunks))

    @staticmethod
    def _read_corrections(store: ChunkedJsonl, chunks: int) -> list[Correction]:
        corrections = []
        for index in range(chunks):
            for number, record in enumerate(store.read_records(index), start=1):
                try:
                    corrections.append(Correction.from_dict(record))
                except (KeyError, TypeError, ValueError) as error:
                    raise TrajectoryFormatError(
                        f"{store.path(index)}, line {number}: not a correction ({error!r}); delete the file to "
                        "make the chunk again"
                    ) from None
        return corrections

    def _sphere_pairs_phase(self, t: int, leaves: list[Trajectory], corrections: list[Correction]) -> Path:
        name, path = f"pairs_{t}", self.run_dir / f"pairs_{t}.jsonl"

        def work() -> dict[str, Any]:
            prompts, key = self._task_prompts(), self.data.task.dedup_key
            candidates = [s for s in leaves if s.num_steps > 0 and s.outcome is not None]
            # the verifier's scores of every leaf's steps were computed by the search that pruned with them
            scores = [s.meta["step_scores"] for s in candidates]
            pairs = outcome_pairs(
                candidates,
                scores,
                max_pairs_per_question=self.pairs.max_per_question,
                prompt=prompts,
                dedup_key=key,
            )
            corrected = correction_pairs(corrections, prompt=prompts, dedup_key=key)
            rows = pairs + corrected
            if self.pairs.add_unpaired_correct:
                right = candidates + [c.corrected for c in corrections if c.corrected is not None]
                rows += unpaired_correct(right, rows, prompt=prompts, dedup_key=key)
            write_jsonl(rows, path)
            return {
                "pairs": len(rows),
                "leaf_pairs": len(pairs),
                "correction_pairs": len(corrected),
                "questions_with_pairs": len({p.question_id for p in rows}),
                "with_rejected": sum(p.rejected is not None for p in rows),
            }

        self._phase(name, work, everywhere=False)
        return path
