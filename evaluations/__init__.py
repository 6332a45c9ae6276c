"""ADM-comparable evaluation in PyTorch: IS, FID, sFID, precision, recall (see evaluations/README.md).

evaluator.py (CLI), inception.py (the TF FID InceptionV3), metrics.py (pure metric functions),
features.py (pluggable feature networks, compute_all_metrics), npz_io.py (streaming .npz batches).
"""
