"""Tests of dualforge.mining."""
