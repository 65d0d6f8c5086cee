"""The ``sapo`` command: a LightningCLI whose models, data modules and strategies are chosen by class path.

Two things beside Lightning's own classes may stand in a recipe, and the parser accepts them by name rather
than by pretending they are Lightning classes: under ``model``, the self-evolution loop
(:class:`~sapo.evolution.SelfEvolution`, a recipe that trains LightningModules phase by phase, not a module
itself), and under ``data``, an evaluation (:class:`~sapo.eval.runners.Evaluation`) for ``sapo test`` and
``sapo validate``.

:func:`main`, the console command, adds what a person at a terminal wants and a program calling
:class:`SapoCLI` does not: an error of configuration or data is one line, ``sapo: error: <message>`` on
stderr with exit code 2, naming the key where it can be found (``SAPO_DEBUG=1`` gives the traceback
instead); a ``--config`` file that is not valid YAML is named with the line and column;
``--print_config`` prints every argument's help as a comment; and Lightning's per-trainer banner lines
and known deprecation warnings of the libraries are left out (``SAPO_DEBUG=1`` shows them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sapo.callbacks import bound_kernel_caches
from sapo.data.trajectory import TrajectoryFormatError
from sapo.eval.runners import Evaluation, metrics_table
from sapo.evolution import SelfEvolution
from sapo.evolution.run_directory import RunMismatchError
from sapo.models import precision as machine_precision
from sapo.models.backbone import ModelLoadError

__all__ = ["SapoCLI", "main"]

DESCRIPTION = (
    "sapo: self-evolution of small reasoners with process supervision. "
    "`sapo fit --config configs/demo.yaml` runs a recipe; `sapo test --config configs/eval/gsm8k.yaml` "
    "evaluates a model; `sapo fit --print_config` prints a complete recipe with every argument's help; "
    "`sapo fit --model.help sapo.evolution.SelfEvolution` lists the loop's arguments. "
    "SAPO_DEBUG=1 in the environment shows tracebacks and Lightning's full output."
)

#: the top of ``sapo fit --help``: the options listed below it are mostly Lightning's trainer
FIT_DESCRIPTION = (  # lines: it is also the first comment of --print_config's recipe
    "sapo fit: train a recipe: the self-evolution loop (sapo.evolution.SelfEvolution) phase by phase,\n"
    "or any LightningModule with Trainer.fit. The options below are mostly Lightning's trainer; the loop's\n"
    "own arguments are listed by `sapo fit --model.help sapo.evolution.SelfEvolution` (its data module's\n"
    "by `sapo fit --data.help sapo.evolution.SAPSDataModule`), and `sapo fit --print_config` prints a\n"
    "complete recipe with every argument's help as a comment."
)

#: the environment variable that restores tracebacks and the output :func:`main` leaves out
DEBUG_VARIABLE = "SAPO_DEBUG"

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

    def __init__(self, args: list[str] | None = None, run: bool = True, exit_on_error: bool = True) -> None:
        """``exit_on_error=False``: a parse error raises :class:`argparse.ArgumentError` instead of printing
        the usage and exiting (:func:`main` prints it as one line)."""
        common = {"exit_on_error": exit_on_error}
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "description": DESCRIPTION,
                **common,
                "fit": {"description": FIT_DESCRIPTION, **common},
                **{subcommand: dict(common) for subcommand in ("validate", "test", "predict")},
            },
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
        # Without --config, --print_config prints the loop with sapo's defaults rather than an empty model
        # and data.
        parser.set_defaults(DEFAULTS)
        choices = Literal[machine_precision.EMULATED_BFLOAT16_CHOICES]  # type: ignore[valid-type]
        text = machine_precision.EMULATED_BFLOAT16_HELP
        parser.add_argument("--emulated_bfloat16", type=choices, default="float32", help=text)

    def before_instantiate_classes(self) -> None:
        """``trainer.precision`` as :func:`~sapo.models.precision.precision_on_this_machine` decides, before
        the trainer is built; a change is said on stderr."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        if trainer is None:
            return
        precision, note = machine_precision.precision_on_this_machine(
            trainer.get("precision"), trainer.get("accelerator"), config.get("emulated_bfloat16", "float32")
        )
        if note is not None:
            trainer.precision = precision
            print(f"sapo: {note}", file=sys.stderr)

    def instantiate_classes(self) -> None:
        """Lightning's, with the parsed config kept on a failing constructor's error
        (``error.sapo_config``), so that :func:`main` can name the key of the component that refused."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, KeyError) as error:
            config = self.config.get(self.subcommand) if self.subcommand else None
            error.sapo_config = config if config is not None else self.config
            raise

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


def _field_docstrings_as_help() -> None:
    """Let jsonargparse read attribute docstrings: the loop's settings dataclasses document each field with
    one (``sapo/evolution/settings.py``), which become the fields' help and ``--print_config`` comments."""
    import jsonargparse

    try:
        jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    except (AttributeError, TypeError):  # jsonargparse before 4.39
        jsonargparse.set_docstring_parse_options(attribute_docstrings=True)


