"""pdfusion.evaluation: candidate ranking and refinement (`ranking`), metrics, baselines, harness."""
