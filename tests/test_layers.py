"""Imports point down the package's layers, as `docs/design.md` lists them, also inside functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sapo"

#: bottom to top; a module may import its own layer and the ones before it (docs/design.md, "Layers")
LAYERS = [
    "sapo.sandbox",
    "sapo.data",
    "sapo.supervision",
    "sapo.rollout",
    "sapo.models",
    "sapo.eval",
    "sapo.callbacks",
    "sapo.evolution",
    "sapo.cli",
]


def layer_of(module: str) -> int | None:
    """The index of the layer ``module`` belongs to (the longest layer name it starts with)."""
    matches = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return max(matches, key=lambda i: len(LAYERS[i])) if matches else None


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, importer: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a ``sapo`` module in ``source``, at any depth (functions,
    methods, ``if TYPE_CHECKING`` blocks), relative imports resolved against ``importer``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importer.split(".") if is_package else importer.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return [(line, name) for line, name in found if name == "sapo" or name.startswith("sapo.")]


def upward_imports(package: Path) -> list[str]:
    """Every import in the ``package`` folder of a module in a higher layer than the importer's, as
    ``"file:line: importer imports module"``."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        importer = module_name(path, package)
        own = layer_of(importer)
        if own is None:
            continue
        for line, module in imported_modules(
            path.read_text(encoding="utf-8"), importer, path.name == "__init__.py"
        ):
            other = layer_of(module)
            if other is not None and other > own:
                where = path.relative_to(package.parent)
                problems.append(f"{where}:{line}: {importer} imports {module} (layer above)")
    return problems


def test_every_module_of_the_package_has_a_layer():
    orphans = [
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if layer_of(module_name(p)) is None and module_name(p) != "sapo"
    ]
    assert not orphans, f"modules outside every layer of docs/design.md: {orphans}"


def test_imports_only_point_down():
    assert upward_imports(PACKAGE) == []


def test_an_upward_import_is_caught_also_inside_a_function(tmp_path):
    package = tmp_path / "sapo"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "records.py").write_text(
        "from sapo.data import steps\n\n\ndef late():\n    from sapo.models.verifier import PRMVerifier\n"
    )
    (package / "data" / "relative.py").write_text("def late():\n    from ..eval import reasoner\n")
    problems = upward_imports(package)
    assert problems == [
        "sapo/data/records.py:5: sapo.data.records imports sapo.models.verifier (layer above)",
        "sapo/data/relative.py:2: sapo.data.relative imports sapo.eval (layer above)",
    ]


def test_the_layers_are_the_ones_the_design_document_lists():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design.split("## Layers", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\d+\. `(sapo[\w.]*)`", section, flags=re.MULTILINE)
    assert listed == LAYERS


@pytest.mark.parametrize("limit", [600])
def test_no_module_is_over_the_size_limit_unless_its_docstring_says_why(limit):
    long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > limit and "longer than" not in docstring:
            long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, long
