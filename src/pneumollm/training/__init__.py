"""Training: losses, optimiser and schedule, the LightningModule, run records and the fold runner."""
