"""Optional diffpy.srreal backend: the same ``simulate_pdf`` call computed by ``DebyePDFCalculator`` itself.

diffpy.srreal has no PyPI wheel, so it is never a dependency; this module is the independent reference our
torch implementation is checked against when it is installed (``conda install -c conda-forge diffpy.srreal``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from pdfusion.config import PDFConfig

INSTALL_HINT = ("diffpy.srreal is not installed; it has no PyPI wheel: install it with "
                "`conda install -c conda-forge diffpy.srreal` (or use backend='torch')")


def available() -> bool:
    """True when diffpy.srreal and diffpy.structure are importable."""
    try:
        import diffpy.srreal.pdfcalculator  # noqa: F401
        import diffpy.structure  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    try:
        from diffpy.srreal.pdfcalculator import DebyePDFCalculator
        from diffpy.structure import Atom, Lattice, Structure
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return DebyePDFCalculator, Atom, Lattice, Structure


def calculator(cfg: PDFConfig):
    """A DebyePDFCalculator configured like ``cfg`` (as the seed-oxides data were simulated)."""
    DebyePDFCalculator, *_ = _require()
    kw = dict(rmin=cfg.rmin, rmax=cfg.rmax, rstep=cfg.rstep, qmin=cfg.qmin, qmax=cfg.qmax, qdamp=cfg.qdamp,
              delta2=cfg.delta2)
    if cfg.qstep is not None:
        kw["qstep"] = cfg.qstep
    calc = DebyePDFCalculator(**kw)
    calc.setScatteringFactorTableByType("neutron" if cfg.radiation == "neutron" else "xray")
    return calc


def _structure(numbers: np.ndarray, positions: np.ndarray, biso: float):
    _, Atom, Lattice, Structure = _require()
    from pymatgen.core import Element

    uiso = biso / (8 * math.pi**2)
    atoms = []
    for z, xyz in zip(numbers, positions, strict=True):
        a = Atom(Element.from_Z(int(z)).symbol, xyz)
        a.Uisoequiv = uiso
        atoms.append(a)
    return Structure(atoms, lattice=Lattice())


def simulate_pdf(positions: Tensor, numbers: Tensor, mask: Tensor | None = None,
                 cfg: PDFConfig = PDFConfig()) -> Tensor:
    """Same contract as ``pdfusion.pdf.simulate_pdf`` (not differentiable), computed by diffpy.srreal."""
    calc = calculator(cfg)
    pos = torch.as_tensor(positions)
    single = pos.dim() == 2
    pos_np = pos.detach().cpu().double().numpy().reshape(-1, pos.shape[-2], 3)
    num_np = torch.as_tensor(numbers).cpu().numpy().reshape(pos_np.shape[:2])
    msk = np.ones(num_np.shape, bool) if mask is None else torch.as_tensor(mask).cpu().numpy().reshape(num_np.shape)
    out = []
    for p, z, m in zip(pos_np, num_np, msk, strict=True):
        _, g = calc(_structure(z[m], p[m], cfg.biso))
        g = np.asarray(g, dtype=np.float64)
        if cfg.normalize:
            if not g.max() > 0:
                raise ValueError("simulate_pdf: G(r) has no positive maximum; use normalize=False")
            g = g / g.max()
        out.append(g)
    res = torch.as_tensor(np.stack(out), dtype=pos.dtype, device=pos.device)
    return res[0] if single else res
