"""Shipped defaults, packaged as ``halton_meter.shipped_config``."""
