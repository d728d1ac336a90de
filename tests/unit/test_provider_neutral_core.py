"""Only the Graph adapter package knows Microsoft Graph: no module of sync_core outside the provider
adapter packages (``sync_core/adapters/<provider>/``) mentions a Graph URL, ``$batch``, ``$filter``, an
``@odata`` key or a Graph resource path (Table storage's client names Table storage's own ``$batch``
endpoint, nothing else). A new provider is then one adapter package beside it
(docs/architecture.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "sync_core"
GRAPH_ADAPTER = CORE / "adapters" / "graph"
PROVIDER_PACKAGES = tuple(p for p in (CORE / "adapters").iterdir() if (p / "__init__.py").is_file())
GRAPH_MARKERS = re.compile(r"graph\.microsoft|/me\b|/users/|\$batch|@odata|\$filter|mailFolders")
# Table storage has a ``$batch`` endpoint of its own (entity group transactions): its client may name it.
TABLE_CLIENT = CORE / "adapters" / "table_client.py"
TABLE_MARKERS = re.compile(r"graph\.microsoft|/me\b|/users/|@odata|\$filter|mailFolders")


def _core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if not any(package in p.parents for package in PROVIDER_PACKAGES))


def test_the_core_has_modules_outside_the_provider_adapters() -> None:
    assert GRAPH_ADAPTER in PROVIDER_PACKAGES
    assert len(_core_modules()) > 40


@pytest.mark.parametrize("module", _core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_no_module_outside_the_graph_adapter_speaks_graph(module: Path) -> None:
    hits = [
        f"{number}: {line.strip()}"
        for number, line in enumerate(module.read_text(encoding="utf-8").splitlines(), 1)
        if (TABLE_MARKERS if module == TABLE_CLIENT else GRAPH_MARKERS).search(line)
    ]
    assert hits == []


def test_the_markers_do_find_graph_in_the_graph_adapter() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in GRAPH_ADAPTER.rglob("*.py"))
    for marker in ("graph.microsoft", "$batch", "@odata", "$filter", "mailFolders"):
        assert marker in text
