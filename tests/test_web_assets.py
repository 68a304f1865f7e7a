"""The web UI's ES modules fit together: every module the page loads exists, and every name a
module imports is exported by the module it names. (No browser, no node: a broken split of the
UI fails here in milliseconds; tests/test_web_ui.py drives the real thing in Chromium.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "src" / "llamanet" / "web"

_IMPORT = re.compile(r'import\s*\{([^}]*)\}\s*from\s*"\./([\w-]+\.js)"')
_EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|class|const|let)\s+(\w+)", re.M)
_SCRIPT = re.compile(r'<script[^>]*type="module"[^>]*src="([\w./-]+)"')


def _modules() -> list[Path]:
    return sorted(WEB.glob("*.js"))


def _exports(module: Path) -> set[str]:
    return set(_EXPORT.findall(module.read_text()))


def test_the_page_loads_existing_modules() -> None:
    scripts = _SCRIPT.findall((WEB / "index.html").read_text())
    assert scripts == ["app.js"]
    assert all((WEB / script).is_file() for script in scripts)


@pytest.mark.parametrize("module", _modules(), ids=lambda path: path.name)
def test_every_imported_name_is_exported(module: Path) -> None:
    for names, target in _IMPORT.findall(module.read_text()):
        path = WEB / target
        assert path.is_file(), f"{module.name} imports {target}, which does not exist"
        wanted = {name.strip().split(" as ")[0] for name in names.split(",") if name.strip()}
        missing = wanted - _exports(path)
        assert not missing, f"{module.name} imports {sorted(missing)} that {target} does not export"


def test_every_module_is_used() -> None:
    """No dead module: each one is the page's entry point or imported by another."""
    imported = {"app.js"}
    for module in _modules():
        imported |= {target for _names, target in _IMPORT.findall(module.read_text())}
    assert {module.name for module in _modules()} == imported
