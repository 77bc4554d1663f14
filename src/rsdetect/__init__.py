"""rsdetect: detect rolling-shutter distortion in camera frames."""
__version__ = "0.1.0"
