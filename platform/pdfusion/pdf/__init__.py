"""pdfusion.pdf — X-ray/neutron PDF simulation with diffpy.srreal DebyePDFCalculator semantics, R_wp, PDF files.

    from pdfusion.pdf import simulate_pdf, r_grid, rwp
    g = simulate_pdf(pos (B,N,3), numbers (B,N), mask (B,N), cfg)   # (B, n_r), differentiable
"""

from pdfusion.pdf.debye import PDFSimulator, q_grid, r_grid, simulate_pdf, srreal_grid
from pdfusion.pdf.metrics import rwp

__all__ = ["PDFSimulator", "q_grid", "r_grid", "rwp", "simulate_pdf", "srreal_grid"]