# --- the console command ----------------------------------------------------------------------------------

#: errors of configuration and data, printed by :func:`main` as one line (a KeyError only when sapo's own
#: code raised it: elsewhere it is more likely a bug, whose traceback matters)
CONFIG_ERRORS = (
    argparse.ArgumentError,
    ValueError,
    TypeError,
    FileNotFoundError,
    KeyError,
    TrajectoryFormatError,
    ModelLoadError,
    RunMismatchError,
)

#: the defaults' label at the top of ``sapo fit --print_config`` without ``--config``
DEFAULTS_LABEL = "# sapo's defaults (the papers' settings); configs/demo.yaml is the CPU demo recipe"

#: Lightning's info lines repeated by every phase's trainer that tell a sapo user nothing
LIGHTNING_NOISE = (
    "GPU available: ",
    "TPU available: ",
    "HPU available: ",
    "💡 Tip: For seamless cloud logging",  # the litlogger advertisement, printed unconditionally
    "Loading `train_dataloader` to estimate number of stepping batches.",
)
_LIMIT_ALL_BATCHES = re.compile(r"`Trainer\(limit_\w+_batches=1\.0\)` was configured so 100% of the batches")

#: deprecation warnings raised inside the libraries (or by a call that must stay for the oldest supported
#: transformers), as (message, module) regular expressions, each as narrow as the warning
KNOWN_WARNINGS = (
    # peft reads the deprecated property to decide on gradient checkpointing
    (
        r"`is_gradient_checkpointing` is deprecated and will be removed in v6",
        r"transformers\.modeling_utils$",
    ),
    # transformers 5 renamed past_key_values to cache; generate itself passes the old name to forward
    (
        r"`past_key_values` is deprecated and will be removed in version [\d.]+ for `\w+\.forward`",
        r"torch\.nn\.modules\.module$",
    ),
    # sapo's sampler passes the prefilled cache as past_key_values, the only name before transformers 5
    (
        r"`past_key_values` is deprecated and will be removed in version [\d.]+ for `\w+\.generate`",
        r"sapo\.rollout\.generate$",
    ),
    # Lightning's own pytree helper still uses torch's deprecated LeafSpec
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree$"),
)


def main(args: list[str] | None = None) -> int:
    """The ``sapo`` command: :class:`SapoCLI` for a person at a terminal.

    An error of configuration or data (see :data:`CONFIG_ERRORS`) is printed as ``sapo: error: <message>``
    and the exit code is 2; each ``--config`` file is checked as YAML first; a bare ``--print_config``
    prints comments; Lightning's banner lines and known library deprecation warnings are left out. With
    ``SAPO_DEBUG=1`` in the environment, errors raise with their traceback and nothing is left out.
    """
    # Tokenizers' own thread pool fights the DataLoader's and the trainer's threads on a small machine.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # before any model runs: CPU kernel caches bounded, or they keep ~1 GiB across a loop's phases
    bound_kernel_caches()
    debug = os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no", "off")
    if not debug:
        _quiet()
    # a process-wide jsonargparse setting, so only in the command's own process: a class whose source
    # cannot be read (defined in a notebook cell, say) would lose its parameters under it
    _field_docstrings_as_help()
    argv = list(sys.argv[1:] if args is None else args)
    try:
        for value in _config_values(argv):
            _check_config(value)
        argv = _print_config_with_comments(argv)
        label = DEFAULTS_LABEL if _printing_config(argv) and not list(_config_values(argv)) else None
        if args is None:  # LightningCLI warns when it is given args beside a command line
            sys.argv[1:] = argv
        with _first_line(label):
            SapoCLI(args=None if args is None else argv, exit_on_error=False)
    except CONFIG_ERRORS as error:
        if debug or (isinstance(error, KeyError) and not _raised_by_sapo(error)):
            raise
        print(f"sapo: error: {error_message(error)}", file=sys.stderr)
        if not isinstance(error, (argparse.ArgumentError, _ConfigFileError)) and not hasattr(
            error, "sapo_config"
        ):
            print(f"sapo: {DEBUG_VARIABLE}=1 shows the traceback", file=sys.stderr)
        return 2
    return 0


