"""The package's shape: every module imports on its own (an import cycle fails one of them,
depending on which is imported first), and the core never imports a transport."""
from __future__ import annotations

import ast
import concurrent.futures
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dji_media")
# Modules that may speak a wire format: the transports themselves, and the runtime and command
# line that start them. Everything else is core (use cases, rules, plugin faces, backends).
TRANSPORT_PREFIXES = ("dji_media.web", "dji_media.mqtt")
MAY_IMPORT_TRANSPORTS = ("dji_media.web", "dji_media.mqtt", "dji_media.runtime", "dji_media.server",
                         "dji_media.workers", "dji_media.wiring", "dji_media.cli", "dji_media.simulator",
                         "dji_media.devices_command", "dji_media")


def modules():
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                found.append(path[:-len(".__init__")] if path.endswith(".__init__") else path)
    return sorted(found)


def test_every_module_imports_on_its_own():
    def load(module):
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        return module, done.returncode, done.stderr.strip().splitlines()[-1:]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        failed = [(m, err) for m, code, err in pool.map(load, modules()) if code != 0]
    assert failed == []


def _imports(module):
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    if not os.path.exists(path):
        path = os.path.join(ROOT, *module.split("."), "__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("module", [m for m in modules() if not m.startswith(MAY_IMPORT_TRANSPORTS)
                                    or m == "dji_media"])
def test_the_core_never_imports_a_transport(module):
    if module == "dji_media":  # the package re-exports the HTTP routes for host applications
        return
    offending = sorted({name for name in _imports(module) if name.startswith(TRANSPORT_PREFIXES)})
    assert offending == [], f"{module} imports {offending}"
