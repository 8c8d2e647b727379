"""Detection of poisoned training samples: spectral signatures, activation clustering and a
TracIn self-influence ranking. Each gives per-sample suspicion scores and a flagged set."""

from __future__ import annotations

import dataclasses
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import as_classifier
from keras_secure.poisoning._common import (check_fraction, check_mask, count_for,
                                            hidden_activations, require_model)
from keras_secure.validation import check_choice, check_number


@dataclasses.dataclass
class DetectionResult:
    """What a detector says about a training set.

    Attributes:
        method: the detector's name.
        scores: float ``(n,)`` suspicion scores, higher = more likely poisoned.
        flagged: boolean ``(n,)``, the examples the detector would remove.
        details: method-specific figures (per-class statistics, the layer read, ...).
    """

    method: str
    scores: np.ndarray
    flagged: np.ndarray
    details: dict = dataclasses.field(default_factory=dict)

    def evaluate(self, mask) -> dict:
        """Precision, recall and ROC AUC against the true poison mask.

        See :func:`detection_metrics`.

        Example:
            >>> result.evaluate(mask)
            {'precision': 0.93, 'recall': 0.98, 'auc': 0.995, 'flagged': 76, 'poisoned': 72}
        """
        return detection_metrics(self.scores, self.flagged, mask)


def detection_metrics(scores, flagged, mask) -> dict:
    """Precision and recall of a flagged set and the ROC AUC of scores against the true mask.

    Computed with scikit-learn (``precision_score``, ``recall_score``, ``roc_auc_score``).
    Precision is 0 when nothing is flagged.

    Args:
        scores: ``(n,)`` suspicion scores (higher = more suspicious).
        flagged: boolean ``(n,)`` flagged set.
        mask: boolean ``(n,)``, True for the truly poisoned examples; must hold both poisoned
            and clean examples.

    Returns:
        ``{"precision", "recall", "auc", "flagged", "poisoned"}`` (the last two are counts).

    Raises:
        ValueError: arrays of different lengths (naming ``mask`` / ``flagged``), non-finite
            scores, a mask with no poisoned or no clean example (the figures are undefined).

    Example:
        >>> detection_metrics(result.scores, result.flagged, mask)
    """
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        raise ValueError("`scores` must be finite. Received: scores with non-finite values")
    flagged = check_mask(flagged, scores.shape[0], "flagged", "scores")
    mask = check_mask(mask, scores.shape[0], "mask", "scores")
    if mask.all() or not mask.any():
        raise ValueError("`mask` must mark some examples as poisoned and some as clean: "
                         "precision, recall and AUC are undefined otherwise. Received: mask with "
                         f"{int(mask.sum())} of {mask.shape[0]} poisoned")
    return {
        "precision": float(precision_score(mask, flagged, zero_division=0)),
        "recall": float(recall_score(mask, flagged)),
        "auc": float(roc_auc_score(mask, scores)),
        "flagged": int(flagged.sum()),
        "poisoned": int(mask.sum()),
    }


