"""What `scan` adds to its reports to explain a flag and hand it to correction: the shear estimate of each flagged
frame (rsdetect.serve.shear) in its row, and beside each worst frame a Grad-CAM heatmap (rsdetect.serve.gradcam) and a
de-skewed preview; with --annotate, the heatmap of flagged frames in the video.

Heatmaps need the Keras model. For an exported TFLite / ONNX model they are skipped, counted and said once in
summary.json, rather than computed on a Keras twin: the registry does not record which Keras file an export came
from, and a twin's map would explain a different model's scores (exports differ from Keras by up to the max |p -
p_keras| that `rsdetect export` prints). The shear estimate needs no model; without its params (no params.yaml)
it is skipped, counted and said once too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rsdetect.config import ShearParams
from rsdetect.errors import RsdetectError
from rsdetect.serve.gradcam import FrameCam, GradCam, overlay
from rsdetect.serve.shear import deskew, estimate_shear, shear_direction

NO_SHEAR = {"shear_px": None, "shear_direction": None}
JPEG_QUALITY = 90  # the worst frames' own quality (reports.save_worst)


def write_jpeg(path: Path, rgb: np.ndarray) -> bool:
    """An RGB image as a JPEG (plain write: reports are written in a staging folder); False if it cannot be encoded."""
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if ok:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpg.tobytes())
    return bool(ok)


class Explainer:
    """Shear fields, heatmaps and de-skewed previews for one scan, with counts of what was skipped and why.

    model: the Keras model behind the scorer (LoadedModel.keras_model), or None; size: its input size;
    kind: the model's kind (for the skip note); shear: the `shear` params, or None with `shear_note` saying why.
    """

    def __init__(self, model: Any, size: int, kind: str, shear: ShearParams | None, shear_note: str | None = None,
                 cam_note: str | None = None) -> None:
        self.size, self.shear = size, shear
        self._model = model
        self._cam: GradCam | None = None
        self.cam_note = None if model is not None else (cam_note or f"model kind {kind}: Grad-CAM needs a Keras model")
        self.shear_note = None if shear is not None else (shear_note or "no shear params")
        self.counts = {"heatmaps": 0, "heatmaps_skipped": 0, "video_heatmaps": 0, "shear_measured": 0,
                       "shear_no_edges": 0, "shear_skipped": 0}

    def _gradcam(self) -> GradCam | None:
        """The Grad-CAM of the model, built on first use; None (with a note) where it cannot be."""
        if self._cam is None and self.cam_note is None:
            try:
                self._cam = GradCam(self._model)
            except RsdetectError as exc:
                self.cam_note = str(exc)
        return self._cam

    def add_counts(self, other: Explainer | dict[str, int]) -> None:
        """Add the counts of a copy that worked elsewhere (a Dask worker's, rsdetect.serve.shard), or what they grew by
        (rsdetect.serve.watch.shard), to this one's."""
        for key, n in (other if isinstance(other, dict) else other.counts).items():
            self.counts[key] += n

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (a sharded scan's worker) measures shear only: the Keras model and its
        Grad-CAM stay here. (Its counts start from this one's, which are zero while workers run: the writing
        process measures only once they are done; add_counts adds the copy's back.)"""
        state = dict(self.__dict__, _model=None, _cam=None)
        state["cam_note"] = self.cam_note or "heatmaps are made where the reports are written"
        return state

    def cam(self, rgb: np.ndarray) -> FrameCam | None:
        """The frame's Grad-CAM on its firing tile, or None where heatmaps are skipped (cam_note says why)."""
        grad = self._gradcam()
        return None if grad is None else grad.frame(rgb, self.size)

    def shear_fields(self, rgb: np.ndarray) -> dict[str, Any]:
        """shear_px (signed, px across the frame height) and shear_direction of a frame; None when not measured."""
        if self.shear is None:
            self.counts["shear_skipped"] += 1
            return dict(NO_SHEAR)
        s = estimate_shear(rgb, self.shear, self.size)
        self.counts["shear_measured" if s is not None else "shear_no_edges"] += 1
        return {"shear_px": None if s is None else round(s, 2), "shear_direction": shear_direction(s)}

    def frame_fields(self, rgb: np.ndarray, flag: bool) -> dict[str, Any]:
        """The shear columns of a frame row: measured for flagged frames only (the hand-off to correction)."""
        return self.shear_fields(rgb) if flag else dict(NO_SHEAR)

    def worst_extras(self, folder: Path, stem: str, rgb: np.ndarray,
                     measured: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write worst/<stem>_cam.jpg (heatmap) and worst/<stem>_deskew.jpg beside a worst frame; its entry fields.
        `measured`: a video frame's evidence (reports.Worst), scored by it and not by the model: no heatmap (it would
        explain a score the frame did not get) and no shear estimate from edges (blind to movers: its rs_shear_px is
        measured); its de-skew is its measured per-row motion undone (`deskew`: measured), where a readout gave one.
        A frame the model scored gets the heatmap, the estimate and the estimate's de-skew (`deskew`: estimated)."""
        out: dict[str, Any] = {"cam_path": None, "cam_peak": None, "tile": None, "shear_px": None,
                               "shear_direction": None, "deskew_path": None, "deskew": None}
        rel = f"worst/{stem}_deskew.jpg"
        if measured is not None:
            if measured["unrolled"] is not None and write_jpeg(folder / rel, measured["unrolled"]):
                out.update(deskew_path=rel, deskew="measured")
            return out
        out.update(self.shear_fields(rgb))
        cam = self.cam(rgb)
        if cam is None:
            self.counts["heatmaps_skipped"] += 1
        else:
            rel = f"worst/{stem}_cam.jpg"
            if write_jpeg(folder / rel, overlay(rgb, cam)):
                self.counts["heatmaps"] += 1
                out.update(cam_path=rel, cam_peak=None if cam.peak is None else list(cam.peak),
                           tile=",".join(str(v) for v in cam.tile))
        if out["shear_px"] is not None and write_jpeg(folder / rel, deskew(rgb, out["shear_px"])):
            out.update(deskew_path=rel, deskew="estimated")
        return out

    def video_overlay(self, bgr: np.ndarray, cam: FrameCam | None) -> np.ndarray:
        """A video frame (BGR) with a flagged frame's heatmap blended in (as is without one)."""
        if cam is None or cam.heat.shape != bgr.shape[:2]:
            return bgr
        return cv2.cvtColor(overlay(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), cam), cv2.COLOR_RGB2BGR)

    def summary(self) -> dict[str, Any]:
        """What was explained and what was skipped, with the reasons (each said once)."""
        return {**self.counts, "heatmap_layer": self._cam.layer_name if self._cam else None,
                "heatmaps_skipped_reason": self.cam_note if self.counts["heatmaps_skipped"] else None,
                "shear_skipped_reason": self.shear_note if self.counts["shear_skipped"] else None,
                "shear_method": "median slope of near-vertical gradients (rsdetect.serve.shear)"}
