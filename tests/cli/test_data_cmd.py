"""`pdfusion data import-seed` / `pdfusion data info`: real console script and in-process main."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pdfusion.cli import main
from pdfusion.structures.io import SeedRecord, write_seed_h5
from pdfusion.structures.particle import Particle


def make_seed_folder(folder: Path, n: int = 6) -> None:
    rng = np.random.default_rng(2)
    r = np.arange(100) * 0.01
    for i in range(n):
        numbers = np.array([22, 8, 8, 22, 8, 8, 22])
        pos = rng.normal(size=(7, 3))
        na = np.column_stack([numbers, rng.random((7, 3)), pos])
        rec = SeedRecord(Particle(numbers, pos), na, r, rng.normal(size=100), np.zeros((2, 0), np.int64),
                         np.zeros(0), {})
        write_seed_h5(rec, folder / f"graph_{['Rutile', 'CdI2'][i % 2]}_TiO2_r{5 + i}.h5")


def test_import_then_info_via_console_script(tmp_path):
    make_seed_folder(tmp_path / "src")
    exe = Path(sys.executable).with_name("pdfusion")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pdfusion.cli"]
    out = subprocess.run([*cmd, "data", "import-seed", str(tmp_path / "src"), str(tmp_path / "store"),
                          "--shard-size", "4"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "6 structures in 2 shards" in out.stdout
    info = subprocess.run([*cmd, "data", "info", str(tmp_path / "store")], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    d = json.loads(info.stdout)
    assert d["n_structures"] == 6 and d["n_shards"] == 2 and d["checksums"] == "ok"
    assert d["structure_types"] == {"CdI2": 3, "Rutile": 3} and d["n_r"] == 100


def test_info_reports_corruption_and_missing_store(tmp_path, capsys):
    make_seed_folder(tmp_path / "src")
    assert main(["data", "import-seed", str(tmp_path / "src"), str(tmp_path / "store"), "--shard-size", "3"]) == 0
    shard = tmp_path / "store" / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "store")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["checksums"] == {"bad_shards": ["shard-00001.h5"]}
    assert "shard-00001.h5" in captured.err
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "no manifest" in capsys.readouterr().err
    assert main(["data", "import-seed", str(tmp_path / "nothing"), str(tmp_path / "s2")]) == 2