def _single_threaded():
    """BLAS and OpenMP limited to one thread for the per-class decompositions and k-means: the
    matrices are small (one class by the feature dimension), and on a busy machine the idle
    threads of OpenBLAS spin and made them 30-80x slower (measured: a 150 x 1024 SVD 3.7 s with
    2 threads under load, 0.05 s with one). Restored on exit."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _flag_top(scores: np.ndarray, count: int) -> np.ndarray:
    flagged = np.zeros(scores.shape[0], dtype=bool)
    if count:
        flagged[np.argsort(-scores, kind="stable")[:count]] = True
    return flagged


def _labels_of(model, x, y):
    """Inputs, int32 labels and the number of classes, read through the contract."""
    clf = as_classifier(model)
    x, labels = clf.check(x, y)
    return x, labels, clf.num_classes


def spectral_signatures(model, x, y, *, layer: str | None = None,
                        expected_fraction: float = 0.05, batch_size: int = 256
                        ) -> DetectionResult:
    """Spectral signatures: poisoned examples stand out along the top singular direction of
    their (training) class's centred feature representations.

    For each class ``c`` of the training labels ``y``: the activations ``h_i`` of ``layer`` are
    centred on the class mean, the top right singular vector ``v`` is computed with
    scikit-learn's ``TruncatedSVD``, and the score is ``((h_i - mean) . v)^2``. To compare
    classes the scores are divided by the class's median score (a robust scale; in a clean
    class most examples score near 1). The flagged set is the ``round(1.5 * expected_fraction
    * n)`` highest scores over the training set (Tran et al. remove ``1.5 eps`` examples per
    class; with normalised scores we take the same budget globally, so classes without poison
    lose nothing when the poison sits in one class).

    Args:
        model: the model trained on the (possibly poisoned) data.
        x: training inputs ``(n, ...)``.
        y: training labels (as trained on).
        layer: name of the hidden layer read; None is the penultimate layer. Defaults to None.
        expected_fraction: upper bound on the poisoned fraction of the training set, in
            [0, 1]. Defaults to 0.05.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        A :class:`DetectionResult`; ``details["per_class_top_singular_value"]``.

    Raises:
        ValueError: ``expected_fraction`` outside [0, 1], an unknown ``layer``, bad data.

    Example:
        >>> result = spectral_signatures(model, x_poisoned, y_poisoned, expected_fraction=0.05)
        >>> result.evaluate(mask)

    References:
        Tran, Li & Madry (2018), "Spectral Signatures in Backdoor Attacks", NeurIPS.

    Limitations:
        Needs the poison to be separable along one direction of the learned representation;
        adaptive backdoors that suppress the latent separation (e.g. Tang et al. 2021's
        TaCT, source-specific triggers, or Qi et al. 2023's adaptive-blend) evade it, and it
        does not flag label flips that look like their (flipped) class.
    """
    expected_fraction = check_fraction(expected_fraction, "expected_fraction")
    x, labels, k = _labels_of(model, x, y)
    h = hidden_activations(model, x, layer, batch_size).astype(np.float64)
    scores = np.zeros(x.shape[0])
    singular = {}
    with _single_threaded():
        for c in range(k):
            _spectral_class(h, labels, c, scores, singular)
    flagged = _flag_top(scores, count_for(min(1.0, 1.5 * expected_fraction), x.shape[0]))
    return DetectionResult("spectral_signatures", scores, flagged,
                           {"layer": layer, "per_class_top_singular_value": singular})


def _spectral_class(h, labels, c, scores, singular):
    """Scores of the examples labelled ``c`` (written into ``scores``)."""
    from sklearn.decomposition import TruncatedSVD

    idx = np.flatnonzero(labels == c)
    if idx.shape[0] < 3:
        return
    centred = h[idx] - h[idx].mean(axis=0)
    if not np.any(centred):
        return
    svd = TruncatedSVD(n_components=1, algorithm="arpack" if min(centred.shape) > 1
                       else "randomized", random_state=0).fit(centred)
    raw = (centred @ svd.components_[0]) ** 2
    scale = np.median(raw)
    scores[idx] = raw / (scale if scale > 0 else max(raw.mean(), 1e-12))
    singular[c] = float(svd.singular_values_[0])


def activation_clustering(model, x, y, *, layer: str | None = None, n_components: int = 10,
                          reduce: str = "pca", size_threshold: float = 0.35,
                          silhouette_threshold: float = 0.35, seed: int = 0,
                          batch_size: int = 256) -> DetectionResult:
    """Activation clustering: in a poisoned class, the activations split into two clusters,
    the smaller one holding the poisons.

    For each class of ``y``: the activations of ``layer`` are reduced to ``n_components`` with
    scikit-learn's ``PCA`` or ``FastICA`` (Chen et al. use ICA; PCA is several times faster and
    did as well on the digits), split by ``KMeans(2)``; the class is declared
    poisoned when the smaller cluster holds at most ``size_threshold`` of the class and the
    clustering's silhouette score is at least ``silhouette_threshold`` (a real split, not noise).
    Its smaller cluster is flagged. Per-sample score (for rankings and AUC): ``(1 - 2 r) *
    max(silhouette, 0) * (d_big - d_small) / max(d_big, d_small)``, with ``r`` the smaller
    cluster's relative size and ``d`` the distances to the two centroids: positive in a small,
    well-separated cluster, 0 for an even split.

    Args:
        model: the model trained on the (possibly poisoned) data.
        x: training inputs ``(n, ...)``.
        y: training labels (as trained on).
        layer: hidden layer read; None is the penultimate layer. Defaults to None.
        n_components: dimensions kept, >= 1 (capped by the feature dimension and class size).
            Defaults to 10.
        reduce: ``"pca"`` or ``"ica"``. Defaults to ``"pca"``.
        size_threshold: largest relative size of a poison cluster, in (0, 0.5]. Defaults to
            0.35.
        silhouette_threshold: smallest silhouette score of a poisoned class, in [-1, 1]. Clean
            digit classes scored 0.2-0.34 and backdoored ones 0.38-0.5 on the flattened conv
            features of the demo's CNN; other data and layers may need another value.
            Defaults to 0.35.
        seed: seed of ICA and k-means. Defaults to 0.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        A :class:`DetectionResult`; ``details["per_class"]`` has each class's relative size,
        silhouette and verdict.

    Raises:
        ValueError: bad thresholds, an unknown ``layer``, bad data.

    Example:
        >>> activation_clustering(model, x_poisoned, y_poisoned).evaluate(mask)

    References:
        Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava (2018),
        "Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering".

    Limitations:
        Fails when the poison is a large share of its class (the "small cluster" is then the
        clean part), when clean classes have two genuine modes (false positives), and against
        adaptive attacks that keep poisoned activations inside the clean cluster.
    """
    n_components = check_number("n_components", n_components, low=1, integer=True)
    check_choice("reduce", reduce, ("pca", "ica"))
    size_threshold = check_number("size_threshold", size_threshold, low=0.0, high=0.5,
                                  low_inclusive=False)
    silhouette_threshold = check_number("silhouette_threshold", silhouette_threshold,
                                        low=-1.0, high=1.0)
    seed = check_number("seed", seed, low=0, integer=True)
    x, labels, k = _labels_of(model, x, y)
    h = hidden_activations(model, x, layer, batch_size).astype(np.float64)
    scores = np.zeros(x.shape[0])
    flagged = np.zeros(x.shape[0], dtype=bool)
    per_class = {}
    with _single_threaded():
        for c in range(k):
            verdict = _cluster_class(h, labels, c, scores, flagged, n_components, reduce,
                                     size_threshold, silhouette_threshold, seed)
            if verdict is not None:
                per_class[c] = verdict
    return DetectionResult("activation_clustering", scores, flagged,
                           {"layer": layer, "per_class": per_class})


def _cluster_class(h, labels, c, scores, flagged, n_components, reduce, size_threshold,
                   silhouette_threshold, seed):
    """Cluster the examples labelled ``c``; writes their scores and flags, returns the class's
    verdict (or None for a class too small or constant to cluster)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    idx = np.flatnonzero(labels == c)
    hc = h[idx]
    if idx.shape[0] < 4 or np.allclose(hc, hc[0]):
        return None
    dims = min(n_components, hc.shape[1], idx.shape[0] - 1)
    reduced = _reduce(hc - hc.mean(axis=0), dims, reduce, seed)
    km = KMeans(2, n_init=3, random_state=seed).fit(reduced)
    sizes = np.bincount(km.labels_, minlength=2)
    if sizes.min() == 0:
        return None
    small = int(np.argmin(sizes))
    r = sizes[small] / idx.shape[0]
    silhouette = float(silhouette_score(reduced, km.labels_, random_state=seed))
    d = np.linalg.norm(reduced[:, None, :] - km.cluster_centers_[None], axis=-1)
    d_small, d_big = d[:, small], d[:, 1 - small]
    margin = (d_big - d_small) / np.maximum(np.maximum(d_big, d_small), 1e-12)
    scores[idx] = (1.0 - 2.0 * r) * max(silhouette, 0.0) * margin
    poisoned = bool(r <= size_threshold and silhouette >= silhouette_threshold)
    if poisoned:
        flagged[idx[km.labels_ == small]] = True
    return {"relative_size": float(r), "silhouette": silhouette, "poisoned": poisoned}


