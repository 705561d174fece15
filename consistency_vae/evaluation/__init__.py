"""Evaluation of a trained checkpoint (``consistency-vae evaluate``): the metrics registry
(eval_metrics.py) over the torchmetrics metrics (metrics.py), the representation probes
(representation.py) and the opt-in inference gaps (inference_gaps.py)."""
