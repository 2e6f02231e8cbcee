"""PneumoLLM experiment suite: data, models, training and analysis for pneumoconiosis diagnosis."""

__version__ = "0.1.0"
