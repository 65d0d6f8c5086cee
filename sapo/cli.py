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

#: the recipe a bare ``sapo fit`` starts from: SFT of the packaged SmolLM2 on the synthetic arithmetic task
DEFAULTS = {
    "model": {
        "class_path": "sapo.models.reasoner.ORPOReasoner",
        "init_args": {"backbone": {"name_or_path": "smollm2-135m-instruct"}},
    },
    "data": {
        "class_path": "sapo.data.datamodule.SFTDataModule",
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


def main(args: list[str] | None = None) -> None:
    # Tokenizers' own thread pool fights the DataLoader's and the trainer's threads on a small machine.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    SapoCLI(args=args)


if __name__ == "__main__":
    main()
