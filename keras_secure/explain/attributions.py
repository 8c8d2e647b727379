"""Attributions of Keras classifiers with shap and lime, read through the classifier contract.

:class:`Explainer` is built once for a model, a background set and a method, and explains
batches of inputs (or of an internal layer's activations) for chosen classes. The work is done
by the libraries: ``shap.DeepExplainer`` (DeepLIFT rescale rule with a background set, Lundberg
& Lee 2017), ``shap.GradientExplainer`` (expected gradients), ``shap.PermutationExplainer``
(model-agnostic Shapley sampling) and ``lime.lime_tabular.LimeTabularExplainer`` (Ribeiro et al.
2016). What keras_secure adds: the explained output is the contract's logits
(:meth:`keras_secure.Classifier.logits`; class probabilities for LIME, as the reference LIME
explains them), the class of each explanation is chosen through the contract, internal layers
are explained by splitting the model at the layer, additivity is checked where the method
guarantees it, and every result states its background and its number of samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import Classifier, as_classifier, check_inputs
from keras_secure.validation import check_bool, check_choice, check_number

#: the attribution methods of :class:`Explainer`
METHODS = ("deep", "gradient", "permutation", "lime", "input_x_gradient")
#: methods whose attributions sum to ``f(x) - E[f(background)]`` by construction
ADDITIVE_METHODS = ("deep", "permutation")
_ADDITIVITY_RTOL = 1e-3  # relative to the output scale; shap's own check uses 1e-2 absolute
_ADDITIVITY_ATOL = 1e-3
_DEFAULT_SAMPLES = {"gradient": 200, "lime": 1000}


@dataclasses.dataclass
class Attributions:
    """Attributions of a batch, one array of the explained features' shape per explained class.

    Attributes:
        values: float32 ``(n, c, *feature_shape)``: for example ``i`` and its ``j``-th explained
            class ``classes[i, j]``, the attribution of every input feature (or, with a
            ``layer``, of every activation of that layer). Units: logits for the shap methods
            and ``input_x_gradient``; class probability per standard deviation of the feature
            in the background for LIME (its local linear model's coefficients).
        classes: int32 ``(n, c)``: the explained class of each slice.
        outputs: float32 ``(n, c)``: the explained output at the example (logit, or the class
            probability for LIME).
        expected_value: float32 ``(n, c)`` base value the attributions are measured from
            (mean output over the background for the shap methods; LIME's local intercept), or
            None for ``input_x_gradient``.
        additivity_error: float32 ``(n, c)`` ``|outputs - expected_value - values.sum()|``
            for the shap methods (about 1e-6 for ``deep`` and ``permutation``, which guarantee
            additivity and raise above tolerance; a sampling error for ``gradient``), else None.
        method: the method's name (see :data:`METHODS`).
        layer: the explained layer's name, or None for the model's inputs.
        background_size: number of background examples used.
        num_samples: the method's sample count: integration points per example (``gradient``),
            model evaluations per example (``permutation``, ``max_evals``), neighbourhood size
            (``lime``); None where the method does not sample (``deep`` uses every background
            example; ``input_x_gradient``).
        seconds: wall-clock time of the explanation.
    """

    values: np.ndarray
    classes: np.ndarray
    outputs: np.ndarray
    expected_value: np.ndarray | None
    additivity_error: np.ndarray | None
    method: str
    layer: str | None
    background_size: int
    num_samples: int | None
    seconds: float

    @property
    def feature_shape(self) -> tuple:
        """Shape of one example's explained features (the input's, or the layer's)."""
        return tuple(self.values.shape[2:])

    def describe(self) -> dict:
        """What was explained and how, for reports (no arrays)."""
        return {"method": self.method, "layer": self.layer or "inputs",
                "classes_per_example": int(self.values.shape[1]),
                "feature_shape": self.feature_shape, "background_size": self.background_size,
                "num_samples": self.num_samples,
                "max_additivity_error": None if self.additivity_error is None else float(
                    np.max(self.additivity_error)),
                "seconds_per_example": self.seconds / max(1, self.values.shape[0])}


class _ContractLogits(keras.layers.Layer):
    """The contract's logits of a wrapped classifier as one layer (not saved: used only to give
    shap a Keras model whose output is the logits)."""

    def __init__(self, classifier=None, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier

    def call(self, inputs):
        return self.classifier.logits(inputs)


def _is_graph_model(model) -> bool:
    try:
        return isinstance(model, keras.Model) and bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _logits_model(clf: Classifier, feature_shape: tuple) -> keras.Model:
    """A Keras model mapping features to the contract's logits: the model itself where its
    output already is the logits (shap explains it unchanged), else a one-layer wrapper."""
    model = clf.model
    if clf.kind == "logits" and _is_graph_model(model) and len(model.inputs) == 1:
        return model
    inputs = keras.Input(feature_shape)
    return keras.Model(inputs, _ContractLogits(clf)(inputs), name="contract_logits")


def _split(model, layer):
    """``(features, head, layer_name)``: inputs -> the layer's activations, and those
    activations -> the model's output."""
    if not _is_graph_model(model):
        raise TypeError("`layer` needs a Sequential or Functional Keras model (one that can be "
                        "split at a layer). Received: model of type " + type(model).__name__)
    if isinstance(layer, keras.layers.Layer):
        if layer not in model.layers:
            raise ValueError(f"`layer` {layer.name!r} is not a layer of the model. Allowed: "
                             f"{[l.name for l in model.layers]}. Received: layer={layer.name!r}")
    elif isinstance(layer, str):
        names = [l.name for l in model.layers]
        if layer not in names:
            raise ValueError(f"`layer` must name a layer of the model, one of {names}. "
                             f"Received: layer={layer!r}")
        layer = model.get_layer(layer)
    else:
        raise TypeError(f"`layer` must be a layer name, a layer of the model, or None. "
                        f"Received: layer={layer!r}")
    if layer is model.layers[-1]:
        raise ValueError(f"`layer` {layer.name!r} is the model's output layer: explain an "
                         "internal layer (e.g. the one before the output) or the inputs "
                         "(layer=None).")
    try:
        output = layer.output
    except (AttributeError, ValueError) as err:
        raise ValueError(f"`layer` {layer.name!r} has no single output tensor ({err}).") from None
    if isinstance(output, (list, tuple, dict)):
        raise ValueError(f"`layer` {layer.name!r} has several outputs; choose a layer with one.")
    try:
        if isinstance(model, keras.Sequential):
            # A Sequential is a chain: rebuild both halves from its layers (shared weights).
            # Its layers' own output tensors may belong to another call than the one that
            # gives model.outputs (e.g. after keras.saving.load_model), so they cannot be cut.
            index = model.layers.index(layer)
            inputs = keras.Input(tuple(model.inputs[0].shape[1:]))
            hidden = inputs
            for part in model.layers[:index + 1]:
                hidden = part(hidden)
            features = keras.Model(inputs, hidden, name=f"{model.name}_to_{layer.name}")
            head_inputs = keras.Input(tuple(hidden.shape[1:]))
            out = head_inputs
            for part in model.layers[index + 1:]:
                out = part(out)
            head = keras.Model(head_inputs, out, name=f"{model.name}_from_{layer.name}")
        else:
            features = keras.Model(model.inputs, output, name=f"{model.name}_to_{layer.name}")
            head = keras.Model(output, model.outputs[0], name=f"{model.name}_from_{layer.name}")
    except (ValueError, TypeError) as err:
        raise ValueError(f"The model cannot be split at `layer` {layer.name!r}: its output must "
                         f"depend on the inputs only through that layer ({err}).") from None
    return features, head, layer.name


def _affine_head(head_clf: Classifier, feature_shape):
    """``(W, b)`` when the logits are an affine function of the layer's activations (the head is
    one Dense layer, optionally followed by a softmax the contract undoes), else None."""
    if len(feature_shape) != 1:
        return None
    layers = [l for l in head_clf.model.layers if not isinstance(l, keras.layers.InputLayer)]
    dense = [l for l in layers if type(l) is keras.layers.Dense]
    others = [l for l in layers if type(l) is not keras.layers.Dense]
    if len(dense) != 1 or any(not (isinstance(l, keras.layers.Softmax) or (
            isinstance(l, keras.layers.Activation) and getattr(l.activation, "__name__", "")
            in ("softmax", "sigmoid"))) for l in others):
        return None
    activation = getattr(dense[0].activation, "__name__", "")
    if activation not in ("linear", "softmax", "sigmoid"):
        return None
    w = np.asarray(dense[0].kernel, np.float64)
    b = np.asarray(dense[0].bias, np.float64) if dense[0].use_bias else np.zeros(w.shape[1])
    if w.shape[1] == 1:  # binary: the contract's logits are [0, z]
        w = np.concatenate([np.zeros_like(w), w], axis=1)
        b = np.concatenate([[0.0], b])
    return w, b


@contextlib.contextmanager
def _numpy_global_state():
    """shap's explainers seed NumPy's global generator (``np.random.seed``): restore it after,
    so that explaining does not change the user's random stream."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TensorFlow version is newer than 2.4.0.*")
        warnings.filterwarnings("ignore", message=".*structure of `inputs` doesn't match.*")
        yield


class Explainer:
    """Attributions of a Keras classifier's logits, from shap or lime, on inputs or a layer.

    Built once per model, background and method; :meth:`explain` is then called on batches.
    The model is read through the classifier contract: the explained output is its logits
    (recovered behind a softmax; ``[0, z]`` for a single-output binary model), and "predicted"
    classes are :meth:`Classifier.predict_labels`. LIME explains class probabilities (the
    softmax of those logits), as the reference implementation does.

    Methods:

    - ``"deep"``: ``shap.DeepExplainer`` (DeepLIFT with the background as references). Exact
      additivity: ``sum(values) == logit - mean logit over the background``; checked, and a
      ``RuntimeError`` above tolerance (an operation shap's rules do not cover).
    - ``"gradient"``: ``shap.GradientExplainer`` (expected gradients), ``num_samples``
      integration points per example (default 200); additivity holds in expectation only, and
      its error is reported, not enforced.
    - ``"permutation"``: ``shap.PermutationExplainer`` with an independent masker over the
      background, model-agnostic; ``num_samples`` = model evaluations per example
      (``max_evals``, default ``2 * d + 1``, one forward and one reverse permutation, the
      minimum). Exactly additive (the marginal contributions of a permutation telescope);
      checked.
    - ``"lime"``: ``lime.lime_tabular.LimeTabularExplainer`` on the flattened features, sampled
      around the instance (``sample_around_instance=True``, no discretisation), neighbourhood of
      ``num_samples`` points (default 1000; LIME's own default is 5000). Features constant in
      the background are declared categorical, so LIME never perturbs them off the data.
    - ``"input_x_gradient"``: ``x * d logit / dx`` in TensorFlow (Shrikumar et al. 2016), the
      one in-graph method, differentiable; used by adaptive attacks.

    Where the explained layer feeds one Dense output layer (e.g. the layer before the logits,
    as in Fidel et al. 2020), the logits are affine in its activations and every shap method's
    exact value is ``W[:, c] * (h - mean h_background)``: :meth:`attributions_tensor` gives
    that in-graph and differentiable (checked against shap in the tests), which lets an
    adaptive attacker differentiate through the attribution.

    Args:
        model: a Keras classifier (logits, softmax, one sigmoid or one logit), or a
            :class:`keras_secure.Classifier` declaring its output. Models with randomized
            layers are refused (their attributions would be random).
        background: background inputs ``(m, *input_shape)``, ``m >= 1``, finite: the reference
            distribution of the shap methods and LIME's feature statistics. Typically 20-100
            training examples.
        method: one of :data:`METHODS`. Defaults to ``"deep"``.
        layer: None to attribute to the inputs; or the name (or object) of an internal layer
            of a Sequential/Functional model, to attribute the logits to that layer's
            activations (the model is split there). Defaults to None.
        num_samples: the method's sample count (see above), or None for its default.
            Defaults to None.
        seed: seed of the sampling methods (``gradient``, ``permutation``, ``lime``); NumPy's
            global random state is restored afterwards. Defaults to 0.
        check_additivity: check ``deep`` and ``permutation`` explanations sum to the output
            minus the base value. Defaults to True.

    Raises:
        TypeError: for a non-model, a layer on a model that cannot be split, wrong types.
        ValueError: for an unknown method, a background of the wrong shape or with NaN, a
            randomized model, a layer not in the model, ``num_samples`` out of range.

    Example:
        >>> explainer = Explainer(model, x_train[:50], method="deep")
        >>> a = explainer.explain(x_test[:8])            # predicted class of each example
        >>> a.values.shape                                 # (8, 1, 8, 8, 1)
        >>> hidden = Explainer(model, x_train[:50], layer=model.layers[-2].name)

    References:
        Lundberg & Lee (2017), "A Unified Approach to Interpreting Model Predictions", NeurIPS.
        Ribeiro, Singh & Guestrin (2016), "Why Should I Trust You?", KDD.
        Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box".
        Fidel, Bitton & Shabtai (2020), "When Explainability Meets Adversarial Learning:
        Detecting Adversarial Examples using SHAP Signatures", IJCNN.
    """

    def __init__(self, model, background, method: str = "deep", *, layer=None,
                 num_samples: int | None = None, seed: int = 0, check_additivity: bool = True):
        self.method = check_choice("method", method, METHODS)
        self.seed = check_number("seed", seed, low=0, integer=True)
        self.check_additivity = check_bool("check_additivity", check_additivity)
        self.classifier = clf = as_classifier(model)
        self.model = clf.model
        if clf.randomized:
            raise ValueError("`model` contains randomized layers: its outputs, and so any "
                             "attribution of them, change from call to call. Explain its base "
                             "classifier instead.")
        background, _ = clf.check(background, name="background")
        self.background = background.astype(np.float32)
        self.input_shape = tuple(background.shape[1:])
        if layer is None:
            self.layer, self._features, head_clf = None, None, clf
        else:
            self._features, head, self.layer = _split(clf.model, layer)
            head_clf = Classifier(head, from_logits=clf.from_logits)
        self._head = head_clf
        self._logits_fn = None
        self._background_features = self._to_features(self.background)
        self.feature_shape = tuple(self._background_features.shape[1:])
        self.num_features = int(np.prod(self.feature_shape))
        head_clf.check(self._background_features[:2], name="background")
        self.num_classes = clf.num_classes
        if self.method == "deep" and num_samples is not None:
            raise ValueError("`num_samples` does not apply to method='deep' (it uses every "
                             "background example). Received: num_samples=" + repr(num_samples))
        if self.method == "input_x_gradient" and num_samples is not None:
            raise ValueError("`num_samples` does not apply to method='input_x_gradient'. "
                             f"Received: num_samples={num_samples!r}")
        minimum = 2 * self.num_features + 1 if self.method == "permutation" else 1
        if self.method == "permutation" and num_samples is None:
            num_samples = minimum
        if self.method in _DEFAULT_SAMPLES and num_samples is None:
            num_samples = _DEFAULT_SAMPLES[self.method]
        self.num_samples = check_number("num_samples", num_samples, low=minimum, integer=True,
                                        allow_none=True)
        self._target = _logits_model(head_clf, self.feature_shape)
        self._affine = None if self.layer is None else _affine_head(head_clf, self.feature_shape)
        self._background_mean = self._background_features.mean(axis=0)
        self._explainer = None
        self._grad_fn = None

    # -- pieces ---------------------------------------------------------------------------------
    @property
    def background_size(self) -> int:
        return int(self.background.shape[0])

    def _to_features(self, x):
        if self._features is None:
            return np.asarray(x, np.float32)
        parts = [np.asarray(self._features(tf.constant(x[i:i + 512], tf.float32),
                                           training=False), np.float32)
                 for i in range(0, x.shape[0], 512)]
        return np.concatenate(parts)

    def _logits(self, features):
        """Logits of the explained function on features (float64 NumPy), traced once."""
        if self._logits_fn is None:
            self._logits_fn = tf.function(self._head.logits, reduce_retracing=True)
        return np.concatenate([
            self._logits_fn(tf.constant(features[i:i + 4096], tf.float32)).numpy()
            for i in range(0, features.shape[0], 4096)]).astype(np.float64)

    def _build(self):
        if self._explainer is not None:
            return self._explainer
        import shap

        with _quiet(), _numpy_global_state():
            if self.method == "deep":
                self._explainer = shap.DeepExplainer(self._target, self._background_features)
            elif self.method == "gradient":
                self._explainer = shap.GradientExplainer(self._target,
                                                         self._background_features)
            elif self.method == "permutation":
                flat = self._background_features.reshape(self.background_size, -1)
                masker = shap.maskers.Independent(flat, max_samples=flat.shape[0])
                self._explainer = shap.PermutationExplainer(
                    lambda v: self._logits(v.reshape((-1, *self.feature_shape))), masker,
                    seed=self.seed)
            elif self.method == "lime":
                from lime.lime_tabular import LimeTabularExplainer

                flat = self._background_features.reshape(self.background_size, -1)
                constant = np.flatnonzero(flat.min(axis=0) == flat.max(axis=0)).tolist()
                self._explainer = LimeTabularExplainer(
                    flat, mode="classification", discretize_continuous=False,
                    sample_around_instance=True, feature_selection="none",
                    categorical_features=constant, random_state=self.seed)
            else:
                self._explainer = "input_x_gradient"
        return self._explainer

    # -- classes --------------------------------------------------------------------------------
    def _classes(self, x, classes) -> np.ndarray:
        n = x.shape[0]
        k = self.num_classes
        if isinstance(classes, str):
            check_choice("classes", classes, ("predicted", "all"))
            if classes == "all":
                return np.tile(np.arange(k, dtype=np.int32), (n, 1))
            return self.classifier.predict_labels(x)[:, None].astype(np.int32)
        if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
            if not 0 <= int(classes) < k:
                raise ValueError(f"`classes` must be a class in [0, {k - 1}]. "
                                 f"Received: classes={classes!r}")
            return np.full((n, 1), int(classes), np.int32)
        if isinstance(classes, bool) or classes is None:
            raise TypeError("`classes` must be 'predicted', 'all', a class index or labels "
                            f"(n,). Received: classes={classes!r}")
        return self.classifier.check_labels(classes, n, name="classes")[:, None]

    # -- explaining -----------------------------------------------------------------------------
    def explain(self, x, classes="predicted") -> Attributions:
        """Attributions of a batch for the chosen classes.

        Args:
            x: inputs ``(n, *input_shape)`` (always the model's inputs, also with a ``layer``),
                finite, of the model's input shape.
            classes: ``"predicted"`` (the contract's predicted label of each example),
                ``"all"`` (every class), a class index, or labels ``(n,)`` (one class per
                example, e.g. the true labels). Defaults to ``"predicted"``.

        Returns:
            :class:`Attributions` with ``values`` of shape ``(n, c, *feature_shape)``.

        Raises:
            TypeError / ValueError: for bad inputs (NaN, wrong shape) or classes out of range.
            RuntimeError: if a ``deep`` or ``permutation`` explanation does not add up to the
                output minus the base value (an operation shap's rules do not cover).

        Example:
            >>> a = explainer.explain(x_test[:4], classes=y_test[:4])
        """
        x, _ = self.classifier.check(x)
        x = x.astype(np.float32)
        cls = self._classes(x, classes)
        start = time.perf_counter()
        features = self._to_features(x)
        logits = self._logits(features)
        outputs = np.take_along_axis(logits, cls, axis=1)
        explainer = self._build()
        expected = additivity = None
        with _quiet(), _numpy_global_state():
            if self.method == "deep":
                values = self._deep(explainer, features, cls)
                base = np.asarray(explainer.expected_value, np.float64)
                expected = np.broadcast_to(base[cls], cls.shape)
            elif self.method == "gradient":
                values = self._gradient(explainer, features, cls)
                base = self._logits(self._background_features).mean(axis=0)
                expected = base[cls]
            elif self.method == "permutation":
                values, expected = self._permutation(explainer, features, cls)
            elif self.method == "lime":
                values, expected, outputs = self._lime(explainer, features, cls, logits)
            else:
                values = self.attributions_tensor(tf.constant(x), cls).numpy()
        values = values.astype(np.float32)
        if expected is not None and self.method != "lime":
            sums = values.reshape(values.shape[0], values.shape[1], -1).sum(axis=2)
            additivity = np.abs(outputs - expected - sums).astype(np.float32)
            if self.check_additivity and self.method in ADDITIVE_METHODS:
                tol = _ADDITIVITY_ATOL + _ADDITIVITY_RTOL * np.abs(outputs - expected)
                if (additivity > tol).any():
                    worst = float(additivity.max())
                    raise RuntimeError(
                        f"The {self.method!r} attributions do not add up to the logit minus its "
                        f"background mean (max error {worst:.3g}): an operation of the model is "
                        "not covered by shap's rules for this method. Use method='gradient' or "
                        "'permutation', or check_additivity=False to keep them anyway.")
        return Attributions(
            values=values, classes=cls, outputs=outputs.astype(np.float32),
            expected_value=None if expected is None else np.asarray(expected, np.float32),
            additivity_error=additivity, method=self.method, layer=self.layer,
            background_size=self.background_size, num_samples=self.num_samples,
            seconds=time.perf_counter() - start)

    def _deep(self, explainer, features, cls):
        n, c = cls.shape
        values = np.zeros((n, c, *self.feature_shape))
        if c == 1:  # only the top class: shap's ranked_outputs, then our classes where they differ
            phis, ranks = explainer.shap_values(features, ranked_outputs=1,
                                                check_additivity=False)
            values[:, 0] = np.asarray(phis)[..., 0]
            differ = np.flatnonzero(ranks[:, 0] != cls[:, 0])
        else:
            differ = np.arange(n)
        if differ.size:
            # shap checks additivity against the wrong columns when ranking outputs; we check it
            phis = np.asarray(explainer.shap_values(features[differ], check_additivity=False))
            values[differ] = np.moveaxis(phis, -1, 1)[np.arange(differ.size)[:, None],
                                                      cls[differ]]
        return values

    def _gradient(self, explainer, features, cls):
        phis, _ = explainer.shap_values(features, nsamples=self.num_samples,
                                        ranked_outputs=cls, output_rank_order="custom",
                                        rseed=self.seed)
        return np.moveaxis(np.asarray(phis), -1, 1)

    def _permutation(self, explainer, features, cls):
        flat = features.reshape(features.shape[0], -1)
        result = explainer(flat, max_evals=self.num_samples, silent=True)
        phis = np.asarray(result.values)  # (n, d, k)
        base = np.asarray(result.base_values)  # (n, k)
        rows = np.arange(cls.shape[0])[:, None]
        values = np.moveaxis(phis, -1, 1)[rows, cls].reshape((*cls.shape, *self.feature_shape))
        return values, base[rows, cls]

    def _lime(self, explainer, features, cls, logits):
        flat = features.reshape(features.shape[0], -1).astype(np.float64)
        d = flat.shape[1]

        def predict_proba(v):
            z = self._logits(v.reshape((-1, *self.feature_shape)).astype(np.float32))
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            return p / p.sum(axis=1, keepdims=True)

        z = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        values = np.zeros((*cls.shape, d))
        intercept = np.zeros(cls.shape)
        # LIME solves one small ridge regression per example: with several BLAS threads on a
        # busy machine each solve spun for ~0.2 s (measured 14x slower than one thread)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            self._lime_rows(explainer, flat, cls, predict_proba, values, intercept)
        outputs = np.take_along_axis(probabilities, cls, axis=1)
        return values.reshape((*cls.shape, *self.feature_shape)), intercept, outputs

    def _lime_rows(self, explainer, flat, cls, predict_proba, values, intercept):
        d = flat.shape[1]
        for i in range(flat.shape[0]):
            labels = tuple(int(c) for c in cls[i])
            exp = explainer.explain_instance(flat[i], predict_proba, labels=labels,
                                             num_features=d, num_samples=self.num_samples)
            for j, label in enumerate(labels):
                for feature, weight in exp.local_exp[label]:
                    values[i, j, feature] = weight
                intercept[i, j] = exp.intercept[label]

    # -- in-graph attributions ------------------------------------------------------------------
    @property
    def differentiable(self) -> bool:
        """True when :meth:`attributions_tensor` exists: ``input_x_gradient``, or a shap method
        on a layer whose logits are affine (one Dense output layer after it)."""
        return self.method == "input_x_gradient" or (
            self._affine is not None and self.method in ("deep", "gradient", "permutation"))

    def attributions_tensor(self, x, classes) -> tf.Tensor:
        """In-graph, differentiable attributions ``(n, c, *feature_shape)`` of inputs ``x``.

        For ``input_x_gradient``: ``x * d logit_c / dx``. For a shap method on a layer
        followed by one Dense output layer: the exact Shapley values of that affine function
        with the background as reference, ``W[:, c] * (h(x) - mean h(background))``, which
        ``deep``, ``gradient`` (in expectation) and ``permutation`` all compute.

        Args:
            x: float32 tensor ``(n, *input_shape)``.
            classes: int32 ``(n, c)`` classes (tensor or array).

        Returns:
            float32 tensor. Traceable (usable inside ``tf.function`` and gradient tapes).

        Raises:
            ValueError: if no in-graph form exists for this method and layer.
        """
        if not self.differentiable:
            raise ValueError(
                f"method={self.method!r} on {self.layer or 'the inputs'} has no in-graph "
                "(differentiable) form: use method='input_x_gradient', or a shap method on the "
                "layer that feeds the Dense output layer.")
        classes = tf.cast(tf.convert_to_tensor(classes), tf.int32)
        x = tf.cast(x, tf.float32)
        if self.method == "input_x_gradient":
            features = x if self._features is None else self._features(x, training=False)
            rows = []
            for j in range(classes.shape[1]):
                with tf.GradientTape() as tape:
                    tape.watch(features)
                    z = self._head.logits(features)
                    picked = tf.gather(z, classes[:, j], axis=1, batch_dims=1)
                rows.append(features * tape.gradient(picked, features))
            return tf.stack(rows, axis=1)
        w, _ = self._affine
        h = self._features(x, training=False)
        centred = tf.cast(h, tf.float32) - tf.constant(self._background_mean, tf.float32)
        weights = tf.gather(tf.constant(w.T, tf.float32), classes)  # (n, c, d)
        return weights * centred[:, None, :]


def explain(model, x, background, method: str = "deep", *, classes="predicted", layer=None,
            num_samples: int | None = None, seed: int = 0) -> Attributions:
    """Attributions of ``x`` in one call (builds an :class:`Explainer`; reuse one for many
    batches, shap traces its graphs once per explainer).

    Args:
        model: a Keras classifier or :class:`keras_secure.Classifier`.
        x: inputs ``(n, *input_shape)``.
        background: background inputs ``(m, *input_shape)``.
        method: one of :data:`METHODS`. Defaults to ``"deep"``.
        classes: see :meth:`Explainer.explain`. Defaults to ``"predicted"``.
        layer: internal layer to attribute to, or None (inputs). Defaults to None.
        num_samples: the method's sample count, or None. Defaults to None.
        seed: seed of the sampling methods. Defaults to 0.

    Returns:
        :class:`Attributions`.

    Raises:
        TypeError / ValueError / RuntimeError: see :class:`Explainer`.

    Example:
        >>> a = explain(model, x_test[:4], x_train[:50], method="permutation")
    """
    return Explainer(model, background, method, layer=layer, num_samples=num_samples,
                     seed=seed).explain(x, classes)


def policy_explainer(policy_fn, observations, method: str = "deep", **kwargs) -> Explainer:
    """An :class:`Explainer` of an RL policy network's action scores over observation features.

    The network maps observations to Q-values or action logits; like the RL observation
    attacks (:class:`keras_secure.rl.AdversarialObservation`), its outputs are declared as
    logits (Q-values that happen to lie in [0, 1] are not probabilities). "predicted" classes
    are the greedy actions. Comparing the attributions of a clean and an attacked observation
    shows which observation features an attack moved the decision through.

    Args:
        policy_fn: a Keras Q-network or actor ``(batch, *obs_shape) -> (batch, n_actions)``.
        observations: background observations ``(m, *obs_shape)``, e.g. states visited by
            the policy.
        method: one of :data:`METHODS`. Defaults to ``"deep"``.
        **kwargs: passed to :class:`Explainer` (``layer``, ``num_samples``, ``seed``, ...).

    Returns:
        :class:`Explainer`.

    Example:
        >>> e = policy_explainer(q_network, visited_states[:50])
        >>> e.explain(obs[None]).values[0, 0]   # one attribution per observation feature
    """
    observations = check_inputs(observations, "observations")
    return Explainer(Classifier(policy_fn, from_logits=True), observations, method, **kwargs)
