"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): noise training, Monte Carlo
prediction with abstention, and certified L2 radii."""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf
from scipy import stats

from keras_secure.classifier import Classifier, as_classifier, check_inputs, in_adaptive_path
from keras_secure.privacy.noise import standard_normal
from keras_secure.validation import check_choice, check_number

#: the class index that marks an abstention in predictions and certifications
ABSTAIN = -1


@keras.saving.register_keras_serializable(package="keras_secure")
class RandomizedSmoothing(keras.layers.Layer):
    """A base classifier smoothed by Gaussian noise of standard deviation ``sigma``.

    The smoothed classifier is ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``
    (Cohen, Rosenfeld & Kolter 2019). If the top class has probability at least ``pA > 1/2``,
    ``g`` is constant within the L2 ball of radius ``sigma * Phi^-1(pA)``.

    - ``call(x, training=True)``: Gaussian data augmentation - the base classifier's logits on
      ``x + e`` (one draw per example). Training a model that contains this layer with ``fit``
      is noise training, which the certificate needs.
    - ``call(x, training=False)`` (inference): Monte Carlo estimate of the smoothed class
      probabilities from ``num_samples`` noisy copies per example, drawn and evaluated in-graph
      in chunks of at most ``chunk_size`` copies: vote frequencies (``vote="hard"``, Cohen's
      ``g``) or mean softmax (``vote="soft"``).
    - :meth:`predict_with_abstain`: Cohen's PREDICT. :meth:`certify`: Cohen's CERTIFY.
    - :meth:`attack_logits`: the log of the *soft* smoothed classifier estimated from
      ``attack_samples`` noisy copies - differentiable, so keras_secure attacks given this layer
      attack the smoothed classifier itself (SmoothAdv, Salman et al. 2019); combine with the
      attacks' ``eot_samples`` for Expectation over Transformation.

    Limitations: the certificate is for L2 perturbations only (an L-inf ball of radius eps
    contains L2 perturbations of size ``eps * sqrt(d)``), holds with probability ``1 - alpha``
    over the sampling, and costs thousands of forward passes per input; clean accuracy drops as
    ``sigma`` grows. Without noise training the base classifier is not accurate under noise and
    most inputs abstain.

    Args:
        base_classifier: a Keras model or layer mapping inputs to class scores, read through the
            classifier contract (logits, softmax, one sigmoid unit or one logit), or a
            :class:`keras_secure.Classifier` of one that declares ``from_logits``.
        sigma: noise standard deviation in input units, > 0. Required.
        num_samples: noisy copies per example at inference, >= 1. Defaults to 100.
        chunk_size: most noisy copies of one example per forward pass, >= 1. Defaults to 100.
        vote: ``"hard"`` (vote frequencies) or ``"soft"`` (mean softmax). Defaults to
            ``"hard"``.
        attack_samples: noisy copies per call of :meth:`attack_logits`, >= 1. Defaults to 8.
        seed: seed of the noise. Defaults to None.
        base_from_logits: ``from_logits`` of the base classifier, for a base whose structure
            does not show its output kind (see :class:`keras_secure.Classifier`); set from a
            Classifier passed as ``base_classifier``. Defaults to None.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: a batch for the base classifier.
        training: True for noise training, otherwise Monte Carlo prediction.

    Returns:
        Training: logits ``(batch, classes)``; inference: probabilities ``(batch, classes)``.

    Raises:
        ValueError / TypeError: for ``sigma <= 0``, counts < 1, an unknown ``vote``, or a
            base classifier that is not callable.

    Example:
        >>> smoothed = RandomizedSmoothing(base, sigma=0.25, num_samples=1000, seed=0)
        >>> predictions, radii = smoothed.certify(x, n0=100, n=10_000, alpha=0.001)
        >>> certified_accuracy(radii, predictions, y, [0.0, 0.25, 0.5])

    References:
        Cohen, Rosenfeld & Kolter (2019), "Certified Adversarial Robustness via Randomized
        Smoothing", ICML. Salman et al. (2019), "Provably Robust Deep Learning via
        Adversarially Trained Smoothed Classifiers", NeurIPS.
    """

    #: read by the classifier contract: the inference output is class probabilities
    output_kind = "probabilities"
    #: the layer draws noise at inference (attacks need Expectation over Transformation)
    randomized = True

    def __init__(self, base_classifier, sigma: float, num_samples: int = 100,
                 chunk_size: int = 100, vote: str = "hard", attack_samples: int = 8,
                 seed: int | None = None, base_from_logits: bool | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(base_classifier, Classifier):  # a declared output kind
            declared, base_classifier = base_classifier, base_classifier.model
        else:
            declared = None
        if not isinstance(base_classifier, keras.layers.Layer):
            raise TypeError("`base_classifier` must be a Keras model or layer (or a "
                            "keras_secure.Classifier of one). "
                            f"Received: base_classifier={base_classifier!r}")
        self.base_classifier = base_classifier
        # The base classifier's outputs (logits, softmax, one sigmoid unit...) are read
        # through the classifier contract, never by hand.
        self.base_from_logits = base_from_logits if declared is None else declared.from_logits
        if self.base_from_logits is not None and not isinstance(self.base_from_logits, bool):
            raise TypeError("`base_from_logits` must be True, False or None. "
                            f"Received: base_from_logits={base_from_logits!r}")
        self._base = as_classifier(base_classifier, self.base_from_logits)
        self._width = None
        self.sigma = check_number("sigma", sigma, low=0.0, low_inclusive=False)
        self.num_samples = check_number("num_samples", num_samples, low=1, integer=True)
        self.chunk_size = check_number("chunk_size", chunk_size, low=1, integer=True)
        self.vote = check_choice("vote", vote, ("hard", "soft"))
        self.attack_samples = check_number("attack_samples", attack_samples, low=1,
                                           integer=True)
        self.seed = check_number("seed", seed, integer=True, allow_none=True)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._counts_fn = None

    # -- Keras plumbing -----------------------------------------------------------------------
    def build(self, input_shape):
        if isinstance(self.base_classifier, keras.layers.Layer) and not self.base_classifier.built:
            self.base_classifier.build(input_shape)

    @property
    def num_classes(self) -> int:
        """Number of classes of the base classifier (2 for a single-output binary one); for a
        base whose output width its structure does not show (a subclassed model), known once
        the layer has been called."""
        if self._width is None:
            try:
                self._width = self._base.num_classes
            except RuntimeError:
                shape = getattr(self, "_build_shapes_dict", None) or {}
                input_shape = next(iter(shape.values()), None)
                if input_shape is None:
                    raise RuntimeError("The number of classes of this RandomizedSmoothing's "
                                       "base classifier is known once the layer has been "
                                       "called on a batch.") from None
                probe = tf.zeros((1, *input_shape[1:]))
                self._width = max(2, int(self._base.outputs(probe).shape[-1]))
        return self._width

    def _classes_of(self, x):
        """Number of classes, in a graph: from the contract, else from the base's output on
        one example (its static width)."""
        if self._width is None:
            try:
                self._width = self._base.num_classes
            except RuntimeError:
                self._width = max(2, int(self._base.outputs(x[:1]).shape[-1]))
        return self._width

    def compute_output_shape(self, input_shape):
        try:
            columns = self._base.num_classes
        except RuntimeError:
            columns = self.base_classifier.compute_output_shape(input_shape)[-1]
        return (input_shape[0], max(2, int(columns)))

    def adaptive_note(self) -> str:
        """How keras_secure's attacks differentiate this layer (shown in reports)."""
        return (f"EOT: the soft smoothed classifier, mean softmax over {self.attack_samples} "
                "noisy copies per forward pass (SmoothAdv), instead of the hard votes")

    def get_config(self):
        return {**super().get_config(),
                "base_classifier": keras.saving.serialize_keras_object(self.base_classifier),
                "sigma": self.sigma, "num_samples": self.num_samples,
                "chunk_size": self.chunk_size, "vote": self.vote,
                "attack_samples": self.attack_samples, "seed": self.seed,
                "base_from_logits": self.base_from_logits}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base = keras.saving.deserialize_keras_object(config.pop("base_classifier"),
                                                     custom_objects=custom_objects)
        return cls(base, **config)

    # -- sampling -----------------------------------------------------------------------------
    def _noisy(self, x):
        return x + self.sigma * tf.cast(standard_normal(tf.shape(x), self.seed_generator),
                                        x.dtype)

    def _sample(self, x, num, chunk, soft):
        """Sum over ``num`` noisy copies per example of one-hot votes (or softmax), (n, K).

        An explicit ``tf.while_loop`` over chunks of at most ``chunk`` copies per example
        (Keras does not autograph-convert ``Layer.call``), so memory stays bounded. The noise
        of the next chunk is drawn in the same iteration as the current chunk's forward pass,
        with no data dependency between them, so TensorFlow can run the two concurrently; every
        chunk's noise is a fresh, independent draw (:func:`standard_normal`).
        """
        n = tf.shape(x)[0]
        k = self._classes_of(x)
        num = tf.convert_to_tensor(num, tf.int32)
        chunk = tf.convert_to_tensor(chunk, tf.int32)
        features = tf.shape(x)[1:]

        def draw(m):
            return standard_normal(tf.concat([[n, m], features], 0), self.seed_generator)

        def body(start, total, e):
            m = tf.shape(e)[1]
            following = draw(tf.minimum(chunk, num - start - m))  # overlaps the forward pass
            # x + sigma e, broadcast over the m copies (x is not repeated in memory)
            noisy = tf.expand_dims(x, 1) + self.sigma * tf.cast(e, x.dtype)
            noisy = tf.reshape(noisy, tf.concat([[n * m], features], 0))
            if soft:
                votes = tf.nn.softmax(self._base.logits(noisy))
            else:
                labels = self._base.labels_from_outputs(self._base.outputs(noisy))
                votes = tf.one_hot(labels, k, dtype=tf.float32)
            total = total + tf.reduce_sum(tf.reshape(votes, [n, m, k]), axis=1)
            return start + m, total, following

        first = draw(tf.minimum(chunk, num))
        _, total, _ = tf.while_loop(
            lambda start, total, e: start < num, body,
            [tf.constant(0), tf.zeros([n, k], tf.float32), first],
            shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, k]),
                              tf.TensorShape([None, None, *x.shape[1:]])])
        return total

    def call(self, inputs, training=None):
        if training:
            return self.base_classifier(self._noisy(inputs), training=True)
        if in_adaptive_path():  # keras_secure is attacking the model: the soft estimate
            return self._soft_estimate(inputs)
        total = self._sample(inputs, self.num_samples, self.chunk_size, self.vote == "soft")
        return total / float(self.num_samples)

    def _soft_estimate(self, x):
        n = tf.shape(x)[0]
        copies = self._noisy(tf.repeat(x, self.attack_samples, axis=0))
        probs = tf.nn.softmax(self._base.logits(copies))
        return tf.reduce_mean(tf.reshape(probs, [n, self.attack_samples, -1]), axis=1)

    def attack_logits(self, x):
        """Log-probabilities of the soft smoothed classifier from ``attack_samples`` noisy
        copies: a differentiable surrogate of ``g`` that attacks use (SmoothAdv), computed in
        log space (log-mean-exp of the base's log-softmax) so that it keeps its gradient where
        the mean softmax rounds to 0 or 1. The classifier contract attacks a model that ends in
        this layer through it; elsewhere in a model the layer's adaptive output is the soft
        estimate itself."""
        n = tf.shape(x)[0]
        copies = self._noisy(tf.repeat(x, self.attack_samples, axis=0))
        logp = tf.nn.log_softmax(self._base.logits(copies))
        logp = tf.reshape(logp, [n, self.attack_samples, -1])
        return tf.reduce_logsumexp(logp, axis=1) - tf.math.log(float(self.attack_samples))

    def sample_counts(self, x, num: int, batch_size: int = 1000, verbose=0) -> np.ndarray:
        """Class vote counts of ``num`` noisy copies per example, shape ``(n, classes)``.

        Votes are the base classifier's predicted labels, read through the classifier contract
        (arg-max, or Keras's thresholding for one sigmoid or logit unit).

        Args:
            x: inputs ``(n, ...)``, finite.
            num: noisy copies per example, >= 1.
            batch_size: most noisy inputs per forward pass of the base classifier, >= 1.
                Defaults to 1000.
            verbose: 0 silent, 1 a ``keras.utils.Progbar`` over the examples. Defaults to 0.

        Returns:
            int64 counts; each row sums to ``num``.

        Raises:
            ValueError / TypeError: for ``num`` or ``batch_size`` < 1, or ``x`` that is not a
                finite batch.
        """
        num = check_number("num", num, low=1, integer=True)
        batch_size = check_number("batch_size", batch_size, low=1, integer=True)
        x = tf.convert_to_tensor(check_inputs(x).astype(np.float32))
        if self._counts_fn is None:
            # a partial, not a lambda: TensorFlow counts retracing per code object
            self._counts_fn = tf.function(functools.partial(self._sample, soft=False),
                                          reduce_retracing=True)
        per_pass = min(num, batch_size)
        group = max(1, batch_size // per_pass)
        n = int(x.shape[0])
        bar = keras.utils.Progbar(n, verbose=verbose, unit_name="example") if verbose else None
        out = []
        for i in range(0, n, group):
            out.append(self._counts_fn(x[i:i + group], tf.constant(num), tf.constant(per_pass)))
            if bar is not None:  # the bar waits for each group; otherwise one wait at the end
                out[-1] = out[-1].numpy()
                bar.update(min(n, i + group))
        return np.rint(np.concatenate([np.asarray(c) for c in out])).astype(np.int64)

    def predict_with_abstain(self, x, n: int = 100, alpha: float = 0.001,
                             batch_size: int = 1000, verbose=0) -> np.ndarray:
        """Cohen et al.'s PREDICT: the top class if a two-sided binomial test says it beats the
        runner-up at level ``alpha``, else :data:`ABSTAIN`.

        Args:
            x: inputs ``(n_examples, ...)``.
            n: noisy copies per example, >= 1. Defaults to 100.
            alpha: test level in (0, 1); the probability of returning a class other than
                ``g(x)`` is at most ``alpha``. Defaults to 0.001.
            batch_size: most noisy inputs per forward pass. Defaults to 1000.
            verbose: 0 silent, 1 a progress bar. Defaults to 0.

        Returns:
            int64 predictions, :data:`ABSTAIN` (-1) where the test is not significant.

        Raises:
            ValueError / TypeError: for ``n < 1`` or ``alpha`` outside (0, 1).

        Example:
            >>> smoothed.predict_with_abstain(x_test, n=1000, alpha=0.001)
        """
        n = check_number("n", n, low=1, integer=True)
        alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False,
                             high_inclusive=False)
        counts = self.sample_counts(x, n, batch_size, verbose=verbose)
        order = np.argsort(-counts, axis=1, kind="stable")
        top, runner_up = order[:, 0], order[:, 1]
        rows = np.arange(len(counts))
        n_a, n_b = counts[rows, top], counts[rows, runner_up]
        p_values = np.array([stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b else 1.0
                             for a, b in zip(n_a, n_b)])
        return np.where(p_values <= alpha, top, ABSTAIN).astype(np.int64)

    def certify(self, x, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, verbose=0) -> tuple[np.ndarray, np.ndarray]:
        """Cohen et al.'s CERTIFY: the smoothed prediction and a certified L2 radius.

        ``n0`` noisy copies select the top class ``cA``; ``n`` fresh copies count its votes
        ``nA``; ``pA_lower`` is the one-sided ``(1 - alpha)`` Clopper-Pearson lower confidence
        bound on ``P(f(x + e) = cA)``. If ``pA_lower < 1/2`` the result is an abstention (radius
        0), otherwise the prediction ``cA`` is certified within L2 radius
        ``sigma * Phi^-1(pA_lower)`` with probability at least ``1 - alpha``.

        Args:
            x: inputs ``(n_examples, ...)``.
            n0: selection samples per example, >= 1. Defaults to 100.
            n: estimation samples per example, >= 1. Defaults to 100,000.
            alpha: failure probability in (0, 1). Defaults to 0.001.
            batch_size: most noisy inputs per forward pass. Defaults to 1000.
            verbose: 0 silent, 1 a progress bar for the selection and for the estimation
                samples (the default ``n`` takes minutes per thousand examples on a CPU).
                Defaults to 0.

        Returns:
            ``(predictions, radii)``: int64 classes with :data:`ABSTAIN` (-1) marking
            abstentions, and float64 L2 radii (0 where abstaining).

        Raises:
            ValueError / TypeError: for ``n0``/``n`` < 1, ``alpha`` outside (0, 1), or ``x``
                that is not a finite batch (NaN or inf).

        Example:
            >>> predictions, radii = smoothed.certify(x_test, n0=100, n=10_000, alpha=0.001)
        """
        n0 = check_number("n0", n0, low=1, integer=True)
        n = check_number("n", n, low=1, integer=True)
        alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False,
                             high_inclusive=False)
        selection = self.sample_counts(x, n0, batch_size, verbose=verbose).argmax(axis=1)
        counts = self.sample_counts(x, n, batch_size, verbose=verbose)
        n_a = counts[np.arange(len(counts)), selection]
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        certified = p_lower >= 0.5
        with np.errstate(divide="ignore"):
            radii = np.where(certified, self.sigma * stats.norm.ppf(p_lower), 0.0)
        return np.where(certified, selection, ABSTAIN).astype(np.int64), radii



