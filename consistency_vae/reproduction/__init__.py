"""The reproduction pipeline (``consistency-vae reproduce``): gather the runs (runs.py), evaluate
them, and write results/summary.json, summary.md (summary_md.py) and the figures
(results_figures.py). The constants and helpers all of them share live in common.py."""