def _reduce(h, dims, method, seed):
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    if method == "pca":
        return PCA(dims, svd_solver="full").fit_transform(h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FastICA(dims, random_state=seed, max_iter=400,
                       whiten="unit-variance").fit_transform(h)


class TracInCheckpoints(keras.callbacks.Callback):
    """Keeps the checkpoints TracIn needs: a copy of the model's weights and the learning rate
    at the end of every ``every``-th epoch (in memory).

    Args:
        every: epochs between checkpoints, >= 1. Defaults to 1.

    Attributes:
        checkpoints: list of ``(weights, learning_rate)``.

    Example:
        >>> ckpt = TracInCheckpoints()
        >>> model.fit(x, y, epochs=10, callbacks=[ckpt])
        >>> tracin_self_influence(model, x, y, ckpt.checkpoints)
    """

    def __init__(self, every: int = 1):
        super().__init__()
        self.every = check_number("every", every, low=1, integer=True)
        self.checkpoints: list = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        lr = self.model.optimizer.learning_rate
        lr = float(keras.ops.convert_to_numpy(lr(self.model.optimizer.iterations)
                                              if callable(lr) else lr))
        self.checkpoints.append(([w.copy() for w in self.model.get_weights()], lr))


def _output_layer(model):
    """The model's last Dense layer and the activation after it (its own, or a final
    Activation / Softmax layer)."""
    require_model(model)
    layers = list(model.layers)
    after = None
    if layers and isinstance(layers[-1], (keras.layers.Activation, keras.layers.Softmax)):
        after = layers.pop()
    if not layers or not isinstance(layers[-1], keras.layers.Dense):
        raise ValueError(
            "TracIn's last-layer gradients need a model ending in a Dense layer (optionally "
            "followed by an Activation or Softmax layer). Received: a model whose last layers "
            f"are {[type(layer).__name__ for layer in getattr(model, 'layers', [])[-2:]]}")
    return layers[-1], after


def _last_layer_gradient_norms(model, dense, after, clf):
    """``(x, labels) -> ||grad_{kernel, bias} CE||^2`` per example, for the last Dense layer."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    inputs_of_dense = keras.Model(inputs, dense.input, name=f"{model.name}_tracin")

    @tf.function(reduce_retracing=True)
    def squared_norms(xb, yb):
        a = tf.reshape(tf.cast(inputs_of_dense(xb, training=False), tf.float32),
                       [tf.shape(xb)[0], -1])
        with tf.GradientTape() as tape:
            u = tf.matmul(a, tf.cast(dense.kernel, tf.float32))
            if dense.use_bias:
                u = u + tf.cast(dense.bias, tf.float32)
            tape.watch(u)
            out = dense.activation(u)
            if after is not None:
                out = after(out)
            logp = clf.log_probabilities(out)
            loss = -tf.reduce_sum(tf.gather(logp, yb, batch_dims=1))
        delta = tape.gradient(loss, u)
        bias = 1.0 if dense.use_bias else 0.0
        return (tf.reduce_sum(tf.square(a), axis=1) + bias) * tf.reduce_sum(tf.square(delta), 1)

    return squared_norms


def tracin_self_influence(model, x, y, checkpoints=None, *, expected_fraction: float = 0.05,
                          batch_size: int = 256) -> DetectionResult:
    """TracIn self-influence ranking of training points (TracInCP, last layer).

    The self-influence of a training example ``z`` is ``sum_i lr_i ||grad_W loss(w_i, z)||^2``
    over the checkpoints ``w_i`` saved during training (:class:`TracInCheckpoints`), with ``W``
    the weights (kernel and bias) of the last Dense layer. For that layer the per-example
    gradient is exact and closed-form: ``||grad||^2 = (||a||^2 + 1) * ||delta||^2`` where ``a``
    is the layer's input and ``delta`` the gradient of the cross-entropy (on the classifier
    contract's log-probabilities) with respect to the layer's pre-activation output. Examples
    the model struggles to fit, across training, score high: flipped labels, and backdoor
    samples before the trigger is learnt.

    Why TracIn and not influence functions: Koh & Liang's influence needs inverse-Hessian-vector
    products per test point, which are unstable on non-convex networks and expensive;
    TracIn's self-influence needs only per-example gradients at saved checkpoints (Pruthi et
    al. use it to find mislabelled data), and its last-layer form costs one forward pass per
    checkpoint.

    Args:
        model: the trained model (its architecture is used; its weights are used when
            ``checkpoints`` is None, giving a single-checkpoint, loss-gradient ranking).
        x: training inputs ``(n, ...)``.
        y: training labels (as trained on).
        checkpoints: list of ``(weights, learning_rate)`` from :class:`TracInCheckpoints`, or
            None. Defaults to None.
        expected_fraction: upper bound on the poisoned fraction; the ``round(1.5 *
            expected_fraction * n)`` highest scores are flagged. Defaults to 0.05.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        A :class:`DetectionResult`.

    Raises:
        ValueError: a model not ending in a Dense layer, checkpoints that do not fit the model,
            bad data.

    Example:
        >>> tracin_self_influence(model, x_p, y_p, ckpt.checkpoints).evaluate(mask)

    References:
        Pruthi, Liu, Kale & Sundararajan (2020), "Estimating Training Data Influence by Tracing
        Gradient Descent" (TracIn); Koh & Liang (2017), "Understanding Black-box Predictions via
        Influence Functions".

    Limitations:
        A backdoor learnt in the first epoch leaves little gradient to trace; checkpoints from
        early training matter. Clean but atypical examples also score high.
    """
    expected_fraction = check_fraction(expected_fraction, "expected_fraction")
    batch_size = check_number("batch_size", batch_size, low=1, integer=True)
    x, labels, _ = _labels_of(model, x, y)
    dense, after = _output_layer(model)
    clf = as_classifier(model)
    if checkpoints is None:
        checkpoints = [(None, 1.0)]
    elif not isinstance(checkpoints, (list, tuple)) or not checkpoints:
        raise ValueError("`checkpoints` must be a non-empty list of (weights, learning_rate) "
                         f"pairs (TracInCheckpoints.checkpoints). Received: {checkpoints!r}")
    squared_norms = model.__dict__.get("_keras_secure_tracin_fn")
    if squared_norms is None:  # traced once per model, reused across calls and checkpoints
        squared_norms = _last_layer_gradient_norms(model, dense, after, clf)
        model.__dict__["_keras_secure_tracin_fn"] = squared_norms
    original = model.get_weights()
    scores = np.zeros(x.shape[0])
    try:
        for weights, lr in checkpoints:
            if weights is not None:
                try:
                    model.set_weights(weights)
                except ValueError as err:
                    raise ValueError(f"`checkpoints` do not fit the model: {err}") from None
            lr = check_number("learning_rate", lr, low=0.0)
            for i in range(0, x.shape[0], batch_size):
                scores[i:i + batch_size] += lr * squared_norms(
                    tf.constant(x[i:i + batch_size], tf.float32),
                    tf.constant(labels[i:i + batch_size])).numpy()
    finally:
        model.set_weights(original)
    flagged = _flag_top(scores, count_for(min(1.0, 1.5 * expected_fraction), x.shape[0]))
    return DetectionResult("tracin_self_influence", scores, flagged,
                           {"checkpoints": len(checkpoints), "layer": dense.name})
