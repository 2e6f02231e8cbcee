"""Pretrained weights as users hold them, converted to the Hugging Face folders the suite loads."""
