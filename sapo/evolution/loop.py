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

Why one Lightning ``Trainer`` per training phase rather than one ``fit`` whose epochs are the phases: the
phases train different modules (a reasoner, then a verifier started from the reasoner's weights with a new
head, then a reasoner restarted from the base model), with their own optimisers and schedules, and
between them come sampling and labelling, which are not training at all. A fresh trainer per phase keeps
each module's hooks what Lightning means them to be, and makes resuming a matter of the run directory:
each phase's artifacts are written, then the manifest marks it finished; a rerun skips finished phases
and the finished chunks of a half-done one (:mod:`sapo.evolution.run_directory`).

The phase trainers copy the ``sapo fit`` trainer's accelerator, devices, precision, gradient accumulation
and clipping, and write their own CSV and TensorBoard logs under ``<run_dir>/logs/phases/<phase>``; the loop's
per-iteration metrics go to the ``sapo fit`` trainer's loggers and to ``<run_dir>/report.md``.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sapo.data.datamodule import pair_lengths
from sapo.data.preference import PairCollator, PreferencePair
from sapo.data.saps import LabelledData, SAPSDataModule
from sapo.data.trajectory import Cost, Trajectory, read_jsonl
from sapo.eval.processbench import evaluate_on_oracle
from sapo.eval.reasoner import sample_and_check
from sapo.evolution.report import write_report
from sapo.evolution.run_directory import ChunkedJsonl, RunDirectory, write_jsonl_atomic
from sapo.models.backbone import BackboneSpec, LoraSettings, resolve_dtype
from sapo.models.reasoner import ORPOReasoner
from sapo.models.verifier import PRMVerifier
from sapo.rollout import SamplingCost, derive_seed

__all__ = ["SelfEvolution"]

log = logging.getLogger(__name__)

ORPO_INITS = ("base", "sft", "previous")
VERIFIER_LOSSES = ("bce", "mse")