class _ConfigFileError(ValueError):
    """A ``--config`` value that is neither a file nor YAML, or a file that is not valid YAML."""


def _config_values(argv: list[str]):
    """The values of every ``--config`` / ``-c`` in a command line."""
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            yield argv[i + 1]
        elif arg.startswith("--config="):
            yield arg.removeprefix("--config=")


def _check_config(value: str) -> None:
    """A ``--config`` file must exist and be YAML; jsonargparse would name neither the file nor the line."""
    path = Path(value)
    is_file = "\n" not in value and len(value) < 4096 and path.is_file()
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8") if is_file else value)
    except yaml.MarkedYAMLError as error:
        where = value if is_file else f"--config {value!r}"
        raise _ConfigFileError(_yaml_problem(where, error)) from error
    except yaml.YAMLError as error:
        raise _ConfigFileError(f"{value}: not valid YAML: {error}") from error
    if not is_file and not isinstance(loaded, dict):  # not YAML of a config: a path meant as one
        raise _ConfigFileError(f"--config {value}: no such file")


def _yaml_problem(where: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    message = f"{where}, line {mark.line + 1}, column {mark.column + 1}: {error.problem or error.context}"
    if error.context and error.problem and error.context_mark is not None:
        context = error.context_mark
        message += f" ({error.context} at line {context.line + 1}, column {context.column + 1})"
    return message


def _printing_config(argv: list[str]) -> bool:
    return any(arg == "--print_config" or arg.startswith("--print_config=") for arg in argv)


def _print_config_with_comments(argv: list[str]) -> list[str]:
    """A bare ``--print_config`` prints every argument's help as a comment (needs ruamel.yaml);
    ``--print_config=`` prints without, and the other flags work as jsonargparse documents them."""
    if importlib.util.find_spec("ruamel") is None or importlib.util.find_spec("ruamel.yaml") is None:
        return argv
    return ["--print_config=comments" if arg == "--print_config" else arg for arg in argv]


@contextlib.contextmanager
def _first_line(label: str | None):
    """Put ``label`` above what is printed to stdout inside (``--print_config`` prints and exits)."""
    if label is None:
        yield
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        if printed.getvalue():
            sys.stdout.write(f"{label}\n{printed.getvalue()}")
            sys.stdout.flush()


class _LightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(LIGHTNING_NOISE) or _LIMIT_ALL_BATCHES.match(message))


_NOISE_FILTER = _LightningNoise()


