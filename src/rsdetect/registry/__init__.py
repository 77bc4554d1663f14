"""MLflow: tracking, the pyfunc production loads, and the champion gate."""
