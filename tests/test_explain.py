"""keras_secure.explain: attributions (additivity where shap guarantees it, LIME on a linear
model), internal layers, RL Q-networks, the detector's metrics on hand-checkable cases, the
adaptive attacks and the errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure.explain import (
    AdaptivePGD,
    AdaptiveSquare,
    AttributionDetector,
    Explainer,
    detection_metrics,
    explain,
    policy_explainer,
    saliency_grid,
    saliency_pair,
    threshold_at_fpr,
)

VR = (0.0, 1.0)


def _mlp(seed=0, softmax=False):
    """A tiny ReLU network on 6 features, 3 classes (logits, or a softmax at the end)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="hidden"),
              keras.layers.Dense(3, name="out")]
    if softmax:
        layers.append(keras.layers.Softmax())
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    return _mlp(), rng.normal(size=(12, 6)).astype("float32"), rng.normal(
        size=(5, 6)).astype("float32")


@pytest.fixture(scope="module")
def digits_cnn():
    x, y = ks.datasets.load_digits("train")
    model = ks.models.train_small_cnn(x, y, epochs=3, seed=0)
    return model, x, y


# -- attributions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["deep", "permutation"])
def test_exact_additivity_sums_to_output_minus_background_mean(tiny, method):
    model, background, x = tiny
    a = Explainer(model, background, method).explain(x, classes="all")
    assert a.values.shape == (5, 3, 6) and a.classes.shape == (5, 3)
    logits = model(x).numpy()
    base = model(background).numpy().mean(axis=0)
    np.testing.assert_allclose(a.values.sum(axis=2), logits - base, atol=1e-4)
    np.testing.assert_allclose(a.outputs, logits, atol=1e-5)
    assert a.additivity_error.max() < 1e-4
    assert a.background_size == 12
    assert a.num_samples == (None if method == "deep" else 2 * 6 + 1)


def test_gradient_explainer_additive_in_expectation_and_reported(tiny):
    model, background, x = tiny
    a = Explainer(model, background, "gradient", num_samples=2000, seed=1).explain(x)
    logits = model(x).numpy()
    target = np.take_along_axis(logits - model(background).numpy().mean(0), a.classes, 1)
    # expected gradients sample (background, alpha) pairs: the sum converges to the target
    # with a Monte Carlo error ~ std / sqrt(2000); the scale of these outputs is ~1
    np.testing.assert_allclose(a.values.sum(axis=2), target, atol=0.15)
    assert a.additivity_error is not None and a.num_samples == 2000


def test_predicted_class_and_softmax_model_explained_through_logits(tiny):
    model, background, x = tiny
    probs = keras.Sequential([*model.layers, keras.layers.Softmax()])
    probs.build((None, 6))
    a = Explainer(probs, background, "deep").explain(x)
    b = Explainer(model, background, "deep").explain(x)
    np.testing.assert_array_equal(a.classes[:, 0], ks.classifier.as_classifier(
        model).predict_labels(x))
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)  # the logits are explained


def test_explicit_classes_and_deep_matches_all_classes(tiny):
    model, background, x = tiny
    e = Explainer(model, background, "deep")
    every = e.explain(x, classes="all")
    labels = np.array([2, 0, 1, 1, 0])
    chosen = e.explain(x, classes=labels)
    np.testing.assert_allclose(chosen.values[:, 0], every.values[np.arange(5), labels],
                               atol=1e-6)
    one = e.explain(x, classes=1)
    np.testing.assert_allclose(one.values[:, 0], every.values[:, 1], atol=1e-6)