def _quiet() -> None:
    """Leave out what every phase's trainer prints and a user needs not read (the command only: importing
    sapo changes no logging)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NOISE_FILTER not in logger.filters:
            logger.addFilter(_NOISE_FILTER)
    # its only info line: "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]", once per phase
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    for message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)


def _raised_by_sapo(error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return False
    package = Path(__file__).resolve().parent
    return package in Path(traceback.tb_frame.f_code.co_filename).resolve().parents


# --- the one-line message ---------------------------------------------------------------------------------

_UNION = "Does not validate against any of the Union subtypes"
#: the alternatives of a Union that only say the value is not of that alternative
_NOT_THIS_ALTERNATIVE = (
    re.compile(r"Import path \S+ does not correspond to a subclass of \S+$"),
    re.compile(r"Expected a <class 'NoneType'>$"),
)
_GIVEN_CLASS = re.compile(r"Namespace\(class_path='([^']+)'")
#: a message that already names a recipe key
_NAMES_A_KEY = re.compile(r"\b(model|data|trainer|optimizer|lr_scheduler)\.\w")


def error_message(error: BaseException) -> str:
    """The message of a configuration or data error as ``sapo`` prints it.

    jsonargparse reports a value that fails inside a class as a nest of "Does not validate against any of
    the Union subtypes" blocks, one alternative per line; the message is the alternative that is not merely
    "not this type", with the key path jsonargparse names on the way down (``Parser key``, the
    ``class_path`` whose ``init_args`` it is). A constructor's own message that names no key gets the key
    of the component that refused it, when exactly one component of the parsed config has that class and
    those arguments (and the field's full path when the message starts with one of its arguments).
    """
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0]
    text = str(error)
    structured = (_UNION, 'Parser key "', "Problem with given class_path")
    if not isinstance(error, argparse.ArgumentError) and not any(marker in text for marker in structured):
        return text.replace('"<unicode string>"', "the --config value")
    config = getattr(error, "sapo_config", None)
    messages = []
    for path, message, given in _reasons(text, ""):
        if not path and config is not None and given is not None:
            message = _with_component_key(message, given, config)
        elif path:
            message = f"{path}: {message}"
        if message not in messages:
            messages.append(message)
    return "; ".join(messages) if messages else text


def _reasons(text: str, path: str, given: str | None = None) -> list[tuple[str, str, str | None]]:
    """(key path, message, the failing value's text) for each real reason inside a jsonargparse error."""
    text = text.strip("\n")
    parser_key = re.match(r'Parser key "([^"]+)":[ \n]', text)
    if parser_key:
        key = parser_key.group(1)
        return _reasons(textwrap.dedent(text[parser_key.end() :]), f"{path}.{key}" if path else key, given)
    problem = re.match(r"Problem with given class_path '([^']+)':\n", text)
    if problem:
        inner = _reasons(textwrap.dedent(text[problem.end() :]), f"{path}.init_args" if path else "", given)
        # a reason that names no key of its own is about the class itself (it cannot be imported, ...)
        return [
            (p, m, g)
            if p != f"{path}.init_args" or m.startswith("unknown key")
            else (f"{path} ({problem.group(1)})" if path else problem.group(1), m, g)
            for p, m, g in inner
        ]
    if text.startswith(_UNION) and "\nErrors:\n" in text and "\nGiven value type:" in text:
        body, _, tail = text.partition("\nErrors:\n")[2].rpartition("\nGiven value type:")
        given_here = tail.partition("\nGiven value: ")[2] or None
        reasons = []
        for item in _union_items(body):
            reasons += _reasons(item, path, given_here)
        real = [r for r in reasons if not any(p.match(r[1]) for p in _NOT_THIS_ALTERNATIVE)]
        return real or reasons
    return [_leaf(text, path, given)]


def _union_items(body: str) -> list[str]:
    """The ``- ...`` items of a Union error's ``Errors:`` block, each without its indentation."""
    items: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("  - "):
            items.append([line[4:]])
        elif items:
            items[-1].append(line[4:])
    return ["\n".join(item) for item in items]


def _leaf(text: str, path: str, given: str | None) -> tuple[str, str, str | None]:
    """One reason; an unknown key becomes ``unknown key <full path>`` however jsonargparse worded it."""
    unknown = re.match(
        r"(?:Group '([^']+)' does not accept option|Option) '([^']+)'(?: is not accepted)?$", text
    )
    if unknown:
        key = ".".join(part for part in (path, unknown.group(1), unknown.group(2)) if part)
        return "", f"unknown key {key}", None
    subcommand_option = re.match(r"Subcommand '\w+' does not accept option '([^']+)'$", text)
    if subcommand_option:
        return "", f"unknown key {subcommand_option.group(1)}", None
    unrecognized = re.match(r"unrecognized arguments: (.*)$", text, re.DOTALL)
    if unrecognized and path:
        flags = [a.lstrip("-").split("=")[0] for a in unrecognized.group(1).split() if a.startswith("--")]
        if flags:
            return "", "unknown key " + ", ".join(f"{path}.{flag}" for flag in flags), None
    return path, text, given


def _with_component_key(message: str, given: str, config) -> str:
    """Name the component a constructor's message came from (see :func:`error_message`)."""
    if _NAMES_A_KEY.search(message):
        return message
    class_path = _GIVEN_CLASS.match(given)
    matches = [(key, node) for key, node in _components(config) if str(node) == given]
    if class_path is None or len(matches) != 1:
        return message
    key, node = matches[0]
    init_args = node.get("init_args") if hasattr(node, "get") else None
    first_word = re.match(r"(\w+)\b", message)
    if first_word and init_args is not None and first_word.group(1) in vars(init_args):
        return f"{key}.init_args.{first_word.group(1)}{message[first_word.end() :]}"
    return f"{key} ({class_path.group(1)}): {message}"


def _components(node, key: str = ""):
    """(key path, value) of every ``class_path`` entry of a parsed config (lists are not entered)."""
    if isinstance(node, argparse.Namespace):
        if "class_path" in vars(node) and key:
            yield key, node
        for name, value in vars(node).items():
            yield from _components(value, f"{key}.{name}" if key else name)


if __name__ == "__main__":
    sys.exit(main())
