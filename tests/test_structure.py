"""Project structure read statically from the source (no module is executed).

Layering: configs/ holds data only; shared/ library code (encoders) does not reach into the embedded world;
library code does not import command-line modules. Names: each config class name means one shape (one
definition). Constants: the score at which an answer counts as correct is defined once, in shared.metrics.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "shared", "stage_a", "stage_b", "envs", "serve")


def _file_of(module: str) -> Path | None:
    """The project source file of a dotted module name, or None for third-party and standard modules."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Project modules `path` imports at module level or inside functions (`from a import b` may name a module a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; the project imports absolutely"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    names = set()
    for name in found:  # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in names if _file_of(name) is not None}


def reachable(module: str) -> set[str]:
    """Every project module importing `module` can load, itself included."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imports(_file_of(name), name) - seen)
    return seen


@pytest.mark.parametrize("module, forbidden", [
    ("configs.retention_variants", "stage_a"),       # presets are pure data
    ("shared.encoders", "shared.world"),             # frozen encoders work without the embedded world
    ("shared.clap_features", "shared.world"),
    ("stage_b.outcomes", "stage_a.eval_command"),    # library code does not import a CLI module
    ("stage_a.pipeline", "stage_a.eval_command"),
])
def test_module_does_not_reach(module: str, forbidden: str) -> None:
    offenders = sorted(m for m in reachable(module) if m == forbidden or m.startswith(f"{forbidden}."))
    assert not offenders, f"{module} imports {offenders}"


def test_the_walker_follows_indirect_imports() -> None:
    """The check can fail: it sees modules reached only through others (train -> retention -> presets)."""
    assert "configs.retention_variants" in reachable("stage_a.train")
    assert "shared.world.build" in reachable("stage_a.train")  # through stage_a.setup
    assert "stage_a.checkpointing" in reachable("stage_b.outcomes")


def _project_files() -> list[Path]:
    return sorted(f for package in PACKAGES for f in (ROOT / package).rglob("*.py"))


def test_one_correctness_threshold() -> None:
    """No module but shared/metrics.py defines a CORRECT-like constant or compares a score with `>= 0.5`."""
    offenders = []
    for path in _project_files():
        if path == ROOT / "shared" / "metrics.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and "CORRECT" in t.id for t in targets):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} defines {targets[0].id}")
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.GtE) for op in node.ops) and any(
                    isinstance(c, ast.Constant) and c.value == 0.5 for c in node.comparators):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with >= 0.5")
    assert not offenders, f"use shared.metrics.CORRECT instead: {offenders}"


def test_each_config_class_is_defined_once() -> None:
    """A config class name (e.g. SweepConfig) has one definition, so it names one shape."""
    defined: dict[str, list[str]] = {}
    for path in _project_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
                defined.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {name: where for name, where in defined.items() if len(where) > 1} == {}
    assert "SweepConfig" in defined and "TrainConfig" in defined  # the walk sees the project's configs
