"""rsdetect.model.training: the fresh-pair loop keeps the best validation epoch and only moves trainable layers."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rsdetect.model import backbone as m  # noqa: E402
from rsdetect.model.training import build_classifier, epoch_lr, fit_pairs, predict_arrays, scores  # noqa: E402
from rsdetect.synth.pairs import PairStream, fixed_pairs, load_photos  # noqa: E402

from conftest import params_group  # noqa: E402

P = params_group("synthesize", size=64, min_person_area=60, pairs_per_photo=1)


@pytest.fixture(scope="module")
def streams(sample_dir):
    train, _ = load_photos(sample_dir / "instances.json", 5, P, "train")
    val, _ = load_photos(sample_dir / "instances.json", 5, P, "val")
    return PairStream(train, 5, P, params_group("augment"), 8), fixed_pairs(val, 5, P, 8, tag=999)


@pytest.mark.slow
def test_fit_pairs_keeps_the_best_epoch_and_frozen_layers(streams):
    stream, val = streams
    keras.utils.set_random_seed(0)
    backbone = m.build_backbone(64, "none", "small")
    m.unfreeze_top_blocks(backbone, 1)
    stem = backbone.get_layer("conv").get_weights()[0].copy()
    top = backbone.get_layer("conv_1").get_weights()[0].copy()
    model = build_classifier(backbone, 0.2)
    history = fit_pairs(model, stream, epochs=3, steps=2, lr=1e-3, patience=5, val=val)
    assert len(history) == 3 and all(np.isfinite(r["val_loss"]) and r["train_images_per_s"] > 0 for r in history)
    np.testing.assert_array_equal(backbone.get_layer("conv").get_weights()[0], stem)  # frozen stem unchanged
    assert np.abs(backbone.get_layer("conv_1").get_weights()[0] - top).max() > 0  # unfrozen layer moved
    # the model ends with the weights of the best validation AUC, not the last epoch's
    best = max(r["val_roc_auc"] for r in history)
    assert scores(val[1], predict_arrays(model, val[0]))["roc_auc"] == pytest.approx(best)


@pytest.mark.slow
def test_patience_and_should_stop_end_training(streams):
    stream, val = streams
    model = build_classifier(m.build_backbone(64, "none", "small"), 0.0)
    assert len(fit_pairs(model, stream, epochs=5, steps=1, lr=1e-3, patience=5, val=val, should_stop=lambda: True)) == 1


def test_cosine_decay_runs_from_lr_to_its_end_fraction():
    assert [epoch_lr(1e-3, 1.0, e, 10) for e in range(10)] == [1e-3] * 10  # lr_end 1: constant
    rates = [epoch_lr(1e-3, 0.02, e, 5) for e in range(5)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(2e-5)
    assert rates[2] == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))  # half way: half way between the two
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


@pytest.mark.slow
def test_fit_pairs_sets_the_decayed_rate_on_the_optimizer(streams):
    stream, val = streams
    model = build_classifier(m.build_backbone(64, "none", "small"), 0.0)
    history = fit_pairs(model, stream, epochs=3, steps=1, lr=1e-3, patience=5, val=val, lr_end=0.1)
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 5.5e-4, 1e-4])
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-4)  # the last epoch trained at it


def test_scores_are_sklearns():
    y = np.array([0, 0, 1, 1])
    s = scores(y, np.array([0.1, 0.6, 0.4, 0.9]))
    assert s["accuracy"] == 0.5 and s["roc_auc"] == 0.75 and s["loss"] > 0