def clopper_pearson_lower(successes, trials: int, alpha: float) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound of a binomial proportion:
    ``Beta.ppf(alpha, k, n - k + 1)``, and 0 for ``k = 0``.

    Args:
        successes: success counts ``k`` (array-like of ints in 0..trials).
        trials: number of trials ``n`` >= 1.
        alpha: in (0, 1).

    Returns:
        float64 lower bounds, same shape as ``successes``.

    Example:
        >>> clopper_pearson_lower([100], 100, 0.001)   # = 0.001 ** (1 / 100)
    """
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, bound, 0.0)


def certified_accuracy(radii, predictions, labels, radii_grid) -> np.ndarray:
    """Certified accuracy at each radius: the fraction of examples whose smoothed prediction is
    correct (not an abstention) and certified with radius at least ``r``.

    Args:
        radii: certified radii from :meth:`RandomizedSmoothing.certify`.
        predictions: predictions from the same call (:data:`ABSTAIN` = -1 never counts).
        labels: true labels.
        radii_grid: radii at which to evaluate.

    Returns:
        float64 array of the same length as ``radii_grid``.

    Raises:
        ValueError: if the three arrays differ in length.

    Example:
        >>> certified_accuracy(radii, predictions, y_test, [0.0, 0.25, 0.5, 0.75, 1.0])
    """
    radii, predictions, labels = (np.asarray(a) for a in (radii, predictions, labels))
    if not len(radii) == len(predictions) == len(labels):
        raise ValueError("`radii`, `predictions` and `labels` must have the same length. "
                         f"Received: {len(radii)}, {len(predictions)}, {len(labels)}")
    correct = (predictions == labels) & (predictions != ABSTAIN)
    return np.array([float(np.mean(correct & (radii >= r))) for r in np.asarray(radii_grid)])
