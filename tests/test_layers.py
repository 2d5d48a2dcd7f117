"""The package's folders import only downward: engine < study < analysis < render < the top (cli, plugins).

Read from the source (every `import`, module level or inside a function), so a lazy import that climbs is caught
too. The layers and what each may import are in `sortrl/README.md`.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sortrl"
LAYERS = ("engine", "study", "analysis", "render")
"""Bottom to top; a module may import its own folder and the folders below it."""
TOP = ("cli", "plugins", "__main__")
"""Modules on top of every folder (the CLI and the plug-in API), free to import any of them."""


def layer_of(module: str) -> int:
    """Rank of a `sortrl...` module name: its folder's index in LAYERS, len(LAYERS) for the top and the root."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `sortrl` import in the file, resolving `from sortrl.x import y` to `sortrl.x.y`
    when `y` is a module (a folder's module imported by name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sortrl"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "sortrl":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                as_module = PACKAGE.parent / (target.replace(".", "/") + ".py")
                found.append((node.lineno, target if as_module.is_file() else node.module))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_each_module_imports_only_its_own_layer_and_below(path):
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    own = layer_of(name)
    climbs = [
        f"line {line}: {module}" for line, module in imports(path) if layer_of(module) > own and module != "sortrl"
    ]
    assert not climbs, f"{name} ({(*LAYERS, 'top')[own]}) imports from above: {climbs}"
    if own < len(LAYERS):  # the root package re-exports the top's API; a folder never reaches back to it
        assert not [m for _, m in imports(path) if m == "sortrl"], f"{name} imports the package root"


def test_every_module_is_in_a_layer_or_on_top():
    """A new module goes into a folder (or is a deliberate addition to the top, listed in TOP)."""
    loose = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in (*TOP, "__init__")]
    assert not loose, f"modules outside the folders: {loose}; put each in engine/, study/, analysis/ or render/"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")} == set(LAYERS)


def test_the_checker_catches_a_climb(tmp_path):
    """The test above would fail: an engine module importing the analysis is read as a climb."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sortrl.analysis.stats import mean\n    import sortrl.render.figures\n")
    assert [layer_of(m) for _, m in imports(bad)] == [2, 3]
    assert layer_of("sortrl.engine.train") == 0 and layer_of("sortrl.cli") == len(LAYERS)
