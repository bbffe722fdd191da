"""The package's layering: the data path reads top to bottom and nothing imports upwards.

structures -> pdf -> data -> diffusion -> inference -> evaluation -> training -> tuning / serving -> cli. A
module may import only from layers below its own (peers on one layer not from each other), checked two ways:
every `import pdfusion...` statement in the source, function-local ones included (they hide the layering
from a reader, not from this test), and what importing each subpackage really loads in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "platform" / "pdfusion"
LAYERS = [
    ("config",),
    ("limits", "io_utils"),
    ("storage",),
    ("tracking",),
    ("structures",),
    ("pdf",),
    ("data",),
    ("diffusion",),
    ("inference",),
    ("evaluation",),
    ("training",),
    ("tuning", "serving"),
    ("cli",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str | None:
    """'pdfusion.pdf.debye' -> 'pdf'; 'pdfusion' -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pdfusion" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pdfusion":
                out += [(node.lineno, f"pdfusion.{a.name}") for a in node.names]
            elif node.module.startswith("pdfusion."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("pdfusion.")]
    return out


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert units - {"__main__"} <= set(RANK), f"give these a layer in LAYERS: {sorted(units - set(RANK))}"


def test_no_source_import_goes_up_or_sideways():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        src = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if src not in RANK:
            continue
        for line, module in _imports(path):
            dst = _unit(module)
            if dst is not None and dst != src and dst in RANK and not RANK[dst] < RANK[src]:
                bad.append(f"{rel}:{line} ({src}) imports {module} ({dst})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("unit", [u for names in LAYERS for u in names])
def test_importing_a_unit_loads_only_lower_layers(unit):
    code = ("import importlib, json, pkgutil, sys\n"
            f"m = importlib.import_module('pdfusion.{unit}')\n"
            "for info in pkgutil.walk_packages(getattr(m, '__path__', []), m.__name__ + '.'):\n"
            "    importlib.import_module(info.name)\n"
            "print(json.dumps(sorted(n for n in sys.modules if n.startswith('pdfusion.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded = {_unit(n) for n in json.loads(out.stdout.strip().splitlines()[-1])} - {None, unit}
    above = sorted(u for u in loaded if u in RANK and not RANK[u] < RANK[unit])
    assert not above, f"importing pdfusion.{unit} loads {above}, which are not below it"
