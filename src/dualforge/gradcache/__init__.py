"""dualforge.gradcache."""
