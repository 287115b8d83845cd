"""dualforge.train."""
