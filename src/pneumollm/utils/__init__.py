"""Small shared utilities: atomic writes and hashing."""
