"""dualforge.mining."""
