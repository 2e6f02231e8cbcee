"""Weights as users hold them (Meta-format LLaMA, the authors' released checkpoint), converted to what the suite loads."""
