"""The README's two commands are the whole set-up: every make target that `make demo` or `make test`
reaches depends on the targets that install the tools its code uses (tests/support/tools.py), and
`.ci/run` runs exactly the README's commands. Read from make's own database (`make -p`) and from the
code of each tier, so a tool used without its make target fails here, not on a fresh machine."""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.support import tools

REPO = Path(__file__).resolve().parents[2]
RUNS = re.compile(r"pytest (tests/[\w/.]+)|(hack/demo\.py)")


@cache
def make_database() -> dict[str, tuple[list[str], str]]:
    """Each target: its prerequisites (order-only ones aside) and its recipe, as make reads them."""
    out = subprocess.run(["make", "-pRrq", "-C", str(REPO)], capture_output=True, text=True).stdout
    rules: dict[str, tuple[list[str], str]] = {}
    current = None
    for line in out.split("\n# Files", 1)[-1].splitlines():
        m = re.match(r"^([A-Za-z0-9_./-]+):(?!=)(.*)$", line)
        if m and not line.startswith("#"):
            current = m.group(1)
            rules[current] = (m.group(2).split("|")[0].split(), "")
        elif current and line.startswith("\t"):
            prereqs, recipe = rules[current]
            rules[current] = (prereqs, recipe + line + "\n")
        elif not line.strip():
            current = None
    return rules


def closure(target: str) -> set[str]:
    """`target` and everything it depends on, transitively."""
    seen: set[str] = set()
    todo = [target]
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(make_database().get(t, ([], ""))[0])
    return seen


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def reachable(entries: list[Path]) -> set[Path]:
    """The files, and the repository modules they import (tests.*), transitively."""
    files = {f for e in entries for f in ([e] if e.is_file() else sorted(e.rglob("*.py")))}
    todo = list(files)
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests"):
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("tests")]
            for name in names:
                f = module_file(name)
                if f is not None and f not in files:
                    files.add(f)
                    todo.append(f)
    return files


def _names(node: ast.expr, consts: dict[str, list[str]]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Starred):
        return _names(node.value, consts)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tools":
        return [str(n) for n in getattr(tools, node.attr)]
    if isinstance(node, ast.Name):
        return consts.get(node.id, [])
    if isinstance(node, ast.Tuple | ast.List):
        return [n for e in node.elts for n in _names(e, consts)]
    return []


def tools_used(path: Path) -> set[str]:
    """What a file asks tools for: tools.require(...) and tools.path(...), and its NEEDS tuple."""
    if path == Path(__file__):
        return set()  # the missing-tool test below asks for tools it does not use
    tree = ast.parse(path.read_text())
    consts: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            consts[node.targets[0].id] = _names(node.value, consts)
    used = set(consts.get("NEEDS", []))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("require", "path")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "tools"):  # fmt: skip
            used.update(n for a in node.args for n in _names(a, consts))
    return used


def runners() -> dict[str, list[Path]]:
    """Make targets whose recipe runs code of the repository: the tiers (pytest DIR) and the demo."""
    found: dict[str, list[Path]] = {}
    for target, (_, recipe) in make_database().items():
        for m in RUNS.finditer(recipe):
            found.setdefault(target, []).append(REPO / (m.group(1) or m.group(2)))
    return found


def test_make_reads_the_targets_this_test_checks() -> None:
    found = runners()
    assert {"demo", "test-unit", "test-contract", "test-integration", "test-e2e"} <= set(found), found
    assert found["demo"] == [REPO / "hack" / "demo.py"]
    # The scan sees what the tiers ask for (else every check below would pass on nothing).
    assert "promtool" in set().union(*map(tools_used, reachable(found["test-integration"])))
    assert {"containerd", "helm"} <= set().union(*map(tools_used, reachable(found["demo"])))


@pytest.mark.parametrize("target", sorted(runners()))
def test_each_target_depends_on_what_installs_the_tools_it_uses(target: str) -> None:
    deps = closure(target)
    missing = {}
    for f in reachable(runners()[target]):
        for name in tools_used(f):
            assert name in tools.TOOLS, f"{f.relative_to(REPO)} asks for {name!r}, which tools.TOOLS does not list"
            if tools.TOOLS[name].target not in deps:
                missing[name] = (tools.TOOLS[name].target, str(f.relative_to(REPO)))
    assert not missing, f"make {target} runs code that uses tools none of its prerequisites installs: {missing}"


def test_the_readme_commands_reach_every_tier_and_every_install_target() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    everything = closure("demo") | closure("test")
    assert {t.target for t in tools.TOOLS.values()} <= everything
    assert set(runners()) - {"test-e2e-kind", "golden"} <= everything  # every tier, but kind (Docker) and goldens
    for target in {t.target for t in tools.TOOLS.values()}:
        assert target in make_database(), f"tools.TOOLS names `make {target}`, which the Makefile lacks"


def test_ci_runs_the_readme_commands_and_nothing_else() -> None:
    script = (REPO / ".ci" / "run").read_text()
    steps = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    run = [s for s in steps if not re.match(r"^(set |cd |echo |start=|t=)", s)]
    assert run == ["make demo", "make test"], run


def test_tools_are_found_through_the_table() -> None:
    """A bare shutil.which("promtool") would bypass the table and its check."""
    offenders = []
    for f in [*REPO.glob("tests/**/*.py"), *REPO.glob("hack/*.py"), REPO / "hack" / "local-cluster"]:
        if f.name == "tools.py" or f.name == "test_kind.py":  # kind's own helm and kubectl, not ours
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "which"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in tools.TOOLS):  # fmt: skip
                offenders.append(f"{f.relative_to(REPO)}:{node.lineno} {node.args[0].value}")
    assert not offenders, offenders


def test_a_missing_tool_is_one_line_naming_its_make_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(tools.ToolMissing) as err:
        tools.require("promtool")
    assert str(err.value) == "promtool is not installed (Debian's prometheus package): run `make promtool`"
    with pytest.raises(tools.ToolMissing) as err:
        tools.require("containerd", "chromium")
    assert str(err.value) == "not installed: containerd, chromium: run `make browser node-deps`"
