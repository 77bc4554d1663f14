"""MLflow: tracking (where runs go), the pyfunc production loads, and the champion gate."""


def __getattr__(name: str):
    # Models registered before the registry became a package pickled their pyfunc class as
    # `rsdetect.registry.RsDetector`; unpickling looks it up here, so those registries keep loading.
    if name == "RsDetector":
        from rsdetect.registry.pyfunc import RsDetector
        return RsDetector
    raise AttributeError(f"module 'rsdetect.registry' has no attribute {name!r}")
