"""Sweeps and their bookkeeping (``consistency-vae sweep`` and ``sweep-report``): a W&B sweep
file read and proposed from (sweep_file.py), run here in parallel (runner.py) as child processes
that never outlive it unnoticed (children.py), each point recorded once (store.py, claims.py) and
resumed or counted from its earlier attempt (resume.py), its best run named at the end
(best_run.py), and the alpha trade-off report (report.py).

The sweep's training-side callback, ``consistency_vae.sweep_objective.ConstrainedELBO``, stays
at the top level: sweep files and checkpoints name it by that class path."""
