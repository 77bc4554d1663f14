"""Figures for eyes (matplotlib PNG; they render offline, unlike DVC's vega HTML)."""
from __future__ import annotations

from pathlib import Path

import cv2

from rsdetect.errors import RsdetectError
from rsdetect.synth.manifest import read_manifest


def pairs_figure(synth_dir: str | Path, out_path: str | Path, n_pairs: int = 6) -> None:
    """A grid of RS / normal twins from the test split, titled with each sample's parameters."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synth_dir = Path(synth_dir)
    rows = read_manifest(synth_dir / "manifest.csv")
    pairs: dict[str, dict[int, dict]] = {}
    for r in rows:
        pairs.setdefault(r["pair_id"], {})[r["label"]] = r
    chosen, kinds_seen = [], set()
    for pid, twins in pairs.items():  # one of each kind first, then fill up
        if twins[1]["kind"] not in kinds_seen:
            chosen.append(pid)
            kinds_seen.add(twins[1]["kind"])
    chosen += [pid for pid in pairs if pid not in chosen][: max(0, n_pairs - len(chosen))]
    chosen = chosen[:n_pairs]
    fig, axes = plt.subplots(len(chosen), 2, figsize=(6, 3 * len(chosen)), squeeze=False)
    for ax_row, pid in zip(axes, chosen, strict=False):
        for ax, label in zip(ax_row, (1, 0), strict=False):
            r = pairs[pid][label]
            bgr = cv2.imread(str(synth_dir / r["path"]))
            if bgr is None:
                raise RsdetectError(f"{synth_dir / r['path']}: cannot read as an image")
            ax.imshow(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            ax.set_axis_off()
            if label == 1:
                ax.set_title(f"RS {r['kind']}: shear {r['max_disp_px']:.1f}px, readout {float(r['readout']):.2f}",
                             fontsize=8)
            else:
                ax.set_title(f"normal twin: rigid shift {float(r['rigid_px']):.1f}px", fontsize=8)
    fig.suptitle("rolling-shutter (left) vs global-shutter twin (right)", fontsize=9)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
