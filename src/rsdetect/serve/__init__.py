"""The tools users run on cameras: scan, export, and the watch service (serve.watch)."""
