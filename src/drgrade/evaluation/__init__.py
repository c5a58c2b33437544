"""Honest evaluation: metrics beside the majority baseline, figures, reports."""
