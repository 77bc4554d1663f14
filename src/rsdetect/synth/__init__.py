"""Rolling-shutter / global-shutter twins: our synthesis, the training-pair stream, and the independent published
recipe (Rengarajan et al. 2017)."""
