"""Metrics, visualisation and the evaluate/inference loop shared by every backend."""
