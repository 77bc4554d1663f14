"""dvc.yaml lists, for every stage, exactly the code its script runs: the script and the rsdetect modules it
imports, directly or through each other (lazy imports inside functions included: they run in the stage)."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGE = "rsdetect"


def imported_modules(path: Path) -> set[str]:
    """rsdetect modules a file imports, anywhere in it: `import rsdetect.x`, `from rsdetect.x import ...`,
    `from rsdetect import x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:
                found |= {a.name for a in node.names}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.split(".")[1])
    return {m for m in found if (ROOT / "src" / PACKAGE / f"{m}.py").is_file()}


def code_deps(script: Path) -> set[str]:
    """The script and every rsdetect module reachable from it, as repository-relative paths."""
    seen, todo = set(), imported_modules(script)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo |= imported_modules(ROOT / "src" / PACKAGE / f"{module}.py")
    return {str(script.relative_to(ROOT))} | {f"src/{PACKAGE}/{m}.py" for m in seen}


def declared_code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.endswith(".py")}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_match_its_imports(name):
    script = ROOT / "src" / f"{name}.py"  # stage name = script name
    assert f"src/{name}.py" in STAGES[name]["cmd"]
    declared, derived = declared_code_deps(STAGES[name]), code_deps(script)
    assert declared == derived, f"{name}: missing {sorted(derived - declared)}, not imported {sorted(declared - derived)}"


def test_a_missing_dep_is_caught(tmp_path):
    """The check fails when dvc.yaml forgets a module the script imports (here: train without training.py)."""
    stage = dict(STAGES["train"], deps=[d for d in STAGES["train"]["deps"] if d != "src/rsdetect/training.py"])
    assert "src/rsdetect/training.py" in code_deps(ROOT / "src/train.py") - declared_code_deps(stage)


def test_lazy_imports_inside_functions_count(tmp_path):
    f = tmp_path / "stage.py"
    f.write_text("def main():\n    from rsdetect import model as m\n    import rsdetect.pairs\n")
    assert imported_modules(f) == {"model", "pairs"}
