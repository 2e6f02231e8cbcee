"""Using trained models: loading run folders, arm ensembles and exports, predicting new films, exporting,
external validation and attribution maps."""
