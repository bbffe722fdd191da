"""Synthetic data built by the tests themselves (imported by conftest and by tests)."""

# --------------------------------------------------------------------------------------------------
# A small synthetic dataset built by the project itself (no ../shared needed)
# --------------------------------------------------------------------------------------------------
SYNTHETIC_METALS = {"Ti": 22, "Fe": 26, "Ni": 28, "Zn": 30}


def rocksalt_particle(z: int, a: float, radius: float):
    """A rock-salt MO sphere (numbers, positions) — deliberately independent of pdfusion.structures."""
    import numpy as np

    from pdfusion.structures.particle import Particle

    n = int(np.ceil(radius / (a / 2))) + 1
    g = np.arange(-n, n + 1)
    ijk = np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T
    pos = ijk * a / 2
    keep = np.linalg.norm(pos, axis=1) <= radius
    return Particle(np.where(ijk.sum(axis=1) % 2 == 0, z, 8)[keep], pos[keep])


def rocksalt_cluster(radius: float, metal: int = 22, a: float = 4.2, shift=(0.0, 0.0, 0.0)):
    """(numbers, centred positions) of a rock-salt lattice (spacing a/2, metal where i+j+k is even) within
    `radius` of `shift`: an off-lattice centre gives a different cluster of the same crystal."""
    import numpy as np

    n = int(np.ceil(2 * radius / a)) + 2
    idx = np.stack(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = idx * a / 2 - np.asarray(shift)
    keep = np.linalg.norm(pos, axis=1) <= radius
    pos = pos[keep]
    return np.where(idx.sum(1) % 2 == 0, metal, 8)[keep], pos - pos.mean(0)


def build_synthetic_store(root):
    """(store root, PDFConfig): 16 rock-salt particles of 4 metals, PDFs on a short 0–10 Å grid."""
    import numpy as np

    from pdfusion.config import PDFConfig
    from pdfusion.data.store import StoreRecord, write_shard
    from pdfusion.evaluation.harness import simulate_many
    from pdfusion.pdf import r_grid

    cfg = PDFConfig(rmax=10.0, rstep=0.05)
    parts, meta = [], []
    for sym, z in SYNTHETIC_METALS.items():
        for a in (4.0, 4.3):
            for radius in (3.2, 3.8):
                parts.append(rocksalt_particle(z, a, radius))
                meta.append({"structure_type": "NaCl", "formula": f"{sym}O", "metal": sym, "radius": radius,
                             "source": f"rs_{sym}_{a}_{radius}"})
    pdfs = simulate_many(parts, cfg)
    records = []
    for p, m, g in zip(parts, meta, pdfs, strict=True):
        attrs = np.zeros((len(p), 7))
        attrs[:, 0], attrs[:, 4:] = p.numbers, p.positions
        records.append(StoreRecord(p.numbers, p.positions, attrs, g.astype(np.float32), m))
    write_shard(root, "shard-00000.h5", records, r_grid(cfg).numpy())
    return root, cfg


def tiny_config(store_root, pdf_cfg, **overrides):
    """The `tiny` preset adapted to a synthetic store's r grid (a T=20 schedule keeps sampling cheap)."""
    from dataclasses import replace

    from pdfusion.config import DataConfig, ScheduleConfig, preset

    base = preset("tiny")
    cfg = replace(base, pdf=pdf_cfg, model=replace(base.model, pdf_points=pdf_cfg.n_r),
                  diffusion=replace(base.diffusion, schedule=ScheduleConfig(timesteps=20)),
                  data=DataConfig(path=str(store_root), split_by="metal", val_fraction=0.25, batch_size=4))
    return replace(cfg, **overrides)


def train_tiny_checkpoint(path, particles, pdf_cfg, *, max_atoms: int = 48, steps: int = 10, defaults=None):
    """A `preset('tiny')` model trained ``steps`` steps on ``particles`` ((numbers, positions, metal Z) triples, PDFs
    simulated with ``pdf_cfg``), saved at ``path`` (returned); untrained samples, but every --model path runs."""
    import dataclasses

    import torch
    from torch_geometric.data import Data

    from pdfusion.config import DataConfig, preset
    from pdfusion.pdf import simulate_pdf
    from pdfusion.training.trainer import Trainer

    torch.set_num_threads(1)
    base = preset("tiny")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, pdf_points=pdf_cfg.n_r, max_atoms=max_atoms),
                              data=DataConfig(batch_size=4), pdf=pdf_cfg)
    data = []
    for numbers, pos, metal in particles:
        g = simulate_pdf(torch.as_tensor(pos, dtype=torch.float64)[None], torch.as_tensor(numbers)[None], None,
                         pdf_cfg)[0]
        data.append(Data(pos=torch.tensor(pos, dtype=torch.float32), z=torch.tensor(numbers),
                         x=torch.zeros(len(numbers), 7), y=g.float().reshape(1, -1), metal=torch.tensor([metal]),
                         num_nodes=len(numbers)))
    tr = Trainer(cfg)
    tr.fit(data, progress=False, max_steps=steps)
    tr.save_checkpoint(path, extra={"defaults": defaults or {"guidance": 1.0, "steps": 5}})
    return path


# --------------------------------------------------------------------------------------------------
# A real `ray start --head` of a test's own: find and stop only its processes
# --------------------------------------------------------------------------------------------------
def head_processes(marker: str) -> list:
    """Processes whose command line names `marker` (the head's temp dir), and all their descendants."""
    import os

    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and any(marker in c for c in (p.info["cmdline"] or [])):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    seen = {p.pid: p for p in roots}
    for p in roots:
        try:
            for c in p.children(recursive=True):
                seen.setdefault(c.pid, c)
        except psutil.NoSuchProcess:
            pass
    return list(seen.values())


def stop_head(marker: str, timeout: float = 20.0) -> None:
    """Terminate the head's processes (by pid), then kill stragglers: other Ray sessions are left alone."""
    import psutil

    procs = head_processes(marker)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def start_head(cmd: list, marker: str, env: dict, *, attempts: int = 3, cwd=None, timeout: float = 240):
    """Run `ray start --head …`, retrying: Ray waits a fixed 30 s for its raylet to register with the GCS, which
    a loaded CI machine can miss ("The current node timed out during startup"). A failed attempt's processes
    (found by `marker`, the head's temp dir) are stopped before the next. Returns the last CompletedProcess."""
    import subprocess
    import time

    for attempt in range(attempts):
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0:
            return done
        stop_head(marker, timeout=10)
        time.sleep(2 * (attempt + 1))
    return done
