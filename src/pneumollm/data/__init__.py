"""Cohort input, DICOM decoding, preprocessing, cached films, folds and the DataModule."""
