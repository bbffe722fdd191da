"""Research scripts (exp_*, diag_*, ab_seed135): each runs as `python experiments/NAME.py`; the code they share
is `experiments.common`. A script puts the repository root on sys.path first, so `experiments` imports as
this package whether the script is run from the root, from elsewhere, or loaded by path (tests)."""
