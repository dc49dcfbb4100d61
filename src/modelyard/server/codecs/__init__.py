"""Ingress codecs: one module per client wire format, all run by server/pipeline.py (see base.py)."""
