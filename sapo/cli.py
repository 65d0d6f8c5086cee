"""The ``sapo`` command: a LightningCLI whose models, data modules and strategies are chosen by class path."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.cli import LightningCLI

__all__ = ["SapoCLI", "main"]

DESCRIPTION = (
    "sapo: self-evolution of small reasoners with process supervision. "
    "`sapo fit --config configs/demo.yaml` runs a recipe; `sapo fit --print_config` prints a complete one."
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
    prints a complete recipe with every default filled in.
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