class SelfEvolution(L.LightningModule):
    """The self-evolution loop: SFT, then T iterations of sample, label, verifier, pairs, ORPO.

    ``sapo fit`` with this model runs :meth:`run` (see :mod:`sapo.evolution.loop` for the phases); its
    ``data`` must be a :class:`~sapo.data.saps.SAPSDataModule`. The module holds the settings; the models
    of each phase are loaded when the phase starts and saved when it ends, under ``run_dir``.

    Args:
        reasoner: the base model M and how to train it (dtype, LoRA, 4-bit). Its LoRA settings also apply
            to SFT and ORPO; the verifier has its own (``verifier_lora``).
        run_dir: where every phase's artifacts, the manifest and the report go. Rerunning with the same
            ``run_dir`` resumes after the last finished phase.
        iterations: T (the paper: 3). 0 gives the SFT-only baseline (with the first verifier).
        orpo_init: where each round's ORPO starts: ``"base"`` (the pretrained M, the paper's and SIPF's
            choice), ``"sft"`` (M0) or ``"previous"`` (M_{t-1}).
        sft_epochs: epochs of SFT on the gold solutions.
        sft_learning_rate: its peak learning rate.
        orpo_epochs: epochs of each ORPO round (SIPF: 8).
        orpo_learning_rate: its peak learning rate (SIPF: 8e-5).
        orpo_weight: λ of the odds-ratio term (0.1).
        warmup_ratio: linear warm-up share of every phase's schedule (SIPF: 0.1), then linear decay.
        verifier_epochs: epochs of each verifier training (SIPF: 10).
        verifier_learning_rate: its peak learning rate (SIPF: 5e-5).
        verifier_weight_decay: SIPF: 0.01.
        verifier_loss: ``"mse"`` (the paper's) or ``"bce"``.
        verifier_lora: the verifier's adapter (SIPF: r 16, alpha 32, dropout 0.05, all linear layers);
            None trains the whole backbone.
        verifier_gradient_clip: max gradient norm of verifier training (SIPF: 0.3).
        verifier_threshold: τ of the ProcessBench-style evaluation.
        heldout_max_new_tokens: token budget of the greedy held-out answers.
        eval_batch_size: rows per ``generate`` call in the evaluation.
        seed: seeds each training phase (``seed_everything(derive_seed(seed, phase))``).
    """

    def __init__(
        self,
        reasoner: BackboneSpec,
        run_dir: str = "runs/sapo",
        iterations: int = 3,
        orpo_init: str = "base",
        sft_epochs: int = 3,
        sft_learning_rate: float = 1e-4,
        orpo_epochs: int = 8,
        orpo_learning_rate: float = 8e-5,
        orpo_weight: float = 0.1,
        warmup_ratio: float = 0.1,
        verifier_epochs: int = 10,
        verifier_learning_rate: float = 5e-5,
        verifier_weight_decay: float = 0.01,
        verifier_loss: str = "mse",
        verifier_lora: LoraSettings | None = None,
        verifier_gradient_clip: float | None = 0.3,
        verifier_threshold: float = 0.5,
        heldout_max_new_tokens: int = 256,
        eval_batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, value in {
            "iterations": iterations,
            "sft_epochs": sft_epochs,
            "orpo_epochs": orpo_epochs,
            "verifier_epochs": verifier_epochs,
        }.items():
            if value < (0 if key in ("iterations", "sft_epochs") else 1):
                raise ValueError(
                    f"model.{key} must be at least {0 if key == 'iterations' else 1}, got {value}"
                )
        if orpo_init not in ORPO_INITS:
            raise ValueError(f"model.orpo_init must be one of {ORPO_INITS}, got {orpo_init!r}")
        if verifier_loss not in VERIFIER_LOSSES:
            raise ValueError(f"model.verifier_loss must be one of {VERIFIER_LOSSES}, got {verifier_loss!r}")
        if not 0 < verifier_threshold < 1:
            raise ValueError(f"model.verifier_threshold must be in (0, 1), got {verifier_threshold}")
        if orpo_weight < 0:
            raise ValueError(f"model.orpo_weight must be >= 0, got {orpo_weight}")
        for key, value in {
            "sft_learning_rate": sft_learning_rate,
            "orpo_learning_rate": orpo_learning_rate,
            "verifier_learning_rate": verifier_learning_rate,
        }.items():
            if value <= 0:
                raise ValueError(f"model.{key} must be > 0, got {value}")
        self.save_hyperparameters()
        self.reasoner_spec = reasoner
        self.verifier_lora = (
            LoraSettings() if verifier_lora is None and reasoner.lora is not None else verifier_lora
        )
        self.run_dir = Path(run_dir)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError(
            "SelfEvolution is not trained by Trainer.fit directly: `sapo fit` calls SelfEvolution.run, which "
            "trains each phase's own module"
        )

    def configure_optimizers(self) -> None:
        return None

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(
        self, trainer: L.Trainer, datamodule: SAPSDataModule, settings: dict[str, Any] | None = None
    ) -> dict:
        """Run (or resume) the loop; returns the per-iteration metrics also written to the report."""
        if not isinstance(datamodule, SAPSDataModule):
            raise TypeError(
                f"SelfEvolution needs data: sapo.data.SAPSDataModule, got {type(datamodule).__name__}"
            )
        self.template = trainer
        self.data = datamodule
        self.run_state = RunDirectory(self.run_dir, settings)
        self.sampling_cost = SamplingCost()
        done = self.run_state.finished
        if done:
            log.info("resuming %s: finished phases %s", self.run_dir, ", ".join(done))
            print(f"[sapo] resuming {self.run_dir}: {len(done)} phases finished ({done[-1]} last)")
        T = self.hparams.iterations
        reasoner = self._phase_sft()
        samples = self._phase_samples(0, reasoner)
        labels = self._phase_labels(0, reasoner, None, samples)
        verifier = self._phase_verifier(0, reasoner, labels)
        self._phase_eval(0, reasoner, verifier)
        all_samples, all_labels = samples, labels
        for t in range(1, T + 1):
            new = self._phase_samples(t, reasoner)
            all_samples = all_samples + new if self.data.accumulate_samples else new
            new_labels = self._phase_labels(t, reasoner, verifier, new)
            if self.data.accumulate_labels:
                all_labels = LabelledData(
                    all_labels.labelled + new_labels.labelled,
                    all_labels.expanded + new_labels.expanded,
                    all_labels.dropped + new_labels.dropped,
                    all_labels.cost + new_labels.cost,
                )
            else:
                all_labels = new_labels
            verifier = self._phase_verifier(t, reasoner, all_labels)
            pairs_file = self._phase_pairs(t, verifier, all_samples)
            reasoner = self._phase_orpo(t, pairs_file, reasoner)
            self._phase_eval(t, reasoner, verifier)
        metrics = self._iteration_metrics()
        write_report(self.run_state, metrics)
        print(f"[sapo] done: report at {self.run_dir / 'report.md'}")
        return metrics

    # --- phases -------------------------------------------------------------------------------------------
    def _phase_sft(self) -> Path:
        folder = self.run_dir / "sft" / "reasoner"
        if self.run_state.done("sft"):
            return Path(self.run_state.summary("sft")["reasoner"])
        if self.hparams.sft_epochs == 0:  # start the loop from the base model as it is
            self.run_state.finish("sft", reasoner=str(self.reasoner_spec.name_or_path), skipped=True)
            return Path(self.reasoner_spec.name_or_path)
        self.run_state.start("sft")
        module = self._reasoner_module(self.reasoner_spec, self.hparams.sft_learning_rate)
        pairs = self.data.sft_pairs(module.tokenizer)
        self._fit("sft", module, pairs, self.hparams.sft_epochs)
        save_reasoner(module, folder)
        self.run_state.finish("sft", reasoner=str(folder), pairs=len(pairs))
        del module
        _free()
        return folder

    def _phase_samples(self, t: int, reasoner: Path) -> list[Trajectory]:
        phase, path = f"samples_{t}", self.run_dir / f"samples_{t}.jsonl"
        if self.run_state.done(phase):
            return read_jsonl(path)
        self.run_state.start(phase)
        model, tokenizer = self._frozen(reasoner)
        cost = SamplingCost()
        questions = self.data.iteration_questions(t)
        with self._precision():
            samples = self.data.sample(
                model,
                tokenizer,
                questions,
                derive_seed(self.data.seed, "samples", t),
                ChunkedJsonl(self.run_state, phase, f"samples_{t}"),
                cost,
            )
        if t == 0 and self.data.include_gold:  # D_0 = Sample(M_0) ∪ D_org, on the questions sampled
            samples = self.data.gold_trajectories(questions) + samples
        write_jsonl_atomic(path, samples)
        self.run_state.finish(
            phase,
            trajectories=len(samples),
            correct=sum(bool(s.outcome) for s in samples),
            sampling_cost=cost.to_dict(),
        )
        del model
        _free()
        return samples

    def _phase_labels(
        self, t: int, reasoner: Path, verifier: Path | None, samples: list[Trajectory]
    ) -> LabelledData:
        phase = f"labels_{t}"
        if self._rft:
            return LabelledData()
        strategy = self.data.initial_strategy if t == 0 else self.data.strategy
        new = [s for s in samples if s.label_source != "gold"]
        subset = self.data.label_subset(new, t)
        if t == 0:  # subset(D_0), D_0 = samples ∪ D_org: the gold solutions are labelled too (all correct,
            # at no cost), so the first verifier sees correct solutions as well as the mostly wrong samples
            subset = [s for s in samples if s.label_source == "gold"] + subset
        model = tokenizer = scorer = None
        if not self.run_state.done(phase):  # else every chunk is on disk and only read back
            self.run_state.start(phase, strategy=type(strategy).__name__, trajectories=len(subset))
            model, tokenizer = self._frozen(reasoner)
            scorer = None if verifier is None else self._load_verifier(verifier)
        with self._precision():
            result = self.data.label(
                strategy,
                subset,
                model,
                tokenizer,
                scorer,
                derive_seed(self.data.seed, "labels", t),
                ChunkedJsonl(self.run_state, phase, f"labels_{t}"),
            )
        if not self.run_state.done(phase):
            write_jsonl_atomic(self.run_dir / f"labels_{t}.jsonl", result.trajectories)
            write_jsonl_atomic(self.run_dir / f"dropped_{t}.jsonl", result.dropped)
            self.run_state.finish(phase, strategy=type(strategy).__name__, **result.stats())
        del model, scorer
        _free()
        return result

    def _phase_verifier(self, t: int, reasoner: Path, labels: LabelledData) -> Path | None:
        phase, folder = f"verifier_{t}", self.run_dir / f"verifier_{t}"
        if self._rft:
            return None
        if self.run_state.done(phase):
            return folder
        self.run_state.start(phase)
        task = self.data.task
        module = PRMVerifier(
            replace(
                self.reasoner_spec,
                name_or_path=str(reasoner),
                lora=self.verifier_lora,
                load_in_4bit=self.reasoner_spec.load_in_4bit and self.verifier_lora is not None,
            ),
            loss=self.hparams.verifier_loss,
            learning_rate=self.hparams.verifier_learning_rate,
            weight_decay=self.hparams.verifier_weight_decay,
            warmup_ratio=self.hparams.warmup_ratio,
            threshold=self.hparams.verifier_threshold,
            separator=task.separator,
            max_length=self.data.max_length,
            instruction=task.instruction,
            prompt_template=task.prompt_template,
            use_chat_template=task.use_chat_template,
        )
        examples = [module.collator.example(t_) for t_ in labels.trajectories]
        examples = [e for e in examples if e.num_placed > 0]
        self.data.use(examples, module.collator, [len(e) for e in examples])
        self._fit(phase, module, None, self.hparams.verifier_epochs, self.hparams.verifier_gradient_clip)
        module.save_pretrained(folder)
        self.run_state.finish(phase, verifier=str(folder), trajectories=len(examples))
        del module
        _free()
        return folder

    def _phase_pairs(self, t: int, verifier: Path | None, samples: list[Trajectory]) -> Path:
        phase, path = f"pairs_{t}", self.run_dir / f"pairs_{t}.jsonl"
        if self.run_state.done(phase):
            return path
        self.run_state.start(phase)
        candidates = [s for s in samples if s.num_steps > 0 and s.outcome is not None]
        tokenizer = self._tokenizer()
        if verifier is None:  # RFT: no ranking
            scores: list[list[float]] = [[] for _ in candidates]
        else:
            scorer = self._load_verifier(verifier)
            with self._precision():
                scores = scorer.score(candidates)
            del scorer
            _free()
        pairs = self.data.pairs(candidates, scores, tokenizer)
        write_jsonl_atomic(path, [p.to_dict() for p in pairs])
        questions = {p.question_id for p in pairs}
        self.run_state.finish(
            phase,
            pairs=len(pairs),
            questions_with_pairs=len(questions),
            with_rejected=sum(p.rejected is not None for p in pairs),
            mean_margin=(
                sum(p.margin for p in pairs if p.margin is not None)
                / max(1, sum(p.margin is not None for p in pairs))
            ),
        )
        return path

    def _phase_orpo(self, t: int, pairs_file: Path, previous: Path) -> Path:
        phase, folder = f"orpo_{t}", self.run_dir / f"iteration_{t}" / "reasoner"
        if self.run_state.done(phase):
            return Path(self.run_state.summary(phase)["reasoner"])
        self.run_state.start(phase)
        lines = pairs_file.read_text(encoding="utf-8").splitlines()
        pairs = [PreferencePair.from_dict(json.loads(line)) for line in lines if line.strip()]
        if not pairs:  # nothing to learn from: say so, keep M_{t-1}, and go on
            print(
                f"[sapo] iteration {t}: no preference pairs (see {pairs_file}); the reasoner stays as it was. "
                "Sample more per question, or lower data.margin"
            )
            self.run_state.finish(phase, reasoner=str(previous), pairs=0, skipped=True)
            return previous
        init = {
            "base": self.reasoner_spec,
            "sft": replace(self.reasoner_spec, name_or_path=self.run_state.summary("sft")["reasoner"]),
            "previous": replace(self.reasoner_spec, name_or_path=str(previous)),
        }[self.hparams.orpo_init]
        module = self._reasoner_module(init, self.hparams.orpo_learning_rate)
        self._fit(phase, module, pairs, self.hparams.orpo_epochs)
        save_reasoner(module, folder)
        self.run_state.finish(phase, reasoner=str(folder), pairs=len(pairs))
        del module
        _free()
        return folder

    def _phase_eval(self, t: int, reasoner: Path, verifier: Path | None) -> None:
        phase = f"eval_{t}"
        if self.run_state.done(phase):
            return
        questions = self.data.heldout()
        metrics: dict[str, Any] = {"iteration": t}
        if questions:
            self.run_state.start(phase)
            model, tokenizer = self._frozen(reasoner)
            task = self.data.heldout_task
            with self._precision():
                samples = sample_and_check(
                    model,
                    tokenizer,
                    task,
                    questions,
                    max_new_tokens=self.hparams.heldout_max_new_tokens,
                    batch_size=self.hparams.eval_batch_size,
                    description=f"held-out accuracy, iteration {t}",
                )
            greedy = [s[0] for s in samples]
            write_jsonl_atomic(self.run_dir / f"heldout_{t}.jsonl", greedy)
            metrics["heldout_accuracy"] = sum(bool(g.outcome) for g in greedy) / len(greedy)
            del model
            _free()
            if verifier is not None and task.has_oracle:
                scorer = self._load_verifier(verifier)
                judged = [g for g in greedy if g.num_steps > 0]
                with self._precision():
                    evaluation = evaluate_on_oracle(
                        scorer, task, judged, questions=questions, threshold=self.hparams.verifier_threshold
                    )
                scores = next(iter(evaluation.sets.values()))
                metrics["verifier_f1"] = scores.f1
                metrics["verifier_error_accuracy"] = scores.error_accuracy
                metrics["verifier_correct_accuracy"] = scores.correct_accuracy
                metrics["verifier_rows"] = {"with_error": scores.num_error, "correct": scores.num_correct}
                del scorer
                _free()
        labels = self.run_state.manifest["phases"].get(f"labels_{t}", {})
        metrics["self_verification_error"] = labels.get("self_verification_error")
        metrics["label_cost"] = self._label_cost_so_far(t)
        self.run_state.finish(phase, **metrics)
        scalars = {
            f"iteration/{k}": float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and v is not None and k != "iteration"
        }
        for logger in self.template.loggers:
            logger.log_metrics(scalars, step=t)
            logger.save()
        summary = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in scalars.items())
        print(f"[sapo] iteration {t}: {summary}")
        write_report(self.run_state, self._iteration_metrics())

    # --- helpers ------------------------------------------------------------------------------------------
    @property
    def _rft(self) -> bool:
        return self.data.pair_source == "rft"

    def _label_cost_so_far(self, t: int) -> dict[str, Any]:
        total = Cost()
        for i in range(t + 1):
            entry = self.run_state.manifest["phases"].get(f"labels_{i}")
            if entry and "cost" in entry:
                total = total + Cost.from_dict(entry["cost"])
        return total.to_dict()

    def _iteration_metrics(self) -> list[dict[str, Any]]:
        phases = self.run_state.manifest["phases"]
        return [phases[f"eval_{t}"] for t in range(self.hparams.iterations + 1) if f"eval_{t}" in phases]

    def _reasoner_module(self, spec: BackboneSpec, learning_rate: float) -> ORPOReasoner:
        return ORPOReasoner(
            spec,
            orpo_weight=self.hparams.orpo_weight,
            learning_rate=learning_rate,
            warmup_ratio=self.hparams.warmup_ratio,
        )

    def _frozen_dtype(self) -> str:
        """The dtype of a model that is only sampled or scored: the reasoner's, or with ``dtype: auto`` what
        ``auto`` gives a frozen base (bfloat16 where it is fast). Without this a merged checkpoint would
        load in float32 (``auto`` for a model without adapters assumes it trains) and sample 2-3x slower."""
        spec = self.reasoner_spec
        if spec.dtype != "auto":
            return spec.dtype
        device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return str(resolve_dtype("auto", device, base_is_frozen=True)).removeprefix("torch.")

    def _frozen(self, folder: Path) -> tuple[Any, Any]:
        """The reasoner at ``folder`` for sampling only (no adapter, :meth:`_frozen_dtype`)."""
        spec = replace(
            self.reasoner_spec,
            name_or_path=str(folder),
            dtype=self._frozen_dtype(),
            lora=None,
            load_in_4bit=False,
            gradient_checkpointing=False,
        )
        model, tokenizer = spec.load()
        model.eval()
        return model, tokenizer

    def _tokenizer(self) -> Any:
        from sapo.models.backbone import load_tokenizer

        return load_tokenizer(self.reasoner_spec.name_or_path, cache_dir=self.reasoner_spec.cache_dir)

    def _load_verifier(self, folder: Path) -> PRMVerifier:
        options = {"dtype": self._frozen_dtype()}
        if self.reasoner_spec.device:
            options["device"] = self.reasoner_spec.device
        verifier = PRMVerifier.from_pretrained(folder, backbone_options=options)
        verifier.eval()
        return verifier

    def _precision(self) -> Any:
        """Sampling and scoring under the trainer's precision (bf16 autocast with ``bf16-mixed``)."""
        return self.template.precision_plugin.forward_context()

    def _fit(
        self,
        phase: str,
        module: L.LightningModule,
        pairs: list | None,
        epochs: int,
        gradient_clip: float | None = None,
    ) -> None:
        if pairs is not None:
            collator = PairCollator(module.tokenizer, self.data.task.separator, self.data.max_length)
            self.data.use(pairs, collator, pair_lengths(pairs, collator))
        L.seed_everything(derive_seed(self.hparams.seed, phase) % 2**31, workers=True, verbose=False)
        trainer = self._phase_trainer(phase, epochs, gradient_clip)
        trainer.fit(module, datamodule=self.data)

    def _phase_trainer(self, phase: str, epochs: int, gradient_clip: float | None) -> L.Trainer:
        template = self.template
        logs = self.run_dir / "logs" / "phases"
        return L.Trainer(
            accelerator=template.accelerator,
            devices=template.num_devices,
            precision=template.precision,
            max_epochs=epochs,
            accumulate_grad_batches=template.accumulate_grad_batches,
            gradient_clip_val=gradient_clip if gradient_clip is not None else template.gradient_clip_val,
            log_every_n_steps=template.log_every_n_steps,
            limit_train_batches=template.limit_train_batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=template.progress_bar_callback is not None,
            logger=[
                CSVLogger(logs, name=phase, version=""),
                TensorBoardLogger(logs, name=phase, version="", default_hp_metric=False),
            ],
            default_root_dir=self.run_dir,
        )


def save_reasoner(module: ORPOReasoner, folder: Path) -> None:
    """Save the reasoner as a plain transformers checkpoint, LoRA merged (what the next phases load)."""
    model = module.model
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    module.tokenizer.save_pretrained(folder)


def _free() -> None:
    """Give the memory of models just dropped back before the next phase loads one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
