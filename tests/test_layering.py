"""The floors of the house: no import runs back up (README, "Layout").

Each top-level folder is a floor and may import only the floors below it. The
rule is read from the source (every `import` and `from … import`, function-level
ones included, since a lazy import hides the same dependency), so adding an import
that runs up a floor fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

FLOORS: dict[str, frozenset[str]] = {
    # floor -> the project floors it may import
    "agentrun": frozenset(),
    "accounts": frozenset({"agentrun"}),
    "store": frozenset({"agentrun"}),
    # The sandbox records its pool's size, claims and cold starts (`telemetry.metrics`).
    "sandbox": frozenset({"agentrun", "telemetry"}),
    # Tenants' secrets: the embedded backend keeps its ciphertext in the accounts
    # database (its table and migration live there).
    "secretstore": frozenset({"agentrun", "accounts"}),
    # Observability (traces, metrics, logs): the OpenTelemetry setup every process's
    # edge installs and the span/metric helpers activities and the API record with.
    "telemetry": frozenset({"agentrun"}),
    # Activities resolve a run's granted secrets in the worker (egress broker,
    # redaction): never as activity input or output.
    "activities": frozenset({"agentrun", "store", "sandbox", "secretstore", "telemetry"}),
    "workflows": frozenset({"agentrun", "activities"}),
    "api": frozenset({"agentrun", "accounts", "store", "workflows", "secretstore", "telemetry"}),
    "worker": frozenset(
        {
            "agentrun",
            "accounts",
            "store",
            "sandbox",
            "activities",
            "workflows",
            "secretstore",
            "telemetry",
        }
    ),
    "cli": frozenset(
        {
            "agentrun",
            "accounts",
            "store",
            "sandbox",
            "activities",
            "workflows",
            "api",
            "worker",
            "secretstore",
            "telemetry",
        }
    ),
}
"""`worker` is `worker.py`; `tests` and `bench` stand outside the house and import anything."""

SELF_CONTAINED = ("sandbox/image",)
"""Runs inside the sandbox container, where none of the project is installed."""

PROJECT = frozenset(FLOORS) | {"tests", "bench"}


def floor_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of a project package in `path`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in PROJECT]
    return found


def violations(root: Path) -> list[str]:
    out: list[str] = []
    for floor, allowed in FLOORS.items():
        files = (
            [root / f"{floor}.py"] if floor == "worker" else sorted((root / floor).rglob("*.py"))
        )
        for path in files:
            rel = path.relative_to(root).as_posix()
            contained = rel.startswith(SELF_CONTAINED)
            for line, imported in project_imports(path):
                if imported == floor and not contained:
                    continue
                if contained or imported not in allowed:
                    out.append(f"{rel}:{line} ({floor}) imports {imported}")
    return out


def test_no_import_runs_back_up_a_floor() -> None:
    assert violations(ROOT) == []


def test_every_python_folder_of_the_project_is_a_known_floor() -> None:
    folders = {
        p.parent.relative_to(ROOT).parts[0]
        for p in ROOT.glob("*/__init__.py")
        if not p.parent.name.startswith(".")
    }
    assert folders - PROJECT == set(), "a new top-level package needs a floor in FLOORS"


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    for floor in FLOORS:
        if floor != "worker":
            (tmp_path / floor).mkdir()
    (tmp_path / "worker.py").write_text("import agentrun\n")
    (tmp_path / "store" / "blob.py").write_text(
        "def lazy() -> None:\n    from api.app import create_app\n"
    )
    (tmp_path / "sandbox" / "image").mkdir()
    (tmp_path / "sandbox" / "image" / "executor.py").write_text("import sandbox.base\n")
    assert violations(tmp_path) == [
        "store/blob.py:2 (store) imports api",
        "sandbox/image/executor.py:1 (sandbox) imports sandbox",
    ]


def test_the_application_image_copies_every_floor() -> None:
    # The Dockerfile lists the floors one by one; a new floor it misses builds an
    # image that fails at its first import (`accounts` once did).
    copied = {
        line.split()[1].rstrip("/").removesuffix(".py")
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
    }
    assert set(FLOORS) - copied == set()