def test_lime_on_linear_model_recovers_sign_and_order_of_weights():
    w = np.array([3.0, -2.0, 1.0, 0.5, -0.25, 0.0], "float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, name="out")])
    model.get_layer("out").set_weights([np.stack([np.zeros(6), w], 1).astype("float32"),
                                        np.zeros(2, "float32")])
    rng = np.random.default_rng(0)
    background = rng.normal(scale=0.3, size=(200, 6)).astype("float32")
    x = np.zeros((1, 6), "float32")
    a = Explainer(model, background, "lime", num_samples=3000, seed=0).explain(x, classes=1)
    # at x = 0 the class-1 probability is sigmoid(w.x), locally increasing along w
    lime_w = a.values[0, 0]
    assert np.all(np.sign(lime_w[:5]) == np.sign(w[:5]))
    np.testing.assert_array_equal(np.argsort(-np.abs(lime_w))[:5], np.argsort(-np.abs(w))[:5])
    assert abs(lime_w[5]) < 0.2 * abs(lime_w[4]) + 1e-3


def test_input_shapes_on_images_and_numpy_state_restored(digits_cnn):
    model, x, _ = digits_cnn
    state = np.random.get_state()[1].copy()
    for method, n in [("deep", None), ("gradient", 20), ("input_x_gradient", None)]:
        a = explain(model, x[:3], x[-10:], method, num_samples=n)
        assert a.values.shape == (3, 1, 8, 8, 1), method
        assert a.feature_shape == (8, 8, 1)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_internal_layer_attributions_and_exact_in_graph_form(digits_cnn):
    model, x, _ = digits_cnn
    layer = model.layers[-2].name
    e = Explainer(model, x[-30:], "deep", layer=layer)
    a = e.explain(x[:6])
    assert a.values.shape == (6, 1, 128) and a.layer == layer
    assert a.additivity_error.max() < 1e-3
    # logits affine in the layer: every shap method's value is W[:, c] (h - mean h)
    assert e.differentiable
    np.testing.assert_allclose(e.attributions_tensor(tf.constant(x[:6]), a.classes).numpy(),
                               a.values, atol=1e-5)
    p = Explainer(model, x[-30:], "permutation", layer=layer).explain(x[:2])
    np.testing.assert_allclose(p.values, a.values[:2], atol=1e-4)


def test_internal_layer_of_nonlinear_head(tiny):
    model, background, x = tiny
    e = Explainer(model, background, "deep", layer="hidden")
    a = e.explain(x, classes="all")
    assert a.values.shape == (5, 3, 8)
    h = keras.Model(model.inputs, model.get_layer("hidden").output)
    logits = model(x).numpy()
    np.testing.assert_allclose(a.values.sum(2) + model(background).numpy().mean(0), logits,
                               atol=1e-4)
    assert e.differentiable  # one Dense after "hidden"
    assert h(x).shape == (5, 8)


def test_rl_q_network_attributions_over_observation_features():
    keras.utils.set_random_seed(0)
    q_net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2)])
    rng = np.random.default_rng(0)
    states = rng.uniform(-0.2, 0.2, size=(40, 4)).astype("float32")  # CartPole-like
    e = policy_explainer(q_net, states[:20], "deep")
    obs = states[20:25]
    a = e.explain(obs)
    assert a.values.shape == (5, 1, 4)
    greedy = np.argmax(q_net(obs).numpy(), axis=1)
    np.testing.assert_array_equal(a.classes[:, 0], greedy)
    q = q_net(obs).numpy()[np.arange(5), greedy]
    np.testing.assert_allclose(a.values.sum((1, 2)),
                               q - q_net(states[:20]).numpy().mean(0)[greedy], atol=1e-4)
    # an observation attack changes the attribution of the greedy action
    adv = A.FGSM(0.05)(ks.Classifier(q_net, from_logits=True), obs, greedy)
    b = e.explain(adv, classes=greedy)
    assert np.abs(b.values - a.values).max() > 0
    lime = policy_explainer(q_net, states[:20], "lime", num_samples=200).explain(obs[:1])
    assert lime.values.shape == (1, 1, 4)


