"""Rolling shutter from motion: per-frame motion, per-camera readout, per-frame evidence (issue 21)."""
