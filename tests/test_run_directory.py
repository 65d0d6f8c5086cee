"""The run directory: settings a rerun may change (raising the iterations) and may not; chunks made under
other settings never reused; a damaged chunk named; chunk costs kept across processes; the phase trainers'
precision."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from sapo.data.trajectory import Cost, Trajectory, TrajectoryFormatError
from sapo.evolution import RunDirectory, RunMismatchError
from sapo.evolution.run_directory import ChunkedJsonl
from sapo.evolution.trainers import phase_trainer

EXTENDABLE = ("model.init_args.iterations",)


def settings(iterations: int = 2, margin: float = 0.3) -> dict:
    return {"model": {"init_args": {"iterations": iterations, "pairs": {"margin": margin}}}, "data": {}}


def test_a_finished_run_may_raise_its_iterations_but_not_lower_them_or_change_anything_else(tmp_path):
    run = RunDirectory(tmp_path, settings(2), extendable=EXTENDABLE)
    run.finish("sft", reasoner="x")
    more = RunDirectory(tmp_path, settings(3), extendable=EXTENDABLE)
    assert more.done("sft") and more.manifest["settings"] == settings(3)
    assert more.fingerprint == run.fingerprint  # chunks made under T = 2 stay valid under T = 3
    with pytest.raises(RunMismatchError, match="model.init_args.iterations"):
        RunDirectory(tmp_path, settings(1), extendable=EXTENDABLE)
    with pytest.raises(RunMismatchError, match=r"differ at: model.init_args.pairs.margin\)"):
        RunDirectory(tmp_path, settings(3, margin=0.5), extendable=EXTENDABLE)


def test_the_engines_sizing_may_change_on_a_rerun_and_keeps_the_chunks(tmp_path):
    from sapo.evolution.backends import ADJUSTABLE

    def with_engine(kv_cache_gib: float, dtype: str = "auto") -> dict:
        config = settings()
        config["model"]["init_args"]["sampling"] = {"vllm": {"kv_cache_gib": kv_cache_gib, "dtype": dtype}}
        return config

    run = RunDirectory(tmp_path, with_engine(100.0), adjustable=ADJUSTABLE)
    run.finish("sft", reasoner="x")
    smaller = RunDirectory(tmp_path, with_engine(0.5), adjustable=ADJUSTABLE)  # the engine did not fit
    assert smaller.done("sft") and smaller.fingerprint == run.fingerprint
    with pytest.raises(RunMismatchError, match=r"model.init_args.sampling.vllm.dtype"):  # changes results
        RunDirectory(tmp_path, with_engine(0.5, dtype="float32"), adjustable=ADJUSTABLE)


def test_a_setting_added_since_at_its_null_default_keeps_the_chunks(tmp_path):
    # a run made before the library had a setting; resumed by a version whose settings hold it, at null
    run = RunDirectory(tmp_path, settings())
    run.finish("sft", reasoner="x")
    ChunkedJsonl(run, "samples_0", "samples_0").write(0, [_trajectory("made")])
    newer = settings()
    newer["model"]["init_args"]["compare_with"] = None
    resumed = RunDirectory(tmp_path, newer)
    assert resumed.fingerprint == run.fingerprint
    assert ChunkedJsonl(resumed, "samples_0", "samples_0").read(0)[0].question_id == "made"  # not moved aside
    # a manifest written before the fingerprint was kept in it: the stored settings' hash
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["fingerprint"] == run.fingerprint
    del manifest["fingerprint"]
    manifest["settings"] = settings()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert RunDirectory(tmp_path, newer).fingerprint == run.fingerprint
    # a run with no finished phase takes the settings it is given, and their hash
    fresh = tmp_path / "fresh"
    assert (
        RunDirectory(fresh, settings(margin=0.3)).fingerprint
        != RunDirectory(fresh, settings(margin=0.5)).fingerprint
    )


def test_a_setting_added_since_at_its_default_resumes_and_any_other_value_is_refused(tmp_path):
    # a run recorded before the library had pairs.first_error (default False) and the group orpo
    run = RunDirectory(tmp_path, settings())
    run.finish("sft", reasoner="x")
    ChunkedJsonl(run, "samples_0", "samples_0").write(0, [_trajectory("made")])
    defaults = {
        "model": {"init_args": {"pairs": {"margin": 0.3, "first_error": False}, "orpo": {"weight": 0.1}}}
    }

    def newer(first_error: bool = False, weight: float = 0.1) -> dict:
        config = settings()
        config["model"]["init_args"]["pairs"]["first_error"] = first_error
        config["model"]["init_args"]["orpo"] = {"weight": weight}
        return config

    resumed = RunDirectory(tmp_path, newer(), defaults=defaults)
    assert resumed.done("sft") and resumed.fingerprint == run.fingerprint
    assert ChunkedJsonl(resumed, "samples_0", "samples_0").read(0)[0].question_id == "made"
    assert resumed.manifest["settings"] == newer()  # recorded from now on
    # the same stored run, tried with values the old run cannot have had
    (tmp_path / "manifest.json").write_text(json.dumps({**run.manifest, "settings": settings()}))
    with pytest.raises(RunMismatchError, match=r"differ at: model\.init_args\.pairs\.first_error\)"):
        RunDirectory(tmp_path, newer(first_error=True), defaults=defaults)
    with pytest.raises(RunMismatchError, match=r"differ at: model\.init_args\.orpo\.weight\)"):
        RunDirectory(tmp_path, newer(weight=0.5), defaults=defaults)
    with pytest.raises(RunMismatchError, match=r"model\.init_args\.pairs\.first_error"):
        RunDirectory(tmp_path, newer())  # without the defaults only a null is known to be a default
    # a setting the stored run had is compared as it is, whatever the library's default
    changed = settings(margin=0.5)
    with pytest.raises(RunMismatchError, match=r"model\.init_args\.pairs\.margin"):
        RunDirectory(tmp_path, changed, defaults=defaults)


def test_library_defaults_are_the_constructors_defaults_as_plain_data():
    from sapo.evolution import SAPSDataModule, SelfEvolution
    from sapo.evolution.run_directory import library_defaults

    tree = library_defaults(model=SelfEvolution, data=SAPSDataModule)
    model = tree["model"]["init_args"]
    assert model["iterations"] == 3 and model["branch_from"] is None
    assert model["pairs"]["rejected_from_first_error"] is False and model["pairs"]["margin"] == 0.3
    assert "reasoner" not in model  # no default: a recipe must give it
    json.dumps(tree)  # plain data, as the manifest stores it


def test_a_damaged_manifest_is_named(tmp_path):
    (tmp_path / "manifest.json").write_text('{"phases": ')
    with pytest.raises(RunMismatchError, match="manifest.json is not valid JSON"):
        RunDirectory(tmp_path, settings())


def _trajectory(name: str) -> Trajectory:
    return Trajectory(name, "question", ["1 + 1 = 2"])


def test_chunks_made_under_other_settings_are_moved_aside_not_reused(tmp_path):
    run = RunDirectory(tmp_path, settings(margin=0.3))
    store = ChunkedJsonl(run, "samples_0", "samples_0")
    store.write(0, [_trajectory("old")], cost=Cost(completions=4))
    assert ChunkedJsonl(run, "samples_0", "samples_0").has(0)  # same settings: kept
    (tmp_path / "manifest.json").unlink()  # what the mismatch message once suggested
    other = RunDirectory(tmp_path, settings(margin=0.5))
    with pytest.warns(UserWarning, match="made under other settings"):
        fresh = ChunkedJsonl(other, "samples_0", "samples_0")
    assert not fresh.has(0)
    stale = tmp_path / "samples_0.parts.stale"
    assert json.loads((stale / "chunk_00000.jsonl").read_text())["question_id"] == "old"  # nothing lost


def test_a_damaged_chunk_is_named_with_how_to_make_it_again(tmp_path):
    run = RunDirectory(tmp_path, settings())
    store = ChunkedJsonl(run, "labels_1", "labels_1")
    store.write(0, [{"role": "cost", "completions": 2}], cost=Cost(completions=2))
    store.path(0).write_text('{"role": "cost", "compl')
    with pytest.raises(
        TrajectoryFormatError, match=r"chunk_00000.jsonl, line 1: not valid JSON.*delete .*chunk_00000"
    ):
        store.read_records(0)
    assert store.cost(0) == Cost(completions=2)


def test_a_chunk_keeps_its_cost_for_later_processes(tmp_path):
    run = RunDirectory(tmp_path, settings())
    ChunkedJsonl(run, "samples_1", "samples_1").write(
        0, [_trajectory("a")], cost=Cost(completions=8, seconds=1.5)
    )
    again = ChunkedJsonl(RunDirectory(tmp_path, settings()), "samples_1", "samples_1")
    assert again.cost(0) == Cost(completions=8, seconds=1.5)
    assert again.cost(1) == Cost()  # a chunk not made yet costs nothing


class _RecordsAutocast(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.autocast: list[bool] = []
        self.dtypes: list[torch.dtype] = []

    def training_step(self, batch, batch_idx):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        out = self.layer(batch[0])
        self.dtypes.append(out.dtype)
        return out.float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 4)), batch_size=2)


def test_a_phase_trainer_trains_in_the_recipes_precision_on_cpu(tmp_path, sapo_cache_dir):
    template = L.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False)
    module = _RecordsAutocast()
    phase_trainer(template, tmp_path, "sft", epochs=1, gradient_clip=None).fit(module)
    assert module.autocast == [True, True] and module.dtypes == [torch.bfloat16] * 2
    # max_steps: exactly that many optimizer steps, the data cycled (2 batches per epoch here)
    module = _RecordsAutocast()
    trainer = phase_trainer(template, tmp_path, "orpo_1", epochs=1, gradient_clip=None, max_steps=5)
    trainer.fit(module)
    assert trainer.global_step == 5 and len(module.autocast) == 5


def test_training_progress_comes_as_plain_lines_for_a_log_file(capsys):
    from sapo.callbacks import ProgressLines

    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[ProgressLines("verifier_1", every_seconds=0.0)],
    )
    trainer.fit(_RecordsAutocast())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[sapo] verifier_1")]
    assert lines[0].startswith("[sapo] verifier_1: step 1/2 (50%)") and "steps/s" in lines[0]
    assert lines[-1].startswith("[sapo] verifier_1: step 2/2 (100%)")
