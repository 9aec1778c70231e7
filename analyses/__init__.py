"""Mechanism analyses built on the introspect_mech core: anomaly detection, concordance heads,
silent thought-control decay, a circuit-hypothesis harness, and per-layer attention plots.

Each module reads recorded activations or stored runs through the core API (never nnsight
internals), writes figures, and returns a JSON-serialisable summary with effect sizes and nulls.
"""
