"""Fresh RS/GS twin pairs for every training step, never repeated, and label-keeping augmentation.

A model trained on a fixed set of pairs memorises them (measured: train accuracy 0.86, validation 0.62-0.67 on
1,848 fixed images). Here every batch is drawn anew from the training photos by the same `data.draw_pair` that
writes the fixed validation and test sets, seeded by (seed, epoch, step): a run repeats exactly, and the
model sees each photo under ever new motions, so the row dependence is the only thing worth learning.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from rsdetect.config import AugmentParams, SynthParams
from rsdetect.errors import RsdetectError
from rsdetect.preprocess import encode_jpeg
from rsdetect.synth.twins import SkipImage, draw_pair, photo_tasks, read_photo, usable_people

STREAM_TAG = 0x5EED  # keeps the stream's random numbers apart from the fixed sets' (seed, image id, index)
MAX_REDRAWS = 32     # photos tried for one pair before giving up (a photo can fail its shear draws)


def load_photos(instances_path: str | Path, seed: int, p: SynthParams, split: str = "train") -> tuple[list[tuple], int]:
    """The photos of one split, decoded once, with their usable people; and how many were skipped (malformed
    image entries of any split included: they belong to none)."""
    tasks, inst = photo_tasks(instances_path, seed, (p.val_fraction, p.test_fraction))
    photos, skipped = [], len(inst.skipped_images)
    for task in tasks:
        if task.split != split:
            continue
        try:
            image = read_photo(Path(instances_path).parent, task.file)
        except SkipImage:
            skipped += 1
            continue
        height, width = image.shape[:2]
        photos.append((task.image_id, image, usable_people(task.anns, height, width, p)))
    if not photos:
        raise RsdetectError(f"{instances_path}: no readable {split} photo to draw training pairs from")
    return photos, skipped


def augment_pair(rs: np.ndarray, gs: np.ndarray, rng: np.random.Generator,
                 a: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """The same photometric and mirror changes on both twins (BGR uint8): the label stays true and the twins
    still differ only in the row dependence. A horizontal flip mirrors a shear into the opposite shear."""
    flip = a.flip and rng.random() < 0.5
    gain = rng.uniform(1 - a.contrast, 1 + a.contrast)
    bias = rng.uniform(-a.brightness, a.brightness)
    blur = rng.uniform(*a.blur_sigma) if rng.random() < a.blur_prob else 0.0
    noise = rng.normal(0, rng.uniform(*a.noise_sigma), rs.shape).astype(np.float32)
    quality = int(rng.integers(int(a.jpeg_quality[0]), int(a.jpeg_quality[1]) + 1))
    out = []
    for img in (rs, gs):
        if flip:
            img = img[:, ::-1]
        x = img.astype(np.float32) * gain + bias
        if blur > 0:
            x = cv2.GaussianBlur(x, (0, 0), blur)
        x = np.clip(x + noise, 0, 255).astype(np.uint8)
        buf = encode_jpeg(x, quality, "augment: a training image")
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if decoded is None:
            raise RsdetectError("augment: a training image's own JPEG does not decode")
        out.append(decoded)
    return out[0], out[1]


class PairStream:
    """Batches of fresh pairs: batch (epoch, step) holds batch_size / 2 RS images and their twins, RGB float32.

    Both twins sit in the same batch, so each gradient step compares the same content with and without the
    row dependence. `scale(epoch)` multiplies motion magnitudes: > 1 early is an easy-first curriculum
    (measured: from scratch, strong shear starts learning where the full range stays at chance).
    """

    def __init__(self, photos: list[tuple], seed: int, synth: SynthParams, augment: AugmentParams,
                 batch_size: int, curriculum_epochs: int = 0, curriculum_scale: float = 1.0) -> None:
        if batch_size < 2 or batch_size % 2:
            raise RsdetectError(f"batch size {batch_size}: must be even (each RS image comes with its twin)")
        self.photos, self.seed, self.synth, self.augment = photos, seed, synth, augment
        self.batch_size, self.curriculum_epochs, self.curriculum_scale = batch_size, curriculum_epochs, curriculum_scale

    def scale(self, epoch: int) -> float:
        """Motion magnitude factor: curriculum_scale at epoch 0, down linearly to 1 at curriculum_epochs."""
        if epoch >= self.curriculum_epochs:
            return 1.0
        return self.curriculum_scale + (1.0 - self.curriculum_scale) * epoch / self.curriculum_epochs

    def batch(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The step-th batch of an epoch: a pure function of (seed, epoch, step)."""
        rng = np.random.default_rng([self.seed, STREAM_TAG, epoch, step])
        size, scale = self.synth.size, self.scale(epoch)
        x = np.empty((self.batch_size, size, size, 3), np.float32)
        for j in range(self.batch_size // 2):
            for _ in range(MAX_REDRAWS):
                _, image, usable = self.photos[int(rng.integers(len(self.photos)))]
                try:
                    rs, gs, _ = draw_pair(image, usable, rng, self.synth, scale)
                    break
                except SkipImage:
                    continue
            else:
                raise RsdetectError(f"no training photo gave a pair in {MAX_REDRAWS} draws; "
                                    "check synthesize.min_visible_px")
            rs, gs = augment_pair(rs, gs, rng, self.augment)
            x[2 * j] = cv2.cvtColor(rs, cv2.COLOR_BGR2RGB)
            x[2 * j + 1] = cv2.cvtColor(gs, cv2.COLOR_BGR2RGB)
        y = np.tile(np.array([1.0, 0.0], np.float32), self.batch_size // 2)
        return x, y

    def epoch(self, epoch: int, steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's batches in order, the next one drawn on a thread while the model trains on this one
        (OpenCV releases the GIL). Order and content do not depend on timing."""
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.batch, epoch, 0)
            for step in range(steps):
                current = pending.result()
                if step + 1 < steps:
                    pending = pool.submit(self.batch, epoch, step + 1)
                yield current


def no_augmentation(jpeg_quality: int) -> AugmentParams:
    """Augmentation that changes nothing but re-encodes at `jpeg_quality`: every field is stated (the schema has no
    defaults), as "off" values, not tunables. blur_sigma is never drawn from with blur_prob 0; the random numbers
    drawn per pair are the same as with any other augmentation, so a fixed set does not depend on augment.*."""
    quality = float(jpeg_quality)
    return AugmentParams(flip=False, brightness=0.0, contrast=0.0, blur_prob=0.0, blur_sigma=(0.0, 0.0),
                         noise_sigma=(0.0, 0.0), jpeg_quality=(quality, quality))


def fixed_pairs(photos: list[tuple], seed: int, synth: SynthParams, n_pairs: int,
                tag: int) -> tuple[np.ndarray, np.ndarray]:
    """n_pairs pairs drawn once (no augmentation; JPEG at synthesize.jpeg_quality, as the fixed sets are written):
    a validation set made from photos held out of training, the same every epoch."""
    stream = PairStream(photos, seed, synth, no_augmentation(synth.jpeg_quality), 2)
    batches = [stream.batch(tag, i) for i in range(n_pairs)]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
