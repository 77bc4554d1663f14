"""How good it is: metrics over whole sets, the baselines, and the real-photo check."""
