"""Fault and hostile-input tests on the real services."""
