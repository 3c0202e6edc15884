"""Diagnostics for Tourbillon models: recording, stall detection, ablation, reports."""
