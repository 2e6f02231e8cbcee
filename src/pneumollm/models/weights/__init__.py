"""Weights from outside the suite (published checkpoints, original releases) in the suite's own layout."""
