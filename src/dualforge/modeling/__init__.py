"""dualforge.modeling."""
