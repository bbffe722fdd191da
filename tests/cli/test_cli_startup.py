"""`pdfusion --help` imports every subcommand module; the rule in cli/__init__.py keeps torch out of it."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_parser_loads_without_torch():
    code = ("import sys\nfrom pdfusion.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'pymatgen', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
