"""dualforge.losses."""
