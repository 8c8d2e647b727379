"""The classifier contract (keras_secure.classifier) and the consumers that go through it.

Every expectation here is computed independently of the code under test: hand-set weights with
known answers, Keras's own predictions and thresholding, NumPy.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_secure as ks
from keras_secure import attacks as A
from keras_secure import layers as L
from keras_secure.callbacks import RobustnessMonitor
from keras_secure.classifier import Classifier, as_classifier, check_labels
from keras_secure.evaluation import evaluate_robustness

from conftest import VALUE_RANGE, accuracy


# --------------------------------------------------------------------------------------------
# Scenario a: a sigmoid model 100% accurate on 200 points, p = sigmoid(x0 - x1), y = [x0 > x1]
# --------------------------------------------------------------------------------------------
def _points(n=200, seed=0):
    x = np.random.default_rng(seed).uniform(0.2, 0.8, (n, 2)).astype(np.float32)
    return x, (x[:, 0] > x[:, 1]).astype(np.int64)


W = np.array([[1.0], [-1.0]], np.float32)


def _binary(head: str):
    """The same binary classifier z = x0 - x1 with each kind of output head."""
    inputs = keras.Input((2,))
    if head == "dense_sigmoid":
        dense = keras.layers.Dense(1, activation="sigmoid")
        outputs = dense(inputs)
    elif head == "activation_sigmoid":
        dense = keras.layers.Dense(1)
        outputs = keras.layers.Activation("sigmoid")(dense(inputs))
    elif head == "logit":
        dense = keras.layers.Dense(1)
        outputs = dense(inputs)
    else:  # two-class softmax with logits [0, z]
        dense = keras.layers.Dense(2)
        outputs = keras.layers.Softmax()(dense(inputs))
    model = keras.Model(inputs, outputs)
    if head == "softmax2":
        dense.set_weights([np.concatenate([np.zeros_like(W), W], axis=1), np.zeros(2)])
    else:
        dense.set_weights([W, np.zeros(1)])
    return model


HEADS = ["dense_sigmoid", "activation_sigmoid", "logit", "softmax2"]
KINDS = {"dense_sigmoid": "binary_probability", "activation_sigmoid": "binary_probability",
         "logit": "binary_logit", "softmax2": "probabilities"}


def _keras_labels(model, x, head):
    """Keras's own reading: thresholding for one output (0.5 on a probability, 0 on a logit),
    arg-max otherwise."""
    out = model.predict(x, verbose=0)
    if out.shape[1] == 2:
        return out.argmax(axis=1)
    return (out[:, 0] > (0.0 if head == "logit" else 0.5)).astype(np.int64)


@pytest.mark.parametrize("head", HEADS)
def test_binary_heads_give_the_true_figures_in_every_consumer(head):
    x, y = _points()
    model = _binary(head)
    clf = as_classifier(model)
    assert clf.kind == KINDS[head] and clf.num_classes == 2
    # predicted labels: equal to Keras's own thresholding, and 100% accurate here
    np.testing.assert_array_equal(clf.predict_labels(x), _keras_labels(model, x, head))
    assert np.mean(_keras_labels(model, x, head) == y) == 1.0
    # The truth under L-inf eps 0.3 in [0, 1]: moving x0 down and x1 up by 0.3 changes x0 - x1
    # by 0.6 > |x0 - x1| for every point of [0.2, 0.8]^2, so every point can be flipped: 0%.
    report = evaluate_robustness(model, x, y, [A.PGD(0.3, steps=20, value_range=VALUE_RANGE,
                                                     seed=0)])
    row = report.results[0]
    assert row.clean_accuracy == 1.0 and row.adversarial_accuracy == 0.0
    x_adv = A.PGD(0.3, steps=20, value_range=VALUE_RANGE, seed=0)(model, x, y)
    assert np.mean(_keras_labels(model, x_adv, head) == y) == 0.0
    # the monitor, on the same model, with (n, 1) labels
    monitor = RobustnessMonitor(x, y[:, None], A.PGD(0.3, steps=20, value_range=VALUE_RANGE,
                                                    seed=0))
    monitor.set_model(model)
    monitor.on_train_begin()
    assert monitor.robust_accuracy() == 0.0


@pytest.mark.parametrize("head", HEADS)
def test_recovered_logits_are_the_models_own(head):
    x, _ = _points(16)
    model = _binary(head)
    z = (x[:, 0] - x[:, 1])[:, None]
    logits = as_classifier(model).logits(tf.constant(x)).numpy()
    np.testing.assert_allclose(logits, np.concatenate([np.zeros_like(z), z], 1), atol=1e-6)


def test_logits_are_recovered_behind_every_softmax_form():
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    z_model = keras.Model(inputs, dense(inputs))
    expected = z_model.predict(x, verbose=0)
    nested_inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    nested_inner.layers[0].set_weights(dense.get_weights())
    forms = {
        "Softmax layer": keras.Model(inputs, keras.layers.Softmax()(z_model.output)),
        "Activation": keras.Model(inputs, keras.layers.Activation("softmax")(z_model.output)),
        "keras.ops.softmax": keras.Model(inputs, keras.ops.softmax(z_model.output)),
        "nested model": keras.Sequential([keras.Input((4,)), keras.layers.Identity(),
                                          nested_inner]),
    }
    for name, model in forms.items():
        clf = Classifier(model)
        assert clf.kind == "probabilities", name
        np.testing.assert_allclose(clf.logits(tf.constant(x)).numpy(), expected, atol=1e-5,
                                   err_msg=name)
    linear = Classifier(z_model)
    assert linear.kind == "logits"
    np.testing.assert_allclose(linear.logits(tf.constant(x)).numpy(), expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Kinds the structure cannot tell: refused until declared, never guessed
# --------------------------------------------------------------------------------------------
class Subclassed(keras.Model):
    def __init__(self, probabilities):
        super().__init__()
        self.dense = keras.layers.Dense(3)
        self.probabilities = probabilities

    def call(self, x):
        z = self.dense(x)
        return tf.nn.softmax(z) if self.probabilities else z


def test_a_subclassed_model_returning_probabilities_is_refused_until_declared(linear_model):
    x = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
    model = Subclassed(probabilities=True)
    model(x)
    model.dense.set_weights(linear_model.layers[-1].get_weights())
    y = linear_model.predict(x, verbose=0).argmax(axis=1)
    for consumer in (
        lambda m: A.FGSM(0.1)(m, x, y),
        lambda m: evaluate_robustness(m, x, y, [A.FGSM(0.1)]),
        lambda m: as_classifier(m).predict_labels(x),
    ):
        with pytest.raises(ValueError, match="from_logits=False"):
            consumer(model)
    declared = Classifier(model, from_logits=False)
    logits = declared.logits(tf.constant(x)).numpy()
    shift = logits - linear_model.predict(x, verbose=0)  # log-softmax: logits minus a constant
    np.testing.assert_allclose(shift, shift[:, :1].repeat(3, axis=1), atol=1e-5)
    np.testing.assert_array_equal(declared.predict_labels(x), y)
    # logits that are not probabilities need no declaration
    plain = Subclassed(probabilities=False)
    plain(x)
    plain.dense.set_weights(linear_model.layers[-1].get_weights())
    assert as_classifier(plain).check(x)[0] is not None and as_classifier(plain).kind == "logits"


def test_the_in_graph_guard_stops_probabilities_read_as_logits():
    model = Subclassed(probabilities=True)
    x = tf.random.normal((4, 4), seed=0)
    model(x)
    clf = Classifier(model)
    with pytest.raises(tf.errors.InvalidArgumentError, match="from_logits"):
        tf.function(clf.logits)(x)


def test_contradictions_and_multi_label_heads_are_errors():
    model = _binary("dense_sigmoid")
    with pytest.raises(ValueError, match="contradicts"):
        Classifier(model, from_logits=True)
    with pytest.raises(ValueError, match="contradicts"):
        Classifier(_binary("logit"), from_logits=False)
    multi = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="sigmoid")])
    with pytest.raises(ValueError, match="multi-label"):
        Classifier(multi)
    with pytest.raises(TypeError, match="`from_logits`"):
        Classifier(model, from_logits="yes")


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
def test_every_label_encoding_reads_the_same():
    y = np.array([0, 2, 1, 2])
    expected = y.astype(np.int32)
    for encoding in (y, y[:, None], y.astype(np.float32), np.eye(3)[y],
                     np.eye(3, dtype=np.int64)[y], tf.constant(y)):
        np.testing.assert_array_equal(check_labels(encoding, 3), expected)
    np.testing.assert_array_equal(check_labels(np.array([True, False]), 2), [1, 0])


@pytest.mark.parametrize("labels, error, match", [
    (np.array([0, 3]), ValueError, r"labels in \[0, 2\]"),
    (np.array([0, -1]), ValueError, r"labels in \[0, 2\]"),
    (np.array([0.0, 0.5]), ValueError, "non-integer value 0.5"),
    (np.array([0.0, np.nan]), ValueError, "NaN"),
    (np.array(["a", "b"]), TypeError, "`y` must hold integer class labels"),
    (np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]), ValueError, "one-hot"),
    (np.zeros((2, 2)), ValueError, r"shape \(n,\) or \(n, 1\)"),
    (np.zeros(3), ValueError, "same number of examples"),
])
def test_labels_no_one_can_mean_are_refused_naming_y(labels, error, match, linear_model):
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(error, match=match):
        check_labels(labels, 3, n=2)
    with pytest.raises(error, match=match):
        evaluate_robustness(linear_model, x, labels, [A.FGSM(0.1)])


def test_labels_of_shape_n_1_on_the_digits_cnn(cnn, eval_set):
    """Scenario b: integer labels (n, 1), as keras.datasets returns them."""
    x, y = eval_set
    truth = accuracy(cnn, x, y)  # Keras's predictions, arg-max by NumPy
    report = evaluate_robustness(cnn, x, y[:, None], [A.FGSM(0.1, value_range=VALUE_RANGE)])
    assert report.clean_accuracy == pytest.approx(truth)
    adv = A.FGSM(0.1, value_range=VALUE_RANGE)(cnn, x, y)
    assert report.results[0].adversarial_accuracy == pytest.approx(
        np.mean((cnn.predict(x, verbose=0).argmax(1) == y)
                & (cnn.predict(adv, verbose=0).argmax(1) == y)))
    values = []
    for labels in (y, y[:, None], np.eye(10)[y]):
        monitor = RobustnessMonitor(x, labels, A.FGSM(0.1, value_range=VALUE_RANGE))
        monitor.set_model(cnn)
        monitor.on_train_begin()
        values.append(monitor.robust_accuracy())
    assert values[0] == values[1] == values[2] == report.results[0].adversarial_accuracy


# --------------------------------------------------------------------------------------------
# Inputs no one can mean, datasets
# --------------------------------------------------------------------------------------------
def test_non_finite_inputs_are_refused_naming_x(cnn, eval_set):
    x, y = eval_set
    bad = x[:4].copy()
    bad[1, 0, 0, 0] = np.nan
    inf = x[:4].copy()
    inf[2, 3, 3, 0] = np.inf
    smoothed = L.RandomizedSmoothing(cnn, sigma=0.25, seed=0)
    for data in (bad, inf):
        for call in (
            lambda: A.PGD(0.1, value_range=VALUE_RANGE)(cnn, data, y[:4]),
            lambda: A.FGSM(0.1)(cnn, data, y[:4]),
            lambda: evaluate_robustness(cnn, data, y[:4], [A.FGSM(0.1)]),
            lambda: smoothed.certify(data, n0=10, n=20),
            lambda: smoothed.predict_with_abstain(data, n=10),
            lambda: as_classifier(cnn).predict_labels(data),
        ):
            with pytest.raises(ValueError, match=r"`x` must be finite"):
                call()
        with pytest.raises(ValueError, match=r"`x_val` must be finite"):
            RobustnessMonitor(data, y[:4], A.FGSM(0.1))


def test_input_shape_must_match_the_model(cnn):
    with pytest.raises(ValueError, match=r"input shape \(n, 8, 8, 1\)"):
        evaluate_robustness(cnn, np.zeros((3, 8, 8)), np.zeros(3), [A.FGSM(0.1)])


def test_datasets_are_evaluated_like_arrays(cnn, eval_set):
    x, y = eval_set[0][:64], eval_set[1][:64]
    attack = lambda: A.PGD(0.1, steps=5, value_range=VALUE_RANGE, seed=0)  # noqa: E731
    arrays = evaluate_robustness(cnn, x, y, [attack()], batch_size=32)
    for ds in (tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
               tf.data.Dataset.from_tensor_slices((x, y[:, None]))):
        report = evaluate_robustness(cnn, ds, attacks=[attack()], batch_size=32)
        assert report.clean_accuracy == arrays.clean_accuracy
        assert report.results[0].adversarial_accuracy == arrays.results[0].adversarial_accuracy
    with pytest.raises(ValueError, match="infinite"):
        evaluate_robustness(cnn, tf.data.Dataset.from_tensor_slices((x, y)).repeat(),
                            attacks=[attack()])
    with pytest.raises(ValueError, match="`y` must be None"):
        evaluate_robustness(cnn, tf.data.Dataset.from_tensor_slices((x, y)), y, [attack()])
    monitor = RobustnessMonitor(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), None,
                                attack())
    assert monitor.x_val.shape == x.shape and (monitor.y_val == y).all()


# --------------------------------------------------------------------------------------------
# No gradient masking through composition (randomized and non-differentiable layers)
# --------------------------------------------------------------------------------------------
def test_randomized_smoothing_is_attacked_through_its_soft_path_wherever_it_sits(tmp_path):
    """A smoothed binary classifier, bare and wrapped in a model (as the docs and .keras
    files have it): the same adaptive attack, the same (true) answer."""
    x, y = _points(100)
    base = _binary("logit")
    base.layers[-1].set_weights([10.0 * W, np.zeros(1)])  # z = 10 (x0 - x1)
    smoothed = L.RandomizedSmoothing(base, sigma=0.05, num_samples=64, seed=0)
    wrapped = keras.Sequential([keras.Input((2,)), smoothed])
    path = tmp_path / "smoothed.keras"
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    for model in (smoothed, wrapped, loaded):
        clf = as_classifier(model)
        assert clf.kind == "probabilities" and clf.randomized
        assert any("RandomizedSmoothing" in p and "EOT" in p
                   for p in clf.describe()["adaptive_path"])
        report = evaluate_robustness(model, x, y, [A.PGD(0.35, steps=20,
                                                         value_range=VALUE_RANGE, seed=0)])
        # the base is a binary logit model: the smoothed votes must be read as such (clean
        # accuracy of the smoothed classifier: only points within ~2 sigma of the boundary
        # can be wrong), and every point can be flipped within eps 0.35 (0.7 > |x0 - x1|)
        assert report.clean_accuracy >= 0.95
        assert report.results[0].adversarial_accuracy == 0.0
    # What the contract prevents: the deployed hard votes have a zero gradient, and an attack
    # on them (adaptive=False, only for showing this) stalls and overstates robustness.
    with pytest.warns(UserWarning, match="rounds to 1"):  # the hard votes saturate
        naive = evaluate_robustness(Classifier(wrapped, adaptive=False), x, y,
                                    [A.PGD(0.35, steps=20, value_range=VALUE_RANGE, seed=0)])
    assert naive.results[0].adversarial_accuracy >= 0.5
    assert "NOT adaptive" in naive.classifier["adaptive_path"][0]


def test_smoothing_reads_a_binary_base_through_the_contract():
    x, y = _points(60, seed=3)
    base = _binary("dense_sigmoid")
    smoothed = L.RandomizedSmoothing(base, sigma=0.02, seed=0)
    assert smoothed.num_classes == 2
    far = np.abs(x[:, 0] - x[:, 1]) > 0.1  # > 3.5 sigma * sqrt(2) from the boundary
    predictions = smoothed.predict_with_abstain(x, n=100, alpha=0.001)
    np.testing.assert_array_equal(predictions[far], y[far])
    certified, radii = smoothed.certify(x, n0=20, n=200, alpha=0.001)
    np.testing.assert_array_equal(certified[far], y[far])
    assert (radii[far] > 0).all()


def test_denoisers_nested_anywhere_are_attacked_with_bpda(cnn):
    squeeze = L.BitDepthReduction(2, VALUE_RANGE, gradient="exact")
    inner = keras.Sequential([keras.Input((8, 8, 1)), squeeze])
    model = keras.Sequential([keras.Input((8, 8, 1)), inner, cnn])
    x = tf.constant(np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype(np.float32))
    clf = as_classifier(model)
    assert any("BitDepthReduction" in p and "BPDA" in p for p in clf.describe()["adaptive_path"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        adaptive = tf.reduce_sum(clf.logits(x))
    assert float(tf.reduce_max(tf.abs(tape.gradient(adaptive, x)))) > 0
    with tf.GradientTape() as tape:  # the model as deployed: the true, zero gradient
        tape.watch(x)
        deployed = tf.reduce_sum(model(x))
    assert float(tf.reduce_max(tf.abs(tape.gradient(deployed, x)))) == 0.0
    assert ks.Classifier is Classifier


def test_structure_read_once_the_model_is_built_and_tf_nn_activations_are_known():
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    unbuilt = keras.Sequential([keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(3, activation="softmax")])
    assert as_classifier(unbuilt).kind is None  # no layer graph until the first call
    report = evaluate_robustness(unbuilt, x, y, [A.FGSM(0.1)])  # builds it, then reads it
    assert as_classifier(unbuilt).kind == "probabilities"
    assert "softmax" in report.classifier["output"]
    tf_softmax = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                   keras.layers.Activation(tf.nn.softmax)])
    assert Classifier(tf_softmax).kind == "probabilities"


def test_logits_are_recovered_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
        logits = Classifier(model).logits(tf.constant(x))
        kernel, bias = (np.asarray(w, np.float32) for w in model.layers[0].get_weights())
        assert logits.dtype == tf.float32
        np.testing.assert_allclose(logits.numpy(), x @ kernel + bias, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------------------------
# Training stages read binary heads through the contract
# --------------------------------------------------------------------------------------------
def _train_one_step(model, y, callback, x):
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False,
                        callbacks=[callback])
    return {k: v[0] for k, v in history.history.items()}


@pytest.mark.parametrize("mode", ["madry", "mixed", "trades", "fast"])
@pytest.mark.parametrize("head", ["dense_sigmoid", "logit"])
def test_adversarial_training_on_a_binary_head_equals_the_two_class_model(mode, head):
    """A single-output binary model and the two-class logits model [0, z] with the same weights
    are the same classifier: with a zero learning rate and the same attack seed, every logged
    loss must be equal (the two-class model is the reference path)."""
    x, y = _points(64, seed=4)
    w = 3.0 * W
    binary = _binary(head)
    binary.layers[-1].set_weights([w, np.zeros(1)])
    binary.compile(keras.optimizers.SGD(0.0),
                   keras.losses.BinaryCrossentropy(from_logits=head == "logit"))
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(2)
    reference = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.concatenate([np.zeros_like(w), w], axis=1), np.zeros(2)])
    reference.compile(keras.optimizers.SGD(0.0),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def callback():
        return ks.callbacks.AdversarialTraining(
            A.PGD(0.2, steps=3, value_range=VALUE_RANGE, seed=0), mode=mode, ratio=0.3)

    got = _train_one_step(binary, y[:, None].astype(np.float32), callback(), x)
    want = _train_one_step(reference, y, callback(), x)
    assert set(want) <= set(got)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("head", ["dense_sigmoid", "logit"])
def test_distillation_from_and_to_binary_heads(head):
    x, y = _points(32, seed=5)
    teacher = _binary(head)
    teacher.layers[-1].set_weights([4.0 * W, np.zeros(1)])
    student = _binary("dense_sigmoid")
    student.layers[-1].set_weights([1.0 * W, np.array([0.2])])
    student.compile(keras.optimizers.SGD(0.0), keras.losses.BinaryCrossentropy())
    t = 2.0
    logs = _train_one_step(student, y[:, None].astype(np.float32),
                           ks.callbacks.Distillation(teacher, temperature=t, alpha=0.5), x)
    # by hand: teacher logit 4 (x0 - x1), student logit (x0 - x1) + 0.2, two classes [0, z]
    def softmax_t(z):
        two = np.stack([np.zeros_like(z), z], axis=1) / t
        e = np.exp(two - two.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    d = (x[:, 0] - x[:, 1]).astype(np.float64)
    p_t, p_s = softmax_t(4.0 * d), softmax_t(d + 0.2)
    kl = np.mean(np.sum(p_t * np.log(p_t / p_s), axis=1)) * t * t
    assert logs["distillation_loss"] == pytest.approx(kl, rel=1e-4)


def test_train_denoiser_compares_logits_behind_a_softmax(cnn, eval_set):
    """HGD's loss is on logits: a softmax classifier and the logits classifier it wraps (the
    same weights) must train the denoiser identically."""
    x = eval_set[0][:64]
    softmax = keras.Sequential([keras.Input((8, 8, 1)), cnn, keras.layers.Softmax()])
    losses = []
    for classifier in (cnn, softmax):
        keras.utils.set_random_seed(0)
        denoiser = L.LearnedDenoiser(filters=4, depth=2, value_range=VALUE_RANGE)
        history = L.train_denoiser(denoiser, x, classifier=classifier, loss="logits", epochs=2,
                                   batch_size=32, seed=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


class SubclassedSigmoid(keras.Model):
    def __init__(self, logit=False):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.logit = logit

    def call(self, x):
        z = self.dense(x)
        return z if self.logit else keras.ops.sigmoid(z)


@pytest.mark.parametrize("logit", [False, True])
def test_a_declared_subclassed_binary_model_is_read_as_binary(logit):
    """The refusal tells the user to declare from_logits; the declaration must then give the
    binary kind once the output width is seen (it gave a softmax kind: every label 1)."""
    x, y = _points()
    model = SubclassedSigmoid(logit)
    model(x[:1])
    model.dense.set_weights([W, np.zeros(1)])
    clf = Classifier(model, from_logits=logit)
    clf.check(x, y)
    assert clf.kind == ("binary_logit" if logit else "binary_probability")
    out = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_array_equal(clf.predict_labels(x), (out > (0.0 if logit else 0.5)))
    report = evaluate_robustness(clf, x, y, [A.PGD(0.3, steps=20, value_range=VALUE_RANGE,
                                                   seed=0)])
    assert report.clean_accuracy == 1.0 and report.results[0].adversarial_accuracy == 0.0
    if not logit:
        with pytest.raises(ValueError, match="from_logits=False"):
            evaluate_robustness(model, x, y, [A.FGSM(0.1)])


def test_minimal_norm_attacks_on_randomized_models_are_refused():
    """On a smoothed classifier a minimal-norm attack stops at the boundary of the soft
    estimate, where the deployed votes are a coin flip (a reviewer measured 97-98% robust
    against a true 80.5%): refused, with what to use instead."""
    x, y = _points(20)
    smoothed = L.RandomizedSmoothing(_binary("logit"), sigma=0.1, seed=0)
    for attack in (A.DeepFool(value_range=VALUE_RANGE, eps=0.05),
                   A.CarliniWagnerL2(value_range=VALUE_RANGE, eps=0.05)):
        with pytest.raises(ValueError, match="coin flip"):
            evaluate_robustness(smoothed, x, y, [attack])


def test_attacks_of_one_report_share_the_value_range():
    x, y = _points(20)
    with pytest.raises(ValueError, match="same `value_range`"):
        evaluate_robustness(_binary("logit"), x, y, [A.PGD(0.1, value_range=VALUE_RANGE),
                                                     A.PGD(0.1)])


class SubclassedLogits(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_smoothing_takes_subclassed_layer_and_declared_bases():
    x, y = _points(40, seed=6)
    two = np.concatenate([np.zeros_like(W), 10.0 * W], axis=1)
    subclassed = SubclassedLogits()
    subclassed(x[:1])
    subclassed.dense.set_weights([two, np.zeros(2)])
    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    layer.set_weights([two, np.zeros(2)])
    sigmoid = SubclassedSigmoid()
    sigmoid(x[:1])
    sigmoid.dense.set_weights([10.0 * W, np.zeros(1)])
    far = np.abs(x[:, 0] - x[:, 1]) > 0.25  # > 3.5 sigma * sqrt(2) from the boundary
    for base in (subclassed, layer, Classifier(sigmoid, from_logits=False)):
        smoothed = L.RandomizedSmoothing(base, sigma=0.05, seed=0)
        predictions, radii = smoothed.certify(x, n0=20, n=200, alpha=0.001)
        np.testing.assert_array_equal(predictions[far], y[far])
        assert smoothed.num_classes == 2
    assert smoothed.get_config()["base_from_logits"] is False


def test_complex_inputs_and_soft_labels_are_refused_with_what_is_wrong():
    with pytest.raises(TypeError, match="real numbers"):
        ks.classifier.check_inputs(np.ones((2, 3), np.complex64))
    smoothed = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    with pytest.raises(ValueError, match="label-smoothed"):
        check_labels(smoothed, 3)
    with pytest.raises(ValueError, match="multi-label"):
        check_labels(np.array([[1, 1, 0], [0, 1, 0]]), 3)


class SubclassedSoftmax(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return keras.ops.softmax(self.dense(x))


def test_saturated_log_probabilities_are_flagged_not_reported_silently():
    """A declared probability model whose layers cannot give the logits is attacked through
    log p; where p rounds to 1 that has no gradient (a reviewer measured 74-78% reported against
    a true 59.5%). The report warns and records it."""
    x = np.random.default_rng(7).uniform(0.2, 0.8, (40, 4)).astype(np.float32)
    model = SubclassedSoftmax()
    model(x[:1])
    kernel = np.zeros((4, 3), np.float32)
    kernel[0, 0] = kernel[1, 1] = kernel[2, 2] = 1000.0
    model.dense.set_weights([kernel, np.zeros(3, np.float32)])
    y = model.predict(x, verbose=0).argmax(axis=1)
    with pytest.warns(UserWarning, match="rounds to 1 in float32"):
        report = evaluate_robustness(Classifier(model, from_logits=False), x, y,
                                     [A.FGSM(0.05, value_range=VALUE_RANGE)])
    assert "overstate" in report.classifier["warnings"][0]
    model.dense.set_weights([kernel / 1000.0, np.zeros(3, np.float32)])  # not saturated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_robustness(Classifier(model, from_logits=False), x, y,
                            [A.FGSM(0.05, value_range=VALUE_RANGE)])


def test_float32_eps_is_the_same_threat_model(cnn, eval_set):
    x, y = eval_set[0][:40], eval_set[1][:40]
    report = evaluate_robustness(cnn, x, y, [
        A.FGSM(0.1, value_range=VALUE_RANGE),
        A.PGD(np.float32(0.1), steps=3, value_range=VALUE_RANGE, seed=0)])
    assert len(report.worst_cases) == 1
    assert report.worst_case.adversarial_accuracy <= min(
        r.adversarial_accuracy for r in report.results)


def test_minimal_norm_attacks_called_directly_on_randomized_models_are_refused():
    x, y = _points(10)
    smoothed = L.RandomizedSmoothing(_binary("logit"), sigma=0.1, seed=0)
    for attack in (A.DeepFool(value_range=VALUE_RANGE), A.CarliniWagnerL2(value_range=VALUE_RANGE)):
        with pytest.raises(ValueError, match="coin flip"):
            attack(smoothed, x, y)


def test_bit_depth_reduction_takes_integer_images_and_bare_dense_heads_are_read():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    out = L.BitDepthReduction(3, value_range=(0, 255))(images).numpy()
    np.testing.assert_allclose(out, np.round(images / 255.0 * 7) / 7 * 255, atol=1e-3)
    head = keras.layers.Dense(1, activation="sigmoid")
    head.build((None, 2))
    assert Classifier(head).kind == "binary_probability"


def test_sigmoid_scores_declared_as_logits():
    """k >= 2 sigmoid units are refused as a multi-label head, but may be declared as scores
    (a Q-network squashed into [0, 1]): the outputs are then the logits, the largest is the
    decision, and RL explainers and observation attacks read them so."""
    from keras_secure.explain import policy_explainer

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2, activation="sigmoid")])
    obs = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")
    with pytest.raises(ValueError, match="from_logits=True"):
        ks.Classifier(model).predict_labels(obs)
    clf = ks.Classifier(model, from_logits=True)
    out = model.predict(obs, verbose=0)
    np.testing.assert_allclose(clf.logits(obs).numpy(), out, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict_labels(obs), np.argmax(out, axis=1))
    assert "declared as scores" in clf.describe()["output"]
    values = policy_explainer(model, obs[:20], "deep").explain(obs[20:]).values
    assert values.shape[-1] == 4
