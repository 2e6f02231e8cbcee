"""Lung segmentation and cropping options of the preprocessing stage."""
