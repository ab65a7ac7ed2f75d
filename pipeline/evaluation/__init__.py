"""Scoring predictions: EC57 metrics with patient-bootstrap intervals, curves, plots, the
headline numbers, the report folder's layout and writer, cross-database references and the
export's ONNX parity check.

Torch-free (numpy, pandas, scikit-learn, matplotlib), so cross-database evaluation runs in the
runtime install. May import data_prep and `pipeline.runtime`; never `pipeline.training`.
"""
