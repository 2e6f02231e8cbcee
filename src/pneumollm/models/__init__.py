"""Models of the suite: PneumoLLM, its components, and the comparison arms."""
