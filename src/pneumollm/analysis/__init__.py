"""Aggregation of fold runs into tables, statistics and figures."""
