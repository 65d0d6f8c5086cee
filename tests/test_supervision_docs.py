"""docs/strategies.md: its Python blocks run as written, and the strategies they define behave as described."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import pytest

from sapo.data.trajectory import Trajectory
from sapo.supervision import FirstErrorSupervision, Prefix, Rollout, SupervisionStrategy

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


class FirstErrorSampler:
    """Rollouts from a prefix succeed iff it holds only steps before the trajectory's true first error."""

    def __init__(self, first_errors: dict[str, int]) -> None:
        self.first_errors = first_errors
        self.calls: list[list[int]] = []

    def rollouts(self, prefixes: Sequence[Prefix], k: int, early_stop: bool = False) -> list[list[Rollout]]:
        self.calls.append([p.num_steps for p in prefixes])
        return [
            [
                Rollout(["The answer is 5"], "5", ok, 3)
                for ok in [p.num_steps <= self.first_errors[p.trajectory.question_id]] * k
            ]
            for p in prefixes
        ]


class TableScorer:
    def __init__(self, scores: dict[str, list[float]]) -> None:
        self.scores = scores

    def score(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        return [self.scores[t.question_id] for t in trajectories]


def trajectory(question_id: str, n: int, outcome: bool) -> Trajectory:
    return Trajectory(question_id, "q", [f"s{j}" for j in range(n)], outcome=outcome)


@pytest.fixture
def doc_namespace() -> dict:
    """Every Python block of the doc, run in order in one namespace that starts with the names its usage
    example takes as given (``trajectories``, ``sampler``, ``verifier``)."""
    namespace = {
        "__name__": "strategies_doc",
        "trajectories": [trajectory("a", 4, False), trajectory("b", 3, True)],
        "sampler": FirstErrorSampler({"a": 2}),
        "verifier": TableScorer({"a": [0.9, 0.8, 0.1, 0.1]}),
    }
    python = blocks("python")
    assert len(python) >= 3
    for code in python:
        exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


def test_usage_example_runs(doc_namespace):
    result = doc_namespace["result"]
    assert [t.labels for t in result.labelled] == [[1.0, 1.0, 0.0, 0.0], [1.0] * 3]


def test_new_strategy_is_a_subclass_under_30_lines(doc_namespace):
    (code,) = [b for b in blocks("python") if "class BeforeAnswerSupervision" in b]
    assert len(code.strip().splitlines()) < 30
    strategy = doc_namespace["BeforeAnswerSupervision"](k=2)
    assert isinstance(strategy, SupervisionStrategy)
    sampler = FirstErrorSampler({"saved": 3, "lost": 1, "one": 0})
    trajectories = [trajectory("saved", 4, False), trajectory("ok", 2, True), trajectory("lost", 3, False)]
    result = strategy.label([*trajectories, trajectory("one", 1, False)], sampler)
    assert sampler.calls == [[3, 2, 0]]  # one call for every trajectory
    assert [t.labels for t in result.labelled] == [[1.0, 1.0, 1.0, 0.0], [1.0, 1.0], [0.0, 0.0, 0.0], [0.0]]
    assert {t.label_source for t in result.labelled} == {"before_answer"}
    assert (result.cost.rollout_estimates, result.cost.completions, result.cost.generated_tokens) == (
        3,
        6,
        18,
    )


def test_detection_variant_overrides_one_method(doc_namespace):
    (code,) = [b for b in blocks("python") if "class LowestScoreSupervision" in b]
    assert len(code.strip().splitlines()) < 30
    strategy = doc_namespace["LowestScoreSupervision"]()
    assert isinstance(strategy, FirstErrorSupervision)
    scorer = TableScorer({"a": [0.9, 0.3, 0.5, 0.1]})  # largest drop at 1, lowest score at 3
    result = strategy.label([trajectory("a", 4, False)], FirstErrorSampler({"a": 3}), scorer)
    assert result.labelled[0].meta["verification"]["detected"] == 3
    assert result.labelled[0].labels == [1.0, 1.0, 1.0, 0.0]
    assert result.labelled[0].label_source == "lowest_score"


def test_yaml_example_builds_the_new_strategy(doc_namespace, monkeypatch):
    jsonargparse = pytest.importorskip("jsonargparse")
    yaml = pytest.importorskip("yaml")
    package = types.ModuleType("my_package")
    package.BeforeAnswerSupervision = doc_namespace["BeforeAnswerSupervision"]
    package.BeforeAnswerSupervision.__module__ = "my_package"
    monkeypatch.setitem(sys.modules, "my_package", package)
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(SupervisionStrategy, "strategy")
    (config,) = blocks("yaml")
    parsed = parser.parse_object(yaml.safe_load(config))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    strategy = instantiate(parsed).strategy
    assert type(strategy).__name__ == "BeforeAnswerSupervision" and strategy.k == 4
