"""Weights as users hold them (Meta-format LLaMA, the authors' released checkpoint), in the suite's layout."""
