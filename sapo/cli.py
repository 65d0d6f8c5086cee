"""The ``sapo`` command: a LightningCLI whose models, data modules and strategies are chosen by class path.

Two things beside Lightning's own classes may stand in a recipe, and the parser accepts them by name rather
than by pretending they are Lightning classes: under ``model``, the self-evolution loop
(:class:`~sapo.evolution.SelfEvolution`, a recipe that trains LightningModules phase by phase, not a module
itself), and under ``data``, an evaluation (:class:`~sapo.eval.runners.Evaluation`) for ``sapo test`` and
``sapo validate``.
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sapo.eval.runners import Evaluation, metrics_table
from sapo.evolution import SelfEvolution

__all__ = ["SapoCLI", "main"]

DESCRIPTION = (
    "sapo: self-evolution of small reasoners with process supervision. "
    "`sapo fit --config configs/demo.yaml` runs a recipe; `sapo test --config configs/eval/gsm8k.yaml` "
    "evaluates a model; `sapo fit --print_config` prints a complete recipe."
)

#: the recipe a bare ``sapo fit`` starts from: the self-evolution loop with the packaged SmolLM2 on the
#: synthetic arithmetic task
DEFAULTS = {
    "model": {
        "class_path": "sapo.evolution.SelfEvolution",
        "init_args": {
            "reasoner": {"name_or_path": "smollm2-135m-instruct"},
            "labelling": {
                "initial_strategy": {"class_path": "sapo.supervision.BinarySearchSupervision"},
                "strategy": {"class_path": "sapo.supervision.FirstErrorSupervision"},
            },
        },
    },
    "data": {
        "class_path": "sapo.evolution.SAPSDataModule",
        "init_args": {"task": {"class_path": "sapo.data.tasks.arithmetic.ArithmeticTask"}},
    },
}


class SapoCLI(LightningCLI):
    """``sapo fit | validate | test | predict --config recipe.yaml``.

    Subclass mode: ``model`` and ``data`` take any LightningModule / LightningDataModule by ``class_path``, so
    a recipe swaps a component with one line and a user's own subclass works the same way. ``--print_config``
    prints a complete recipe with every default filled in. ``sapo test`` and ``sapo validate`` with an
    :class:`~sapo.eval.runners.Evaluation` as ``data`` evaluate the model by configuration
    (``configs/eval/``); see :meth:`run_evaluation`.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION},
            args=args,
            run=run,
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Lightning's trainer, model and data arguments, with the loop accepted as a ``model`` and an
        evaluation as ``data`` (see the module docstring)."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        trainer_defaults = {"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        parser.set_defaults(trainer_defaults)
        parser.add_subclass_arguments(
            (L.LightningModule, SelfEvolution), "model", fail_untyped=False, required=True
        )
        parser.add_subclass_arguments(
            (L.LightningDataModule, Evaluation), "data", fail_untyped=False, required=False
        )

    def add_arguments_to_parser(self, parser) -> None:
        # Without --config, --print_config prints the demo recipe rather than an empty model and data.
        parser.set_defaults(DEFAULTS)

    def fit(
        self,
        model: L.LightningModule | SelfEvolution,
        datamodule: L.LightningDataModule | Evaluation | None = None,
        **kwargs,
    ) -> None:
        """``sapo fit``: the whole loop for a :class:`~sapo.evolution.SelfEvolution` (each phase with its own
        trainer, resumable from the run directory), else ``Trainer.fit``. An
        :class:`~sapo.eval.runners.Evaluation` as ``data`` is refused: it has nothing to train on."""
        _refuse_evaluation(datamodule, "fit")
        if not isinstance(model, SelfEvolution):
            self.trainer.fit(model, datamodule=datamodule, **kwargs)
            return
        if kwargs.get("ckpt_path"):
            raise ValueError(
                "--ckpt_path does not apply to the self-evolution loop: rerun the same command (same "
                "model.init_args.run_dir) to resume after the last finished phase"
            )
        config = self.config[self.subcommand]
        settings = {key: _plain(config[key]) for key in ("model", "data") if key in config}
        model.fit(self.trainer, datamodule, settings)

    def before_predict(self) -> None:
        """``sapo predict`` goes to ``Trainer.predict``, which an Evaluation as ``data`` cannot feed."""
        _refuse_evaluation(self.datamodule, "predict")

    def validate(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | Evaluation | None = None, **kwargs
    ) -> None:
        """``sapo validate``: an :class:`~sapo.eval.runners.Evaluation` evaluates the model (see
        :meth:`run_evaluation`); any other data module goes to ``Trainer.validate``."""
        self._evaluate_or_run("validate", model, datamodule, **kwargs)

    def test(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | Evaluation | None = None, **kwargs
    ) -> None:
        """``sapo test``: an :class:`~sapo.eval.runners.Evaluation` evaluates the model (see
        :meth:`run_evaluation`); any other data module goes to ``Trainer.test``."""
        self._evaluate_or_run("test", model, datamodule, **kwargs)

    def _evaluate_or_run(
        self,
        stage: str,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | Evaluation | None,
        **kwargs,
    ) -> None:
        if isinstance(model, SelfEvolution):
            raise ValueError(
                f"sapo {stage} evaluates a model: the self-evolution loop runs with `sapo fit`; evaluate one of "
                "its checkpoints with configs/eval/*.yaml"
            )
        if isinstance(datamodule, Evaluation):
            self.run_evaluation(model, datamodule, **kwargs)
        else:
            getattr(self.trainer, stage)(model, datamodule=datamodule, **kwargs)

    def run_evaluation(
        self,
        model: L.LightningModule,
        evaluation,
        ckpt_path: str | None = None,
        verbose: bool = True,
        **kwargs,
    ) -> dict:
        """Evaluate ``model`` with ``evaluation`` and record the result.

        ``--ckpt_path`` (a Lightning checkpoint of the model) replaces the model's weights first. The
        completed config is saved as ``<out_dir>/config.yaml``; the evaluation's metrics go to every logger
        of the trainer (``log_metrics`` at step 0, then ``save``) and, unless ``--verbose false``, are printed
        as a table. The summary is returned and kept as :attr:`evaluation_summary`.
        """
        if ckpt_path:
            import torch

            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            model.load_state_dict(checkpoint["state_dict"])
        evaluation.out_dir.mkdir(parents=True, exist_ok=True)
        if self.subcommand is not None:
            config = self.config.get(self.subcommand, self.config)
            self._parser(self.subcommand).save(
                config, evaluation.out_dir / "config.yaml", overwrite=True, multifile=False
            )
        summary = evaluation.evaluate(model, self.trainer)
        metrics = evaluation.metrics(summary)
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=0)
            logger.save()
        if verbose:
            print(f"\n{type(evaluation).__name__} ({evaluation.out_dir}):\n\n{metrics_table(metrics)}\n")
        self.evaluation_summary = summary
        return summary


def _refuse_evaluation(datamodule: object, stage: str) -> None:
    if isinstance(datamodule, Evaluation):
        raise ValueError(
            f"{type(datamodule).__name__} evaluates a model and has no data to {stage} on: run `sapo test` or "
            f"`sapo validate` with this config, not `sapo {stage}`"
        )


def _plain(value):
    """A jsonargparse Namespace as plain JSON-able data (for the run directory's settings record)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def main(args: list[str] | None = None) -> None:
    # Tokenizers' own thread pool fights the DataLoader's and the trainer's threads on a small machine.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    SapoCLI(args=args)


if __name__ == "__main__":
    main()
