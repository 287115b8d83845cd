"""dualforge.cli."""
