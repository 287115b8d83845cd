"""dualforge.data."""
