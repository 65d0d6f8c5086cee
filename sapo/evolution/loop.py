"""SelfEvolution: the whole loop of paper Algorithm 1 behind ``sapo fit``.

::

    M0 = SFT(M, D_org)                              phase "sft"
    D0 = Sample(M0) ∪ D_org                          "samples_0"
    L0 = BinarySearchSupervision(M0, subset(D0))     "labels_0"
    V0 = TrainVerifier(init = M0, L0)                "verifier_0", then "eval_0"
    for t in 1..T:
        Dt = Sample(M_{t-1}) ∪ D_{t-1}               "samples_t"
        Lt = strategy(M_{t-1}, V_{t-1}, subset(new)) "labels_t"
        Vt = TrainVerifier(init = M_{t-1}, Lt ∪ L_{t-1})  "verifier_t"
        Pt = Pairs(Vt, Dt)                           "pairs_t"
        Mt = ORPO(init = M, Pt)                      "orpo_t", then "eval_t"

``SelfEvolution`` is not a LightningModule: it trains none of its own parameters. It is a recipe that
composes LightningModules (an :class:`~sapo.models.reasoner.ORPOReasoner` for SFT and ORPO, a
:class:`~sapo.models.verifier.PRMVerifier` per iteration) with a fresh Lightning ``Trainer`` per training
phase (``docs/loop.md`` says why), and does the sampling and labelling between them.

Every phase runs through one skeleton (:meth:`SelfEvolution._phase`): skip it if the manifest has it
finished, else record its start, seed every random generator from the run's seed and the phase's name,
do its work (which writes its artifacts), record it finished with a summary and its peak memory
(:mod:`sapo.evolution.memory`), and free the models it loaded. As each phase's random state depends only
on the seed and the phase (and each chunk's on the chunk), a run killed anywhere and resumed makes the
same artifacts as one that never stopped; sampling and labelling write chunk by chunk
(:mod:`sapo.evolution.chunks`), so a rerun skips a half-done phase's finished chunks. A run may begin
with another run's first phases, copied (:mod:`sapo.evolution.branch`).

Phase trainers copy the ``sapo fit`` trainer's accelerator, devices, precision, accumulation and clipping,
and log under ``<run_dir>/logs/phases/<phase>``; per-iteration metrics go to ``<run_dir>/logs/iterations/``
(``metrics.csv`` rewritten from the manifest, so a resumed run keeps one file; TensorBoard), to the ``sapo
fit`` trainer's other loggers (W&B, MLflow, ...) and to ``<run_dir>/report.md``. On several processes every
rank runs every phase (:mod:`sapo.evolution.distributed`; ``docs/scale.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L

from sapo.data.datamodule import gold_pairs
from sapo.data.preference import read_pairs
from sapo.data.trajectory import Cost, Trajectory, read_jsonl, write_jsonl
from sapo.eval.processbench import evaluate_on_oracle
from sapo.eval.reasoner import sample_and_check
from sapo.evolution.backends import ReasonerBackends, chosen_backend, frozen_dtype
from sapo.evolution.branch import RERUN_ADJUSTABLE, begin_branch
from sapo.evolution.chunks import label_in_chunks, label_subset, sample_in_chunks, sampler_factory
from sapo.evolution.data import LabelledData, SAPSDataModule, TaskPrompts
from sapo.evolution.distributed import Ranks, device_for_rank, launch, torch_threads_for_rank
from sapo.evolution.memory import PhaseMemory, collect_only_new, release_memory
from sapo.evolution.pair_sources import check_pair_source, round_pairs
from sapo.evolution.report import publish_iteration, write_report
from sapo.evolution.run_directory import (
    ChunkedJsonl,
    RunDirectory,
    library_defaults,
    round_cost,
    setting_differences,
)
from sapo.evolution.settings import (
    FLAG,
    EvaluationSettings,
    LabellingSettings,
    ORPOSettings,
    PairSettings,
    SamplingSettings,
    SFTSettings,
    VerifierSettings,
)
from sapo.evolution.trainers import iteration_loggers, phase_trainer
from sapo.models.backbone import BackboneSpec, LoraSettings, load_tokenizer
from sapo.models.reasoner import DPOReasoner, ORPOReasoner
from sapo.models.verifier import PRMVerifier
from sapo.rollout import derive_seed
from sapo.supervision.oracle_scorer import OracleScorer

__all__ = ["SelfEvolution"]

#: settings a finished run may raise to continue (a new iteration is appended, nothing is redone)
EXTENDABLE = ("model.init_args.iterations",)


class SelfEvolution:
    """The self-evolution loop: SFT, then T iterations of sample, label, verifier, pairs, ORPO.

    ``sapo fit`` with this as its ``model`` runs :meth:`fit` (see :mod:`sapo.evolution.loop` for the
    phases); its ``data`` must be a :class:`~sapo.evolution.data.SAPSDataModule`. The models of each phase
    are loaded when the phase starts and saved when it ends, under ``run_dir``.

    Args:
        reasoner: the base model M and how to train it (dtype, LoRA, 4-bit). Its LoRA settings apply to SFT
            and ORPO; the verifier has its own (``verifier.lora``).
        run_dir: where every phase's artifacts, the manifest and the report go. Rerunning with the same
            ``run_dir`` resumes after the last finished phase.
        iterations: T (the paper: 3). 0 gives the SFT-only baseline (with the first verifier).
        seed: the root of every seed of the run: each phase's and chunk's sampling, the subset draws, and
            each training phase (``seed_everything(derive_seed(seed, phase))``).
        sft: the SFT phase.
        sampling: sampling the reasoner (trajectories and rollouts).
        labelling: the supervision strategies and which samples they label.
        verifier: training the verifier.
        pairs: the preference pairs.
        orpo: each round's ORPO.
        evaluation: the held-out evaluation after each iteration.
        release_heap_every_n_steps: hand the heap that a training step freed back to the system every this
            many steps, after dropping the step's gradients (:class:`~sapo.callbacks.ReleaseFreedHeap`; 0:
            neither). Not in the paper: without it glibc's heap fragments and the resident set grows with
            the steps (ORPO on SmolLM2-135M: 5.05 GiB after 20 steps, 3.83 with a trim after each, 3.71
            with the gradients dropped too, at the same speed).
        branch_from: another run's directory; this (empty) run begins with its phases through ``branch_after``,
            copied, so that an arm differs from that run only after them (:mod:`sapo.evolution.branch`).
        branch_after: the last phase copied from ``branch_from`` (``sft``, ``samples_1``, ``eval_0``, ...).
    """

    def __init__(
        self,
        reasoner: BackboneSpec,
        run_dir: str = "runs/sapo",
        iterations: int = 3,
        seed: int = 0,
        sft: SFTSettings = SFTSettings(),
        sampling: SamplingSettings = SamplingSettings(),
        labelling: LabellingSettings = LabellingSettings(),
        verifier: VerifierSettings = VerifierSettings(),
        pairs: PairSettings = PairSettings(),
        orpo: ORPOSettings = ORPOSettings(),
        evaluation: EvaluationSettings = EvaluationSettings(),
        release_heap_every_n_steps: int = 1,
        branch_from: str | None = None,
        branch_after: str | None = None,
    ) -> None:
        if (branch_from is None) != (branch_after is None):
            raise ValueError(
                "model.init_args.branch_from and model.init_args.branch_after: give both or neither"
            )
        self.branch_from, self.branch_after = branch_from, branch_after
        if iterations < 0:
            raise ValueError(f"model.init_args.iterations must be at least 0, got {iterations}")
        if release_heap_every_n_steps < 0:
            raise ValueError(
                "model.init_args.release_heap_every_n_steps must be at least 0, got "
                f"{release_heap_every_n_steps}"
            )
        self.release_heap_every_n_steps = release_heap_every_n_steps
        self.reasoner_spec = reasoner
        self.run_dir = Path(run_dir)
        self.iterations = iterations
        self.seed = seed
        # copies: the defaults are shared instances, and the strategies inside may keep state
        self.sft, self.sampling, self.labelling, self.verifier, self.pairs, self.orpo, self.evaluation = (
            copy.deepcopy((sft, sampling, labelling, verifier, pairs, orpo, evaluation))
        )
        #: the verifier's adapter: its own, else SIPF's LoRA when the reasoner trains with LoRA
        self.verifier_lora = (
            LoraSettings() if self.verifier.lora is None and reasoner.lora is not None else self.verifier.lora
        )
        chosen_backend(self.sampling.backend)  # vLLM asked for and not installed: fail before any work

    # --- the loop ---------------------------------------------------------------------------------------------
    def fit(
        self, trainer: L.Trainer, data: SAPSDataModule, settings: dict[str, Any] | None = None
    ) -> list[dict]:
        """Run (or resume) the loop; returns the per-iteration metrics also written to the report.

        Args:
            trainer: the template of every phase's trainer (accelerator, devices, precision, clipping) and
                the home of the per-iteration loggers.
            data: the tasks and how training batches are formed.
            settings: what the run's results depend on, recorded in the run directory's manifest; a rerun
                with other settings is refused (:class:`~sapo.evolution.run_directory.RunMismatchError`).
        """
        if not isinstance(data, SAPSDataModule):
            raise TypeError(
                f"SelfEvolution needs data: sapo.evolution.SAPSDataModule, got {type(data).__name__}"
            )
        with collect_only_new():  # each phase's collection skips the libraries' objects
            return launch(trainer, lambda ranks: self._fit_on_rank(trainer, data, settings, ranks))

    def _fit_on_rank(
        self, trainer: L.Trainer, data: SAPSDataModule, settings: dict[str, Any] | None, ranks: Ranks
    ) -> list[dict]:
        """:meth:`fit` on one process of the launch (the only one, or rank ``ranks.rank`` of several)."""
        self.template, self.data, self.ranks = trainer, data, ranks
        check_pair_source(self.pairs, data.task)
        ranks.agree(settings, lambda a, b: list(setting_differences(a, b)))
        torch_threads_for_rank(ranks)
        if device_for_rank(trainer):  # each process samples and scores on its own GPU
            self.reasoner_spec = replace(self.reasoner_spec, device=device_for_rank(trainer))
        defaults = library_defaults(model=type(self), data=type(data))  # of settings added since a run
        self.run = RunDirectory(self.run_dir, settings, EXTENDABLE, RERUN_ADJUSTABLE, ranks.rank, defaults)
        if self.branch_from is not None and not self.run.finished:
            begin_branch(self.run, Path(self.branch_from), self.branch_after, settings, ranks, defaults)
        done = self.run.finished
        if done and ranks.writer:
            print(f"[sapo] resuming {self.run_dir}: {len(done)} phases finished ({done[-1]} last)")
        if data.heldout_task is None:
            print(
                "[sapo] warning: no held-out task (data.init_args.heldout_task is null): no accuracy is measured; "
                "the report says so"
            )
        self._loggers = iteration_loggers(self.template, self.run_dir)
        self._prompts: TaskPrompts | None = None
        self._backends = ReasonerBackends(
            self.sampling, self.reasoner_spec, frozen_dtype(self.reasoner_spec), self.seed, ranks
        )
        try:
            return self._run_phases()
        finally:
            self._backends.close()

    def _run_phases(self) -> list[dict]:
        reasoner, samples, labels, verifier = self._round_zero()
        all_samples, all_labels = samples, labels
        for t in range(1, self.iterations + 1):
            new = self._samples_phase(t, reasoner)
            all_samples = all_samples + new if self.sampling.accumulate else new
            new_labels = self._labels_phase(t, reasoner, verifier, new)
            all_labels = all_labels + new_labels if self.labelling.accumulate else new_labels
            verifier = self._verifier_phase(t, reasoner, all_labels)
            pairs_file = self._pairs_phase(t, verifier, all_samples)
            reasoner = self._orpo_phase(t, pairs_file, reasoner)
            self._eval_phase(t, reasoner, verifier)
        return self._finish()

    def _round_zero(self) -> tuple[Path, list[Trajectory], LabelledData, Path | None]:
        """M0, D0, L0, V0 and M0's evaluation: the phases before the first iteration."""
        reasoner = self._sft_phase()
        samples = self._samples_phase(0, reasoner)
        labels = self._labels_phase(0, reasoner, None, samples)
        verifier = self._verifier_phase(0, reasoner, labels)
        self._eval_phase(0, reasoner, verifier)
        return reasoner, samples, labels, verifier

    def _finish(self) -> list[dict]:
        """The run's end: the report, and the per-iteration metrics :meth:`fit` returns."""
        metrics = self._iteration_metrics()
        if self.ranks.writer:
            write_report(self.run, metrics)
            print(f"[sapo] done: report at {self.run_dir / 'report.md'}")
        return metrics

    def _phase(
        self, name: str, work: Callable[[], dict[str, Any]], everywhere: bool = True, **start: Any
    ) -> dict[str, Any]:
        """The one skeleton of every phase: skip it when finished, else start, work, finish, free.

        ``work`` writes the phase's artifacts and returns its summary (JSON-able), which the manifest keeps
        and which is returned, also for a phase finished by an earlier process. With several processes
        ``work`` runs on every rank (``everywhere``) or on rank 0 alone, rank 0's summary is kept with every
        rank's memory peak, and a barrier ends the phase, so that rank 0's files are there for every rank.
        """
        if not self.run.done(name):
            self.run.start(name, **start)
            L.seed_everything(derive_seed(self.seed, name) % 2**31, workers=True, verbose=False)
            memory = PhaseMemory()
            memory.start()
            summary = self.ranks.broadcast(work() if everywhere or self.ranks.writer else None)
            peaks = self.ranks.gather(memory.summary())
            per_rank = {"memory_per_rank": peaks} if self.ranks.distributed else {}
            self.run.finish(name, **summary, memory=peaks[0], **per_rank)
            self.ranks.barrier()
            release_memory()
        return self.run.summary(name)

    # --- phases -------------------------------------------------------------------------------------------
    def _sft_phase(self) -> Path:
        def work() -> dict[str, Any]:
            if self.sft.epochs == 0:  # start the loop from the base model as it is
                return {"reasoner": str(self.reasoner_spec.name_or_path), "skipped": True}
            folder = self.run_dir / "sft" / "reasoner"
            module = self._reasoner_module(self.reasoner_spec, self.sft)
            self._fit("sft", module, self.data, self.sft.epochs)
            self._save(module, folder)
            return {"reasoner": str(folder), "pairs": len(self.data.train_pairs)}

        return Path(self._phase("sft", work)["reasoner"])

    def _samples_phase(self, t: int, reasoner: Path) -> list[Trajectory]:
        name, path = f"samples_{t}", self.run_dir / f"samples_{t}.jsonl"
        if self.pairs.source == "gold":  # SFT continued: trains on D_org alone, samples nothing
            return []

        def work() -> dict[str, Any]:
            backend, tokenizer = self._backends.open(reasoner)
            cost = Cost()
            questions = self.data.iteration_questions(t, self.sampling.questions_per_iteration, self.seed)
            with self._precision():
                samples = sample_in_chunks(
                    self.data.task,
                    self.data.chunks(questions),
                    self.sampling.samples_per_question,
                    sampler_factory(self.sampling, backend, tokenizer),
                    derive_seed(self.seed, "samples", t),
                    self._store(name),
                    cost,
                    self.ranks,
                )
            if t == 0 and self.sampling.include_gold:  # D_0 = Sample(M_0) ∪ D_org: the gold solutions of the
                # questions sampled, or all of them when the loop samples other questions than SFT's
                separate = self.data.gold_solutions is not None
                samples = self.data.gold_trajectories(None if separate else questions) + samples
            if self.ranks.writer:
                write_jsonl(samples, path)
            del backend
            return {
                "trajectories": len(samples),
                "correct": sum(bool(s.outcome) for s in samples),
                "sampling_cost": cost.to_dict(),
                **self._backends.summary(),
            }

        self._phase(name, work)
        return read_jsonl(path)

    def _labels_phase(
        self, t: int, reasoner: Path, verifier: Path | None, samples: list[Trajectory]
    ) -> LabelledData:
        name = f"labels_{t}"
        if not self._ranked:
            return LabelledData()
        strategy = self.labelling.initial_strategy if t == 0 else self.labelling.strategy
        new = [s for s in samples if s.label_source != "gold"]
        subset = label_subset(new, self.labelling.per_iteration, self.seed, t)
        if t == 0:  # subset(D_0), D_0 = samples ∪ D_org: the gold solutions are labelled too (all correct,
            # at no cost), so the first verifier sees correct solutions as well as the mostly wrong samples
            subset = [s for s in samples if s.label_source == "gold"] + subset
        store = self._store(name)

        def label(sampler: Any, scorer: Any) -> LabelledData:
            return label_in_chunks(
                strategy,
                self.data.task,
                self.data.questions,
                self.data.chunks(subset),
                sampler,
                scorer,
                derive_seed(self.seed, "labels", t),
                store,
                self.ranks,
            )

        def work() -> dict[str, Any]:
            backend, tokenizer = self._backends.open(reasoner)
            scorer = None if verifier is None else self._load_verifier(verifier)
            with self._precision():
                result = label(sampler_factory(self.sampling, backend, tokenizer), scorer)
            if self.ranks.writer:
                write_jsonl(result.trajectories, self.run_dir / f"labels_{t}.jsonl")
                write_jsonl(result.dropped, self.run_dir / f"dropped_{t}.jsonl")
            del backend, scorer
            summary = {"strategy": type(strategy).__name__, **result.stats(), **self._backends.summary()}
            if self.data.task.has_oracle:
                gold = [s for s in subset if s.label_source == "gold"]
                summary["labels_vs_oracle"] = result.against_oracle(self.data.task, self.data.questions, gold)
            return summary

        self._phase(name, work, strategy=type(strategy).__name__, trajectories=len(subset))
        return label(None, None)  # every chunk is on disk now: read back

    def _verifier_phase(self, t: int, reasoner: Path, labels: LabelledData) -> Path | None:
        name, folder = f"verifier_{t}", self.run_dir / f"verifier_{t}"
        if not self._ranked:
            return None

        def work() -> dict[str, Any]:
            task, settings = self.data.task, self.verifier
            module = PRMVerifier(
                settings.backbone(self.reasoner_spec, reasoner, self.verifier_lora),
                loss=settings.loss,
                learning_rate=settings.learning_rate,
                weight_decay=settings.weight_decay,
                warmup_ratio=settings.warmup_ratio,
                threshold=settings.threshold,
                separator=task.separator,
                max_length=self.data.max_length,
                instruction=task.instruction,
                prompt_template=task.prompt_template,
                use_chat_template=task.use_chat_template,
                prompt=self._task_prompts(),
            )
            data = self.data.verifier_data(labels.trajectories, module.collator)
            self._fit(name, module, data, settings.epochs, settings.gradient_clip)
            self._save(module, folder)
            return {"verifier": str(folder), "trajectories": len(data.items)}

        return Path(self._phase(name, work)["verifier"])

    def _pairs_phase(self, t: int, verifier: Path | None, samples: list[Trajectory]) -> Path:
        name, path = f"pairs_{t}", self.run_dir / f"pairs_{t}.jsonl"

        def work() -> dict[str, Any]:
            candidates = [s for s in samples if s.num_steps > 0 and s.outcome is not None]
            prompts = self._task_prompts()
            dedup = self.data.task.dedup_key
            if self.pairs.source == "gold":  # SFT continued: D_org's gold solutions again
                pairs = gold_pairs(self.data.task, prompts.tokenizer, self.data.gold_questions)
            else:  # only the ranked sources call for the step scores
                scores = partial(self._pair_scores, t, verifier, candidates)
                pairs = round_pairs(self.pairs, candidates, scores, prompts, dedup, self.verifier.threshold)
            write_jsonl(pairs, path)
            margins = [p.margin for p in pairs if p.margin is not None]
            return {
                "pairs": len(pairs),
                "questions_with_pairs": len({p.question_id for p in pairs}),
                "with_rejected": sum(p.rejected is not None for p in pairs),
                "rejected_after_right_steps": sum(bool(p.rejected_first_error) for p in pairs),
                "mean_margin": sum(margins) / max(1, len(margins)),
            }

        self._phase(name, work, everywhere=False)  # scores the whole set at once: on rank 0
        return path

    def _pair_scores(self, t: int, verifier: Path | None, candidates: list[Trajectory]) -> list[list[float]]:
        """Step scores that rank D_t's pairs: V_t's, or with ``pairs.source: oracle`` the task's exact ones."""
        if self.pairs.source == "oracle":  # a perfect verifier: what the ranking could add at best
            return OracleScorer(self.data.task).score(candidates)
        scorer = self._load_verifier(verifier)
        with self._precision():
            scores = scorer.score(candidates, description=f"scoring D_{t} for the pairs")
        del scorer
        release_memory()
        return scores

    def _orpo_phase(self, t: int, pairs_file: Path, previous: Path) -> Path:
        name, folder = f"orpo_{t}", self.run_dir / f"iteration_{t}" / "reasoner"

        def work() -> dict[str, Any]:
            pairs = read_pairs(pairs_file)
            if not pairs:  # nothing to learn from: say so, keep M_{t-1}, and go on
                print(
                    f"[sapo] iteration {t}: no preference pairs (see {pairs_file}); the reasoner stays as it "
                    f"was. Sample more ({FLAG}.sampling.samples_per_question), or lower {FLAG}.pairs.margin"
                )
                return {"reasoner": str(previous), "pairs": 0, "skipped": True}
            init = {
                "base": self.reasoner_spec,
                "sft": replace(self.reasoner_spec, name_or_path=self.run.summary("sft")["reasoner"]),
                "previous": replace(self.reasoner_spec, name_or_path=str(previous)),
            }[self.orpo.init]
            module = self._reasoner_module(init, self.orpo, self.orpo.loss)
            replayed = self.data.replayed_gold(pairs, module.tokenizer) if self.orpo.replay_gold else []
            rows = self.data.pair_data(pairs + replayed, module.tokenizer)
            self._fit(name, module, rows, self.orpo.epochs, max_steps=self.orpo.max_steps)
            self._save(module, folder)
            return {"reasoner": str(folder), "pairs": len(pairs), "replayed_gold": len(replayed)}

        return Path(self._phase(name, work)["reasoner"])

    def _eval_phase(self, t: int, reasoner: Path, verifier: Path | None) -> None:
        name = f"eval_{t}"

        def work() -> dict[str, Any]:
            questions = self.data.heldout(self.evaluation.questions)
            metrics: dict[str, Any] = {"iteration": t}
            if questions:
                metrics.update(self._heldout_metrics(t, questions, reasoner, verifier))
            labels = self.run.manifest["phases"].get(f"labels_{t}", {})
            metrics["self_verification_error"] = labels.get("self_verification_error")
            metrics["label_cost"] = self._label_cost_so_far(t)
            return metrics

        if self.run.done(name):
            return
        metrics = self._phase(name, work, everywhere=False)  # greedy answers to one held-out set: on rank 0
        if self.ranks.writer:
            publish_iteration(self.run, self._loggers, t, metrics, self._iteration_metrics())

    def _heldout_metrics(
        self, t: int, questions: list, reasoner: Path, verifier: Path | None
    ) -> dict[str, Any]:
        """Greedy held-out accuracy of ``reasoner``; with a verifier and a task oracle, the verifier's
        scores on those answers against the oracle's labels: ProcessBench's F1 and accuracies at τ, the
        step-level AUROC, and how often its largest score drop (SAPO's detector) is the first error, beside
        a random step's chance of it."""
        task = self.data.heldout_task
        backend, tokenizer = self._backends.open(reasoner, self.evaluation.batch_size)
        with self._precision():
            samples = sample_and_check(
                None,
                tokenizer,
                task,
                questions,
                max_new_tokens=self.evaluation.max_new_tokens,
                batch_size=self.evaluation.batch_size,
                description=f"held-out accuracy, iteration {t}",
                backend=backend,
            )
        greedy = [s[0] for s in samples]
        write_jsonl(greedy, self.run_dir / f"heldout_{t}.jsonl")
        metrics: dict[str, Any] = {"heldout_accuracy": sum(bool(g.outcome) for g in greedy) / len(greedy)}
        del backend
        release_memory()
        if verifier is not None and task.has_oracle:
            scorer = self._load_verifier(verifier)
            judged = [g for g in greedy if g.num_steps > 0]
            with self._precision():
                evaluation = evaluate_on_oracle(
                    scorer, task, judged, questions=questions, threshold=self.verifier.threshold
                )
            metrics.update(next(iter(evaluation.sets.values())).summary())
            del scorer
        return metrics

    # --- helpers ------------------------------------------------------------------------------------------
    def _store(self, name: str) -> ChunkedJsonl:
        """A chunked phase's store; the barrier lets rank 0 set its folder up before any rank writes there."""
        store = ChunkedJsonl(self.run, name, name)
        self.ranks.barrier()
        return store

    def _save(self, module: ORPOReasoner | PRMVerifier, folder: Path) -> None:
        """Save a trained module; under DDP every rank holds the same weights and rank 0 writes them."""
        if self.ranks.writer:
            module.save_pretrained(folder)

    @property
    def _ranked(self) -> bool:
        """Whether pairs are ranked by a verifier (the method), so that there are labels and verifiers."""
        return self.pairs.source == "verifier"

    def _task_prompts(self) -> TaskPrompts:
        """Every question's prompt as its task builds it, for the verifier and the pairs (loaded once)."""
        if self._prompts is None:
            spec = self.reasoner_spec
            tokenizer = load_tokenizer(spec.name_or_path, cache_dir=spec.cache_dir)
            self._prompts = self.data.prompts(tokenizer, self.evaluation.questions)
        return self._prompts

    def _label_cost_so_far(self, t: int) -> dict[str, Any]:
        return round_cost(self.run.manifest["phases"], range(t + 1)).to_dict()

    def _iteration_metrics(self) -> list[dict[str, Any]]:
        phases = self.run.manifest["phases"]
        return [phases[f"eval_{t}"] for t in range(self.iterations + 1) if f"eval_{t}" in phases]

    def _reasoner_module(
        self, spec: BackboneSpec, phase: SFTSettings | ORPOSettings, loss: str = "orpo"
    ) -> ORPOReasoner:
        """SFT's and a round's reasoner: ORPO (SFT's rows have no rejected side), or DPO (``orpo.loss``)."""
        common = {
            "learning_rate": phase.learning_rate,
            "warmup_ratio": phase.warmup_ratio,
            "train_embeddings": phase.train_embeddings,
            "moment_dtype": phase.moment_dtype,
        }
        if isinstance(phase, ORPOSettings):  # SFT's rows have no rejected side to share a prefix with
            common["shared_prefix"] = phase.shared_prefix
        if loss == "dpo":
            return DPOReasoner(spec, beta=self.orpo.beta, sft_weight=self.orpo.sft_weight, **common)
        return ORPOReasoner(spec, orpo_weight=self.orpo.weight, **common)

    def _load_verifier(self, folder: Path) -> PRMVerifier:
        options = {"dtype": frozen_dtype(self.reasoner_spec), "attention": self.reasoner_spec.attention}
        if self.reasoner_spec.device:
            options["device"] = self.reasoner_spec.device
        verifier = PRMVerifier.from_pretrained(folder, backbone_options=options, prompt=self._task_prompts())
        verifier.eval()
        return verifier

    def _precision(self) -> Any:
        """Sampling and scoring under the trainer's precision (bf16 autocast with ``bf16-mixed``)."""
        return self.template.precision_plugin.forward_context()

    def _fit(
        self,
        phase: str,
        module: L.LightningModule,
        data: L.LightningDataModule,
        epochs: int,
        gradient_clip: float | None = None,
        max_steps: int | None = None,
    ) -> None:
        self._backends.before_training()
        trainer = phase_trainer(
            self.template,
            self.run_dir,
            phase,
            epochs,
            gradient_clip,
            max_steps,
            self.release_heap_every_n_steps,
        )
        try:
            trainer.fit(module, datamodule=data)
        finally:
            # The loop's own DataModule (the SFT phase's) outlives the phase, and Lightning leaves it
            # holding the trainer: through it the model, its gradients and AdamW's state, to the run's end.
            data.trainer = None
