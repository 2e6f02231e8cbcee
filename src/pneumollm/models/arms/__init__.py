"""Comparison arms of the paper's Tables 2 and 3."""
