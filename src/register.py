"""Stage register: the checkpoint becomes a version of rs-detector in MLflow; the champion alias moves only if it is
better."""
import sys

from rsdetect.registry.gate import register_from_outputs
from rsdetect.stage import run_stage

if __name__ == "__main__":
    run_stage(lambda: register_from_outputs("params.yaml", *sys.argv[1:5]))
