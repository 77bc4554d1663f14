"""dvc.yaml lists, for every stage, exactly the code its script runs: the script and the rsdetect modules it
imports, directly or through each other (lazy imports inside functions included: they run in the stage)."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

PACKAGE = "rsdetect"


def module_file(dotted: str) -> Path | None:
    """The file of an rsdetect module or package, `rsdetect.serve.scan` -> src/rsdetect/serve/scan.py."""
    base = ROOT / "src" / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """rsdetect modules a file imports, anywhere in it, dotted: `import rsdetect.x.y`, `from rsdetect.x.y import
    name`, `from rsdetect.x import y` (a module y, or a name of package x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return {m for m in found if module_file(m)}


def with_parents(dotted: str) -> set[str]:
    """Importing rsdetect.a.b runs rsdetect/__init__.py and rsdetect/a/__init__.py first: they are code too."""
    parts = dotted.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def code_deps(script: Path) -> set[str]:
    """The script and every rsdetect module (and package __init__) reachable from it, repository-relative."""
    seen: set[str] = set()
    todo = set().union(*map(with_parents, imported_modules(script))) if imported_modules(script) else set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            for m in imported_modules(module_file(module)):
                todo |= with_parents(m)
    return {str(script.relative_to(ROOT))} | {str(module_file(m).relative_to(ROOT)) for m in seen}


def declared_code_deps(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if d.endswith(".py")}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_match_its_imports(name):
    script = ROOT / "src" / f"{name}.py"  # stage name = script name
    assert f"src/{name}.py" in STAGES[name]["cmd"]
    declared, derived = declared_code_deps(STAGES[name]), code_deps(script)
    assert declared == derived, (f"{name}: missing {sorted(derived - declared)}, "
                                 f"not imported {sorted(declared - derived)}")


def test_a_missing_dep_is_caught(tmp_path):
    """The check fails when dvc.yaml forgets a module the script imports (here: train without training.py)."""
    stage = dict(STAGES["train"], deps=[d for d in STAGES["train"]["deps"] if d != "src/rsdetect/model/training.py"])
    assert "src/rsdetect/model/training.py" in code_deps(ROOT / "src/train.py") - declared_code_deps(stage)


def test_lazy_imports_inside_functions_count(tmp_path):
    f = tmp_path / "stage.py"
    f.write_text("def main():\n    from rsdetect.model import backbone as m\n    import rsdetect.synth.pairs\n")
    assert imported_modules(f) == {"rsdetect.model", "rsdetect.model.backbone", "rsdetect.synth.pairs"}


# --- params: a stage's params are its group plus the cross-group keys it declares --------------------------------

def _loads_params(node: ast.AST) -> bool:
    """Whether `node` contains a call to load_params (the one reader of params.yaml)."""
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "load_params"
               for n in ast.walk(node))


def params_readers(script: Path) -> list[ast.AST]:
    """The code of a stage that reads params.yaml: the script, and each rsdetect function it calls by name that
    loads the params itself (register's script hands "params.yaml" to registry.register_from_outputs)."""
    tree = ast.parse(script.read_text())
    called = {getattr(n.func, "id", getattr(n.func, "attr", None)) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    readers: list[ast.AST] = [tree]
    for module in sorted(code_deps(script) - {str(script.relative_to(ROOT))}):
        for node in ast.parse((ROOT / module).read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in called and _loads_params(node):
                readers.append(node)
    return readers


def params_read(code: ast.AST) -> tuple[set[str], set[str]]:
    """(dotted keys read, groups handed on whole) by code holding the params object in a variable `params`.

    Follows `params.group.key` chains and aliases (`s = params.synthesize`, `s, f = params.synthesize,
    params.features`, then `s.size`). A group passed on whole (`load_photos(..., s)`) is reported as such: which
    of its keys the callee reads is not traced here (the stage then declares the keys it needs; dvc.yaml's
    comments say which).
    """
    parent = {child: node for node in ast.walk(code) for child in ast.iter_child_nodes(node)}
    alias: dict[str, str] = {}
    for node in ast.walk(code):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            pairs = [(node.targets[0], node.value)]
            if isinstance(node.targets[0], ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(node.targets[0].elts, node.value.elts, strict=False))
            for target, value in pairs:
                if isinstance(target, ast.Name) and isinstance(value, ast.Attribute) \
                        and isinstance(value.value, ast.Name) and value.value.id == "params":
                    alias[target.id] = value.attr
    keys, whole = set(), set()
    for node in ast.walk(code):
        if not isinstance(node, ast.Name):
            continue
        if node.id == "params" and isinstance(parent.get(node), ast.Attribute):
            group_node = parent[node]
            group = group_node.attr
        elif node.id in alias and isinstance(node.ctx, ast.Load):
            group_node, group = node, alias[node.id]
        else:
            continue
        up = parent.get(group_node)
        if isinstance(up, ast.Attribute) and not up.attr.startswith("model_"):  # model_dump() etc.: all of it
            keys.add(f"{group}.{up.attr}")
        elif group == "seed":
            keys.add("seed")
        elif not (isinstance(up, ast.Assign) and group_node is not node and up.value is group_node) \
                and not (isinstance(up, ast.Tuple) and isinstance(parent.get(up), ast.Assign)
                         and parent[up].value is up):
            whole.add(group)  # handed on (or dumped) whole, not just bound to an alias
    return keys, whole


def uncovered_params(stage: dict, script: Path) -> list[str]:
    """Params the stage's code reads that its dvc.yaml `params:` does not cover (by group or dotted key)."""
    declared = {p for p in stage.get("params", []) if isinstance(p, str)}
    missing = []
    for code in params_readers(script):
        keys, whole = params_read(code)
        for key in sorted(keys):
            if key not in declared and key.split(".")[0] not in declared:
                missing.append(key)
        for group in sorted(whole):
            if group not in declared and not any(d.startswith(group + ".") for d in declared):
                missing.append(group)
    return sorted(set(missing))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_cover_what_its_code_reads(name):
    """A changed param reruns every stage that reads it: each `params.<group>.<key>` read is in the stage's
    `params:` (its group, or the dotted key for a cross-group read)."""
    assert uncovered_params(STAGES[name], ROOT / "src" / f"{name}.py") == []


def test_params_reads_are_found():
    """The analysis sees direct chains, aliases, tuple aliases, whole groups, and register's library reader."""
    keys, whole = params_read(ast.parse(
        "params = load_params()\ns, f = params.synthesize, params.features\nt = params.train\n"
        "go(params.seed, s.size, f.image_size, t, params.external.window, params.augment)\n"))
    assert keys == {"seed", "synthesize.size", "features.image_size", "external.window"}
    assert whole == {"train", "augment"}
    register = dict(STAGES["register"], params=["register"])  # without the declared cross-group key
    assert uncovered_params(register, ROOT / "src/register.py") == ["features.image_size"]
