"""`rsdetect watch`: its loop, camera readers, Prometheus metrics, rolling reports and Dask sharding."""
