"""pdfusion.evaluation: the harness that scores model and baselines on held-out PDFs, baselines, metrics, plots."""
