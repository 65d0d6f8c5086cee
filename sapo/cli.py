"""The ``sapo`` command: a LightningCLI whose models, data modules and strategies are chosen by class path."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.cli import LightningCLI

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
        "init_args": {"reasoner": {"name_or_path": "smollm2-135m-instruct"}},
    },
    "data": {
        "class_path": "sapo.data.saps.SAPSDataModule",
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

    def add_arguments_to_parser(self, parser) -> None:
        # Without --config, --print_config prints the demo recipe rather than an empty model and data.
        parser.set_defaults(DEFAULTS)

    def fit(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, **kwargs
    ) -> None:
        """``sapo fit``: the whole loop for a :class:`~sapo.evolution.SelfEvolution` model (each phase with its
        own trainer, resumable from the run directory), else ``Trainer.fit``."""
        from sapo.evolution import SelfEvolution

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
        model.run(self.trainer, datamodule, settings)

    def validate(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, **kwargs
    ) -> None:
        """``sapo validate``: an :class:`~sapo.eval.runners.Evaluation` evaluates the model (see
        :meth:`run_evaluation`); any other data module goes to ``Trainer.validate``."""
        self._evaluate_or_run("validate", model, datamodule, **kwargs)

    def test(
        self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, **kwargs
    ) -> None:
        """``sapo test``: an :class:`~sapo.eval.runners.Evaluation` evaluates the model (see
        :meth:`run_evaluation`); any other data module goes to ``Trainer.test``."""
        self._evaluate_or_run("test", model, datamodule, **kwargs)

    def _evaluate_or_run(
        self, stage: str, model: L.LightningModule, datamodule: L.LightningDataModule | None, **kwargs
    ) -> None:
        from sapo.eval.runners import Evaluation

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
        from sapo.eval.runners import metrics_table

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