def test_saliency_plots(tmp_path, digits_cnn):
    model, x, y = digits_cnn
    e = Explainer(model, x[-10:], "deep")
    x_adv = A.FGSM(0.1, value_range=VR)(model, x[:4], y[:4])
    saliency_pair(x[:4], x_adv, e.explain(x[:4]), e.explain(x_adv), path=str(tmp_path / "p.png"))
    saliency_grid(x[:4], e.explain(x[:4]), labels=y[:4], path=str(tmp_path / "g.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000 and (tmp_path / "g.png").exists()
    with pytest.raises(ValueError, match="images' shape"):
        saliency_grid(x[:4], np.zeros((4, 3)))


# -- errors ---------------------------------------------------------------------------------------
def test_explainer_errors(tiny, digits_cnn):
    model, background, x = tiny
    with pytest.raises(ValueError, match="`method`"):
        Explainer(model, background, "smoothgrad")
    with pytest.raises(ValueError, match="background.*input shape"):
        Explainer(model, np.zeros((4, 5), "float32"))
    with pytest.raises(ValueError, match="finite"):
        Explainer(model, np.full((4, 6), np.nan, "float32"))
    with pytest.raises(ValueError, match="`layer` must name"):
        Explainer(model, background, layer="nope")
    with pytest.raises(ValueError, match="output layer"):
        Explainer(model, background, layer="out")
    with pytest.raises(ValueError, match="num_samples"):
        Explainer(model, background, "permutation", num_samples=5)  # < 2 * 6 + 1
    with pytest.raises(ValueError, match="num_samples"):
        Explainer(model, background, "deep", num_samples=10)
    e = Explainer(model, background, "deep")
    with pytest.raises(ValueError, match="input shape"):
        e.explain(np.zeros((2, 7), "float32"))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        e.explain(x, classes=3)
    with pytest.raises(ValueError, match="classes"):
        e.explain(x, classes="top")
    with pytest.raises(ValueError, match="no in-graph"):
        Explainer(model, background, "deep").attributions_tensor(tf.constant(x), [[0]] * 5)
    cnn = digits_cnn[0]
    smoothed = ks.layers.RandomizedSmoothing(cnn, sigma=0.25, num_samples=4, seed=0)
    with pytest.raises(ValueError, match="randomized"):
        Explainer(smoothed, digits_cnn[1][:4])


# -- detector metrics -----------------------------------------------------------------------------
def test_threshold_at_fpr_by_hand():
    scores = np.arange(100.0)
    assert threshold_at_fpr(scores, 0.05) == 94.0  # 95..99 flagged: exactly 5%
    assert threshold_at_fpr(scores, 0.0) == 99.0
    assert threshold_at_fpr([1.0, 2.0, 3.0, 4.0], 0.3) == 3.0  # floor(1.2) = 1 flagged
    with pytest.raises(ValueError, match="fpr"):
        threshold_at_fpr(scores, 1.0)
    with pytest.raises(ValueError, match="empty"):
        threshold_at_fpr([], 0.05)


def test_detection_metrics_hand_checkable():
    m = detection_metrics([0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9], threshold=0.5)
    assert m["roc_auc"] == 1.0 and m["accuracy"] == 1.0 and m["tpr_at_5_fpr"] == 1.0
    assert m["tpr"] == 1.0 and m["fpr"] == 0.0
    # one adversarial below every clean score: 12 of the 16 (clean, adversarial) pairs ordered
    m = detection_metrics([0.1, 0.2, 0.3, 0.4], [0.0, 0.7, 0.8, 0.9], threshold=0.5)
    assert m["roc_auc"] == pytest.approx(12 / 16)
    assert m["accuracy"] == pytest.approx(7 / 8) and m["tpr"] == 0.75
    # at FPR 0 the ROC reaches TPR 3/4
    assert m["tpr_at_5_fpr"] == 0.75
    m = detection_metrics([0.5, 0.5], [0.5, 0.5], threshold=0.5)
    assert m["roc_auc"] == 0.5 and m["accuracy"] == 0.5
    with pytest.raises(ValueError, match="finite"):
        detection_metrics([np.nan], [1.0], 0.5)


# -- the detector ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(digits_cnn):
    model, x, y = digits_cnn
    e = Explainer(model, x[-30:], "deep", layer=model.layers[-2].name)
    attacks = [A.FGSM(0.1, value_range=VR), A.PGD(0.1, steps=5, value_range=VR, seed=0)]
    return AttributionDetector(e, seed=0).fit(x[:200], y[:200], attacks=attacks)


def test_detector_fit_threshold_and_scores(fitted, digits_cnn):
    model, x, y = digits_cnn
    s = fitted.training_summary
    assert s["clean_calibration"] == 60 and s["clean_train"] == 140 and s["adversarial"] >= 10
    assert s["signature_size"] == 128
    # the threshold flags at most 5% of the held-out clean inputs it was set on
    order = np.random.default_rng(0).permutation(200)
    cal_scores = fitted.decision_function(x[:200][order[:60]])
    assert np.mean(cal_scores > fitted.threshold) <= 0.05
    x_test, y_test = ks.datasets.load_digits("test")
    r = fitted.evaluate_attack(x_test[:60], y_test[:60], A.PGD(0.1, steps=5, value_range=VR,
                                                                seed=1))
    assert r.n_clean == 60 and r.n_adversarial > 0 and 0.5 < r.roc_auc <= 1.0
    assert r.seconds_per_input > 0 and not r.adaptive
    assert fitted.predict(x_test[:5]).dtype == bool


def test_detector_errors(fitted, digits_cnn):
    model, x, y = digits_cnn
    with pytest.raises(ValueError, match="another model"):
        fitted.decision_function(x[:4], model=ks.models.small_cnn(seed=3))
    with pytest.raises(ValueError, match="input shape"):
        fitted.decision_function(np.zeros((3, 9, 9, 1), "float32"))
    e = Explainer(model, x[-30:], "deep", layer=model.layers[-2].name)
    with pytest.raises(ValueError, match="Too few examples"):
        AttributionDetector(e).fit(x[:20], y[:20], attacks=[A.FGSM(0.1, value_range=VR)])
    with pytest.raises(ValueError, match="attacks"):
        AttributionDetector(e).fit(x[:40], y[:40])
    with pytest.raises(RuntimeError, match="not fitted"):
        AttributionDetector(e).decision_function(x[:2])
    with pytest.raises(ValueError, match="fpr"):
        AttributionDetector(e, fpr=0.0)
    with pytest.raises(TypeError, match="explainer"):
        AttributionDetector(model)
    # the same model trained further is refused too
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    d = AttributionDetector(Explainer(clone, x[-30:], "deep", layer=clone.layers[-2].name),
                            min_examples=5)
    d.fit(x[:60], y[:60], x_adversarial=A.FGSM(0.2, value_range=VR)(clone, x[60:80],
                                                                     y[60:80]))
    clone.layers[-1].bias.assign(clone.layers[-1].bias + 1.0)
    with pytest.raises(ValueError, match="weights changed"):
        d.decision_function(x[:2])


def test_adaptive_attacks_know_the_detector(fitted):
    x_test, y_test = ks.datasets.load_digits("test")
    x, y = x_test[:40], y_test[:40]
    clean = fitted.decision_function(x)
    plain = fitted.evaluate_attack(x, y, A.PGD(0.1, steps=20, value_range=VR, seed=0),
                                   clean_scores=clean)
    attack = AdaptivePGD(fitted, 0.1, steps=20, value_range=VR, seed=0)
    adaptive = fitted.evaluate_attack(x, y, attack, clean_scores=clean)
    assert adaptive.adaptive
    # it knows the detector: its successful examples are flagged less often
    assert adaptive.tpr is None or adaptive.tpr <= plain.tpr
    x_adv = attack(fitted.model, x, y)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    square = AdaptiveSquare(fitted, 0.1, queries=30, value_range=VR, seed=0)
    x_sq = square(fitted.model, x[:10], y[:10])
    assert np.abs(x_sq - x[:10]).max() <= 0.1 + 1e-6
    with pytest.raises(ValueError, match="another model"):
        square(ks.models.small_cnn(seed=5), x[:2], y[:2])


def test_adaptive_pgd_refuses_non_differentiable_detector(digits_cnn):
    model, x, y = digits_cnn
    e = Explainer(model, x[-20:], "deep")  # input attributions: no in-graph DeepLIFT
    d = AttributionDetector(e, min_examples=5).fit(
        x[:40], y[:40], x_adversarial=A.FGSM(0.3, value_range=VR)(model, x[40:60], y[40:60]))
    assert not d.differentiable
    with pytest.raises(ValueError, match="AdaptiveSquare"):
        AdaptivePGD(d, 0.1)
    with pytest.raises(TypeError, match="detector"):
        AdaptiveSquare(e, 0.1)


def test_internal_layer_of_a_saved_and_loaded_sequential(tmp_path):
    """A Sequential loaded from disk splits at a layer like the fresh one (its layers' output
    tensors belong to another call than its outputs)."""
    from keras_secure.explain import Explainer

    x = np.random.default_rng(0).random((24, 8, 8, 1)).astype("float32")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(8, activation="relu", name="h"),
                              keras.layers.Dense(10)])
    fresh = Explainer(model, x[:20], "deep", layer="h").explain(x[20:])
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "m.keras"))
    again = Explainer(loaded, x[:20], "deep", layer="h").explain(x[20:])
    np.testing.assert_allclose(np.asarray(again.values), np.asarray(fresh.values), atol=1e-6)
