"""What ``func azure functionapp publish`` uploads holds the app and nothing of its tests or tooling.

Core Tools reads ``.funcignore`` as gitignore patterns and leaves out every file of the project folder a
pattern matches. The package is computed here the same way over a clean checkout (the git-tracked
files), with pathspec's gitignore matcher; then it is checked for folders that must stay local, for test
doubles (by class name, whatever the module), for imports of local-only code, and for the app itself:
every module ``function_app`` can import, lazily imported ones included.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
from pathlib import Path

import pathspec

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = ("tests/", "emulator/", "devhost/", "bench/", "tools/", "infra/", "docs/", "sync_core/testing/")
DOUBLE = re.compile(r"^(InMemory|Memory|Fake)[A-Z]")


@functools.cache
def tracked() -> tuple[str, ...]:
    git = shutil.which("git")
    assert git is not None, "git lists the files of a clean checkout"
    listed = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return tuple(sorted(name for name in listed.decode().split("\0") if name))


@functools.cache
def deployed() -> frozenset[str]:
    spec = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    return frozenset(name for name in tracked() if not spec.match_file(name))


def deployed_modules() -> list[str]:
    return sorted(name for name in deployed() if name.endswith(".py"))


def parse(name: str) -> ast.Module:
    return ast.parse((ROOT / name).read_text(), filename=name)


def imported(name: str) -> set[str]:
    """Every module a file imports, at the top or inside a function (relative imports resolved)."""
    package = name.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    if not name.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(parse(name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from package import module``
    return found


def local_file(module: str) -> str | None:
    path = module.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/__init__.py"):
        if candidate in tracked():
            return candidate
    return None


def test_the_package_holds_no_tests_test_doubles_emulator_devhost_bench_or_tooling() -> None:
    assert deployed(), "the package computation found no file at all"
    leaked = sorted(name for name in deployed() if name.startswith(LOCAL_ONLY))

    assert leaked == []
    # The doubles exist in the checkout and are left out (the matcher is not vacuous).
    assert "sync_core/testing/stores.py" in tracked() and "sync_core/testing/stores.py" not in deployed()


def test_no_deployed_module_defines_a_test_double() -> None:
    doubles = [
        f"{name}: {node.name}"
        for name in deployed_modules()
        for node in ast.walk(parse(name))
        if isinstance(node, ast.ClassDef) and DOUBLE.match(node.name)
    ]

    assert doubles == []


def test_no_deployed_module_imports_local_only_code() -> None:
    local_only = tuple(prefix.rstrip("/").replace("/", ".") for prefix in LOCAL_ONLY)
    offending = [
        f"{name} imports {module}"
        for name in deployed_modules()
        for module in sorted(imported(name))
        if module in local_only or module.startswith(tuple(f"{prefix}." for prefix in local_only))
    ]

    assert offending == []


def test_the_app_is_in_the_package_with_every_module_function_app_can_import() -> None:
    needed, todo = set(), ["function_app.py"]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        parts = name.split("/")[:-1]
        packages = ["/".join(parts[:depth]) + "/__init__.py" for depth in range(1, len(parts) + 1)]
        todo.extend(package for package in packages if package in tracked())
        todo.extend(file for module in imported(name) if (file := local_file(module)) is not None)

    assert {"function_app.py", "host.json", "requirements.txt", "sync_core/api/openapi.json"} <= deployed()
    assert "sync_core/use_cases/sync_mailbox.py" in needed and "triggers/__init__.py" in needed
    assert sorted(needed - deployed()) == []
    # And the whole product package (data files included) ships, its test doubles aside.
    product = {name for name in tracked() if name.startswith(("sync_core/", "triggers/"))}
    assert sorted(product - deployed()) == sorted(name for name in product if name.startswith("sync_core/testing/"))
