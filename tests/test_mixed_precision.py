"""Mixed precision (``mixed_float16``): every attack runs on a model whose layers compute in
float16, returns float32 inputs inside its budget and the value range, and is about as strong
as on the float32 copy of the same model; DPSGD keeps refusing loss scaling."""

import keras
import numpy as np
import pytest

import keras_secure as ks
from keras_secure import attacks as A

EPS = 0.1


@pytest.fixture(scope="module")
def models(cnn):
    """The trained digits CNN in float32 and a mixed_float16 copy with the same weights."""
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        half = ks.models.small_cnn(seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    half.set_weights(cnn.get_weights())
    assert half.layers[0].compute_dtype == "float16"
    return cnn, half


def _attacks():
    r = dict(value_range=(0.0, 1.0), seed=0)
    return {
        "fgsm": A.FGSM(EPS, **r),
        "pgd": A.PGD(EPS, steps=10, **r),
        "pgd_l2": A.PGD(1.0, steps=10, norm="l2", **r),
        "mifgsm": A.MIFGSM(EPS, steps=10, **r),
        "apgd_ce": A.APGD(EPS, steps=20, **r),
        "apgd_dlr": A.APGD(EPS, steps=20, loss="dlr", **r),
        "apgdt": A.APGDT(EPS, steps=10, target_classes=3, **r),
        "cw": A.CarliniWagnerL2(steps=30, binary_search_steps=3, **r),
        "deepfool": A.DeepFool(steps=20, **r),
        "fab": A.FAB(EPS, steps=20, **r),
        "square": A.Square(EPS, queries=200, **r),
    }


@pytest.mark.parametrize("name", sorted(_attacks()))
def test_attacks_under_mixed_float16(models, eval_set, name):
    full, half = models
    x, y = eval_set[0][:64], eval_set[1][:64]
    attack = _attacks()[name]
    x_half = attack(half, x, y)
    assert x_half.dtype == np.float32 and x_half.shape == x.shape
    assert np.isfinite(x_half).all()
    assert x_half.min() >= 0.0 and x_half.max() <= 1.0
    delta = (x_half - x).reshape(len(x), -1)
    if name in ("fgsm", "pgd", "mifgsm", "apgd_ce", "apgd_dlr", "apgdt", "fab", "square"):
        assert np.abs(delta).max() <= EPS + 1e-6
    elif name == "pgd_l2":
        assert np.linalg.norm(delta, axis=1).max() <= 1.0 + 1e-5

    def accuracy(model, inputs):
        return float(np.mean(np.argmax(model.predict(inputs, verbose=0), 1) == y))

    clean = accuracy(full, x)
    # as strong as on the float32 model (the same weights): accuracy under attack within a
    # binomial tolerance of 64 examples (4 standard errors at p = 1/2: 0.25), and a real
    # attack (below the clean accuracy) when the float32 one is
    x_full = _attacks()[name](full, x, y)
    robust_full, robust_half = accuracy(full, x_full), accuracy(half, x_half)
    assert abs(robust_half - robust_full) <= 0.25, (robust_full, robust_half)
    if robust_full < clean - 0.25:
        assert robust_half < clean - 0.1, (clean, robust_full, robust_half)


def test_dpsgd_refuses_loss_scaling(digits):
    x, y = digits[0][:64], digits[1][:64]
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = ks.models.small_cnn(seed=0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="loss scaling"):
        model.fit(x, y, batch_size=64, verbose=0, callbacks=[ks.callbacks.DPSGD(
            1.0, 1.0, num_examples=64, batch_size=64, delta=1e-5, sampling="shuffle")])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["madry", "mixed", "trades", "fast"])
def test_adversarial_training_under_mixed_float16(digits, mode):
    """Same model, data and seed trained in float32 and in mixed_float16 (Keras wraps the
    optimizer in a LossScaleOptimizer): finite logs, and clean / PGD accuracy on 200 test
    digits within binomial tolerances of each other (4 standard errors of a difference of
    two proportions near 0.5 on 200 examples: 0.2)."""
    x, y, x_test, y_test = digits
    x_test, y_test = x_test[:200], y_test[:200]
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            model = ks.models.small_cnn(seed=0)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        model.compile(keras.optimizers.Adam(1e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (
            policy == "mixed_float16")
        pgd = A.PGD(EPS, steps=5, value_range=(0.0, 1.0), seed=0)
        history = model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[
            ks.callbacks.AdversarialTraining(pgd, mode=mode)])
        for name, values in history.history.items():
            assert np.all(np.isfinite(values)), (policy, name, values)
        x_adv = A.PGD(EPS, steps=10, value_range=(0.0, 1.0), seed=1)(model, x_test, y_test)
        results[policy] = [float(np.mean(np.argmax(model.predict(v, verbose=0), 1) == y_test))
                           for v in (x_test, x_adv)]
    (clean32, robust32), (clean16, robust16) = results["float32"], results["mixed_float16"]
    assert clean16 > 0.8 and abs(clean16 - clean32) <= 0.2, results
    assert abs(robust16 - robust32) <= 0.2, results
