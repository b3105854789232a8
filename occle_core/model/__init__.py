"""The OccLE network, one idea per module."""
