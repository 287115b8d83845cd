"""dualforge.eval."""
