"""Input-denoising defence layers: feature squeezing, median and Gaussian smoothing, JPEG, and a
learned (DnCNN-style) denoiser.

All layers are active at inference as well as in training (they are defences, not
augmentations), run in-graph on batches, and serialize with ``get_config`` / ``.keras``.
Non-differentiable transforms choose the gradient that attacks see through ``gradient=``:
``"bpda"`` passes the incoming gradient straight through (the Backward Pass Differentiable
Approximation of Athalye et al. 2018, which is what an adaptive attacker uses), ``"exact"``
passes the transform's true derivative (zero almost everywhere for quantisers), which masks
gradients and makes gradient attacks overestimate robustness.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_secure.classifier import as_classifier, in_adaptive_path
from keras_secure.validation import check_bool, check_choice, check_number, check_value_range

GRADIENTS = ("bpda", "exact")


def _straight_through(forward, x):
    """``forward(x)`` with the identity as its gradient (BPDA)."""

    @tf.custom_gradient
    def op(inputs):
        def grad(upstream):
            return upstream

        return forward(inputs), grad

    return op(x)


def _zero_gradient(forward, x):
    """``forward(x)`` with the true (almost-everywhere zero) gradient of a piecewise-constant
    map."""

    @tf.custom_gradient
    def op(inputs):
        def grad(upstream):
            return tf.zeros_like(upstream)

        return forward(inputs), grad

    return op(x)


def _check_images(layer, input_shape, channels=None):
    if len(input_shape) != 4:
        raise ValueError(
            f"`{type(layer).__name__}` needs images of shape (batch, height, width, channels). "
            f"Received: input_shape={tuple(input_shape)}"
        )
    if channels is not None and input_shape[-1] not in channels:
        raise ValueError(
            f"`{type(layer).__name__}` needs {' or '.join(map(str, channels))} channels. "
            f"Received: input_shape={tuple(input_shape)}"
        )


class _QuantizerMixin:
    """The gradient of a piecewise-constant transform: ``gradient="bpda"`` or ``"exact"``, and
    BPDA whenever keras_secure attacks the model (the classifier contract's adaptive path), so
    that a model built with ``gradient="exact"`` cannot mask gradients from the evaluation."""

    def _gradient_wrapper(self):
        if self.gradient == "bpda" or in_adaptive_path():
            return _straight_through
        return _zero_gradient

    def adaptive_note(self) -> str:
        """How keras_secure's attacks differentiate this layer (shown in reports)."""
        if self.gradient == "bpda":
            return "BPDA (straight-through gradient)"
        return ("BPDA (straight-through gradient, replacing gradient='exact', whose zero "
                "gradient would mask the attack)")


class _RangeMixin:
    """Optional in-graph check that inputs lie in ``value_range``."""

    def _checked(self, x):
        if not self.check_range:
            return x
        low, high = self.value_range
        tol = 1e-6 * (high - low)
        message = (f"{self.name}: inputs must lie in value_range={self.value_range} "
                   "(check_range=True)")
        with tf.control_dependencies([
            tf.debugging.assert_greater_equal(x, tf.cast(low - tol, x.dtype), message=message),
            tf.debugging.assert_less_equal(x, tf.cast(high + tol, x.dtype), message=message),
        ]):
            return tf.identity(x)


@keras.saving.register_keras_serializable(package="keras_secure")
class BitDepthReduction(_QuantizerMixin, _RangeMixin, keras.layers.Layer):
    """Feature squeezing by colour-bit-depth reduction (Xu, Evans & Qi 2018).

    Maps every value to the nearest of ``2 ** bits`` evenly spaced levels of ``value_range``:
    ``round((x - low) / (high - low) * (2^bits - 1)) / (2^bits - 1) * (high - low) + low``.
    Inputs outside ``value_range`` are clipped first. Works on inputs of any shape.

    Limitations: quantisation only removes perturbations smaller than half a level. An
    adaptive attacker uses the straight-through gradient (BPDA, Athalye, Carlini & Wagner 2018)
    and simply crosses level boundaries; at eps larger than half a level the defence adds little
    robustness. Its real use is as a *detector* (Xu et al. compare predictions before and after
    squeezing), which adaptive attacks also evade (He et al. 2017).

    Args:
        bits: bits per value, 1 to 16. Required.
        value_range: ``(low, high)`` of valid inputs, e.g. ``(0, 1)`` or ``(0, 255)``: the
            layer quantises within it and clips to it. Required (no default: a range for the
            wrong data would silently flatten every input).
        gradient: ``"bpda"`` (identity gradient, what an adaptive attack needs) or ``"exact"``
            (the true gradient, zero almost everywhere: masks gradients). Defaults to ``"bpda"``.
        check_range: assert in-graph that inputs lie in ``value_range`` (raises
            ``tf.errors.InvalidArgumentError``). Defaults to False (inputs are clipped).
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
        inputs: a float tensor of any shape.
        training: unused; the layer is active in training and inference.

    Returns:
        The quantised tensor, same shape and dtype.

    Raises:
        ValueError / TypeError: for ``bits`` outside 1..16, a bad ``value_range`` or
            ``gradient``.

    Example:
        >>> model = keras.Sequential([keras.Input((8, 8, 1)),
        ...     BitDepthReduction(bits=2, value_range=(0, 1)), classifier])

    References:
        Xu, Evans & Qi (2018), "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
        Networks", NDSS. Athalye, Carlini & Wagner (2018), "Obfuscated Gradients Give a False
        Sense of Security", ICML.
    """

    def __init__(self, bits: int, value_range=None, gradient: str = "bpda",
                 check_range: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.bits = check_number("bits", bits, low=1, high=16, integer=True)
        self.value_range = check_value_range(value_range)
        if self.value_range is None:
            raise ValueError(f"`value_range` is required by BitDepthReduction: the range of valid "
                             "inputs, e.g. (0, 1) for scaled images or (0, 255) for 8-bit "
                             "ones. Received: value_range=None")
        self.gradient = check_choice("gradient", gradient, GRADIENTS)
        self.check_range = check_bool("check_range", check_range)

    def _quantise(self, x):
        low, high = self.value_range
        levels = float(2 ** self.bits - 1)
        t = tf.clip_by_value((x - low) / (high - low), 0.0, 1.0)
        return tf.round(t * levels) / levels * (high - low) + low

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)
        x = x if x.dtype.is_floating else tf.cast(x, self.compute_dtype)  # e.g. uint8 images
        return self._gradient_wrapper()(self._quantise, self._checked(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "value_range": self.value_range,
                "gradient": self.gradient, "check_range": self.check_range}


@keras.saving.register_keras_serializable(package="keras_secure")
class MedianSmoothing(keras.layers.Layer):
    """Spatial median filter over ``window_size x window_size`` windows, per channel
    (Xu, Evans & Qi 2018).

    Borders are padded by mirroring the edge (half-sample symmetric, as
    ``scipy.ndimage.median_filter(mode="reflect")``), so the output has the input's shape.

    Limitations: the median is piecewise linear in its input, so gradient attacks see through
    it (``gradient="exact"``, the default, passes the gradient to the selected pixels), and
    BPDA breaks it as well; against adaptive attacks median smoothing gives little robustness
    and costs clean accuracy on small images (Athalye et al. 2018; Carlini & Wagner 2017,
    "MagNet and efficient defenses ... are not robust").

    Args:
        window_size: odd window side >= 1 (1 is the identity). Defaults to 3.
        gradient: ``"exact"`` (gradient of the selection) or ``"bpda"`` (identity). Defaults to
            ``"exact"``.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: images ``(batch, height, width, channels)``; height and width must exceed
            ``window_size // 2``.
        training: unused; active in training and inference.

    Returns:
        The filtered images, same shape.

    Raises:
        ValueError / TypeError: for an even or non-positive ``window_size``, a bad
            ``gradient``, or inputs that are not images (at build).

    Example:
        >>> smoothed = MedianSmoothing(window_size=3)(images)

    References:
        Xu, Evans & Qi (2018), "Feature Squeezing", NDSS.
    """

    def __init__(self, window_size: int = 3, gradient: str = "exact", **kwargs):
        super().__init__(**kwargs)
        self.window_size = check_number("window_size", window_size, low=1, integer=True)
        if self.window_size % 2 == 0:
            raise ValueError(f"`window_size` must be an odd integer >= 1. "
                             f"Received: window_size={window_size!r}")
        self.gradient = check_choice("gradient", gradient, GRADIENTS)

    def build(self, input_shape):
        _check_images(self, input_shape)
        pad = self.window_size // 2
        for size in input_shape[1:3]:
            if size is not None and size < pad:
                raise ValueError(f"`window_size`={self.window_size} is too large for images of "
                                 f"shape {tuple(input_shape)}")

    def _median(self, x):
        k, pad = self.window_size, self.window_size // 2
        if k == 1:
            return x
        shape = tf.shape(x)
        padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
        patches = tf.image.extract_patches(padded, sizes=[1, k, k, 1], strides=[1, 1, 1, 1],
                                           rates=[1, 1, 1, 1], padding="VALID")
        patches = tf.reshape(patches, [shape[0], shape[1], shape[2], k * k, shape[3]])
        patches = tf.transpose(patches, [0, 1, 2, 4, 3])
        return tf.math.top_k(patches, k=k * k // 2 + 1).values[..., -1]

    def call(self, inputs, training=None):
        if self.gradient == "bpda":
            return _straight_through(self._median, inputs)
        return self._median(inputs)

    def adaptive_note(self) -> str:
        """How keras_secure's attacks differentiate this layer (shown in reports)."""
        if self.gradient == "bpda":
            return "BPDA (straight-through gradient)"
        return "exact gradient of the median (piecewise linear: it does not mask gradients)"

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "window_size": self.window_size,
                "gradient": self.gradient}


@keras.saving.register_keras_serializable(package="keras_secure")
class GaussianSmoothing(keras.layers.Layer):
    """Spatial Gaussian blur with standard deviation ``sigma`` pixels, per channel.

    A separable depthwise convolution with a normalised Gaussian kernel of radius
    ``int(truncate * sigma + 0.5)`` and half-sample-symmetric borders; it equals
    ``scipy.ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="reflect",
    truncate=truncate)``. Low-pass filtering removes the high-frequency part of a perturbation.

    Limitations: the blur is linear and fully differentiable, so white-box attacks simply
    optimise through it (no gradient masking to undo): it buys robustness only against
    perturbations the blur suppresses, and costs clean accuracy as ``sigma`` grows. Adaptive
    PGD through the layer is the right evaluation (Athalye et al. 2018; Tramer et al. 2020,
    "On Adaptive Attacks to Adversarial Example Defenses").

    Args:
        sigma: standard deviation in pixels, > 0. Required.
        truncate: kernel radius in standard deviations, > 0. Defaults to 4.0 (scipy's).
        **kwargs: base layer arguments.

    Call arguments:
        inputs: images ``(batch, height, width, channels)``.
        training: unused; active in training and inference.

    Returns:
        The blurred images, same shape.

    Raises:
        ValueError / TypeError: for ``sigma <= 0``, ``truncate <= 0`` or non-image inputs.

    Example:
        >>> blurred = GaussianSmoothing(sigma=0.5)(images)

    References:
        Xu, Evans & Qi (2018) (spatial smoothing as a squeezer); Athalye, Carlini & Wagner
        (2018) on evaluating such pre-processors.
    """

    def __init__(self, sigma: float, truncate: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        self.sigma = check_number("sigma", sigma, low=0.0, low_inclusive=False)
        self.truncate = check_number("truncate", truncate, low=0.0, low_inclusive=False)
        self.radius = int(self.truncate * self.sigma + 0.5)
        offsets = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (offsets / self.sigma) ** 2)
        self._kernel = (kernel / kernel.sum()).astype(np.float32)

    def build(self, input_shape):
        _check_images(self, input_shape)
        for size in input_shape[1:3]:
            if size is not None and size < self.radius:
                raise ValueError(f"`sigma`={self.sigma} gives a kernel radius {self.radius} "
                                 f"larger than the images ({tuple(input_shape)}); lower "
                                 "`truncate` or `sigma`")

    def call(self, inputs, training=None):
        r = self.radius
        if r == 0:
            return inputs
        channels = tf.shape(inputs)[-1]
        k = tf.constant(self._kernel, dtype=inputs.dtype)
        x = tf.pad(inputs, [[0, 0], [r, r], [r, r], [0, 0]], mode="SYMMETRIC")
        rows = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, channels, 1])
        cols = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
        x = tf.nn.depthwise_conv2d(x, rows, strides=[1, 1, 1, 1], padding="VALID")
        return tf.nn.depthwise_conv2d(x, cols, strides=[1, 1, 1, 1], padding="VALID")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma, "truncate": self.truncate}


@keras.saving.register_keras_serializable(package="keras_secure")
class JpegCompression(_QuantizerMixin, _RangeMixin, keras.layers.Layer):
    """JPEG re-encoding at ``quality`` (Dziugaite et al. 2016; Guo et al. 2018).

    Each image is scaled from ``value_range`` to 8-bit (rounded to the nearest level),
    JPEG-encoded and decoded with TensorFlow's libjpeg codec (``tf.io.encode_jpeg``: the IJG
    quantisation tables scaled by ``quality``, 4:2:0 chroma subsampling for RGB;
    ``tf.io.decode_jpeg`` with the accurate integer IDCT; run per image with ``tf.map_fn``
    inside the graph) and scaled back. The result equals Pillow's JPEG at the same quality
    (tested). Needs 1 (grey) or 3 (RGB) channels.

    Limitations: JPEG is a non-differentiable quantisation of DCT coefficients; with the true
    gradient unavailable, naive gradient attacks stall, but BPDA (identity gradient, the
    default here) breaks it (Athalye, Carlini & Wagner 2018), and JPEG-robust perturbations are
    easy to optimise (Shin & Song 2017). It also costs clean accuracy at low quality. The
    codec runs on the CPU.

    Args:
        quality: JPEG quality, integer 1 to 100. Defaults to 75.
        value_range: ``(low, high)`` of valid inputs, e.g. ``(0, 1)`` or ``(0, 255)``: the
            layer quantises within it and clips to it. Required (no default: a range for the
            wrong data would silently flatten every input).
        gradient: ``"bpda"`` (identity) or ``"exact"`` (zero: masks gradients). Defaults to
            ``"bpda"``.
        check_range: assert in-graph that inputs lie in ``value_range``. Defaults to False
            (inputs are clipped).
        **kwargs: base layer arguments.

    Call arguments:
        inputs: images ``(batch, height, width, 1 or 3)``.
        training: unused; active in training and inference.

    Returns:
        The re-encoded images, same shape, float.

    Raises:
        ValueError / TypeError: for ``quality`` outside 1..100, a bad ``value_range``, or
            inputs that are not 1- or 3-channel images.

    Example:
        >>> compressed = JpegCompression(quality=50, value_range=(0, 1))(images)

    References:
        Dziugaite, Ghahramani & Roy (2016), "A study of the effect of JPG compression on
        adversarial images"; Guo, Rana, Cisse & van der Maaten (2018), "Countering Adversarial
        Images using Input Transformations", ICLR.
    """

    def __init__(self, quality: int = 75, value_range=None, gradient: str = "bpda",
                 check_range: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.quality = check_number("quality", quality, low=1, high=100, integer=True)
        self.value_range = check_value_range(value_range)
        if self.value_range is None:
            raise ValueError(f"`value_range` is required by JpegCompression: the range of valid "
                             "inputs, e.g. (0, 1) for scaled images or (0, 255) for 8-bit "
                             "ones. Received: value_range=None")
        self.gradient = check_choice("gradient", gradient, GRADIENTS)
        self.check_range = check_bool("check_range", check_range)

    def build(self, input_shape):
        _check_images(self, input_shape, channels=(1, 3))

    def _jpeg(self, x):
        low, high = self.value_range
        unit = tf.clip_by_value((tf.cast(x, tf.float32) - low) / (high - low), 0.0, 1.0)
        # Round to the nearest 8-bit level (tf.image.convert_image_dtype truncates x * 255.5)
        # and decode with the accurate integer IDCT: TensorFlow's default "INTEGER_FAST" adds
        # its own error, enough that quality 95 came out noisier than quality 90.
        pixels = tf.cast(tf.round(unit * 255.0), tf.uint8)
        channels = int(x.shape[-1])

        def codec(image):
            encoded = tf.io.encode_jpeg(image, quality=self.quality)
            return tf.io.decode_jpeg(encoded, channels=channels, dct_method="INTEGER_ACCURATE")

        out = tf.map_fn(codec, pixels, fn_output_signature=tf.uint8)
        out = tf.cast(tf.reshape(out, tf.shape(x)), tf.float32) / 255.0
        return tf.cast(out * (high - low) + low, x.dtype)

    def call(self, inputs, training=None):
        return self._gradient_wrapper()(self._jpeg, self._checked(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "quality": self.quality,
                "value_range": self.value_range, "gradient": self.gradient,
                "check_range": self.check_range}


@keras.saving.register_keras_serializable(package="keras_secure")
class LearnedDenoiser(keras.layers.Layer):
    """A trainable residual convolutional denoiser (DnCNN-style) for input purification.

    ``depth`` 3x3 convolutions (``filters`` wide, ReLU between them) predict the noise in the
    input; the layer outputs ``x - predicted_noise``, clipped to ``value_range`` if given
    (Zhang et al. 2017's residual learning). Train it with :func:`train_denoiser` on
    Gaussian-noisy and/or adversarial inputs (MagNet, Meng & Chen 2017; HGD, Liao et al. 2018),
    then place it in front of a frozen classifier with :func:`denoised_classifier` (denoised
    smoothing, Salman et al. 2020).

    Limitations: the denoiser is differentiable, so a white-box attacker attacks the composed
    model end to end and breaks it unless the classifier itself is robust (Carlini & Wagner
    2017 on MagNet; Athalye et al. 2018 on HGD). It helps most against transferred
    perturbations and as the denoiser of randomized smoothing.

    Args:
        filters: convolution width, >= 1. Defaults to 32.
        depth: number of convolutions, >= 2. Defaults to 5.
        value_range: ``(low, high)`` to clip the output to, or None. Defaults to None.
        **kwargs: base layer arguments.

    Call arguments:
        inputs: images ``(batch, height, width, channels)``.
        training: passed to the convolutions.

    Returns:
        The denoised images, same shape.

    Raises:
        ValueError / TypeError: for ``filters < 1``, ``depth < 2``, a bad ``value_range`` or
            non-image inputs.

    Example:
        >>> denoiser = LearnedDenoiser(filters=16, depth=4, value_range=(0, 1))
        >>> train_denoiser(denoiser, x_train, noise_sigma=0.2, epochs=5)
        >>> model = denoised_classifier(denoiser, classifier)

    References:
        Zhang, Zuo, Chen, Meng & Zhang (2017), "Beyond a Gaussian Denoiser: Residual Learning of
        Deep CNN for Image Denoising", IEEE TIP. Meng & Chen (2017), "MagNet", CCS. Liao et al.
        (2018), "Defense against Adversarial Attacks Using High-Level Representation Guided
        Denoiser", CVPR. Salman et al. (2020), "Denoised Smoothing", NeurIPS.
    """

    def __init__(self, filters: int = 32, depth: int = 5, value_range=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_number("filters", filters, low=1, integer=True)
        self.depth = check_number("depth", depth, low=2, integer=True)
        self.value_range = check_value_range(value_range)
        self._convs = []

    def build(self, input_shape):
        _check_images(self, input_shape)
        channels = input_shape[-1]
        self._convs = [
            keras.layers.Conv2D(self.filters, 3, padding="same", activation="relu",
                                name=f"conv_{i}")
            for i in range(self.depth - 1)
        ] + [keras.layers.Conv2D(channels, 3, padding="same", name=f"conv_{self.depth - 1}",
                                 kernel_initializer="zeros")]
        shape = tuple(input_shape)
        for conv in self._convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)

    def call(self, inputs, training=None):
        h = inputs
        for conv in self._convs:
            h = conv(h, training=training)
        out = inputs - h
        if self.value_range is not None:
            out = tf.clip_by_value(out, *self.value_range)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "depth": self.depth,
                "value_range": self.value_range}


def denoised_classifier(denoiser: keras.layers.Layer, classifier: keras.Model,
                        freeze: bool = True) -> keras.Model:
    """Put ``denoiser`` in front of ``classifier`` (frozen by default).

    Args:
        denoiser: a (trained) :class:`LearnedDenoiser` or any denoising layer.
        classifier: a built Keras model mapping images to logits.
        freeze: set ``classifier.trainable = False`` so that further training only updates the
            denoiser. Defaults to True.

    Returns:
        ``keras.Sequential([denoiser, classifier])`` on the classifier's input shape.

    Raises:
        TypeError: if ``classifier`` is not a built Keras model.

    Example:
        >>> model = denoised_classifier(denoiser, classifier)
        >>> model.predict(x_noisy)
    """
    if not isinstance(classifier, keras.Model) or not classifier.built:
        raise TypeError("`classifier` must be a built keras.Model. "
                        f"Received: classifier={classifier!r}")
    if freeze:
        classifier.trainable = False
    return keras.Sequential([keras.Input(classifier.input_shape[1:]), denoiser, classifier],
                            name="denoised_classifier")


def train_denoiser(denoiser: LearnedDenoiser, x, y=None, *, noise_sigma: float = 0.1,
                   attack=None, classifier: keras.Model | None = None, loss: str = "pixel",
                   epochs: int = 10, batch_size: int = 64, learning_rate: float = 1e-3,
                   seed: int | None = 0, verbose: int = 0):
    """Train a :class:`LearnedDenoiser` to map corrupted inputs back to clean ones.

    Training pairs are ``(x + N(0, noise_sigma^2), x)`` with fresh noise every batch (a
    ``keras.layers.GaussianNoise`` layer in front of the denoiser), plus - if ``attack`` is
    given - ``(attack(classifier, x, y), x)`` adversarial pairs generated once before training.
    ``loss="pixel"`` minimises the mean squared error to the clean image (MagNet / DnCNN);
    ``loss="logits"`` minimises the squared error between the frozen ``classifier``'s logits on
    the denoised and on the clean input (HGD's representation-guided loss); the classifier is
    frozen during this training only (its ``trainable`` flag is restored afterwards).

    Args:
        denoiser: the layer to train (built on first use).
        x: clean training images ``(n, h, w, c)``.
        y: labels, needed with ``attack``. Defaults to None.
        noise_sigma: std of the Gaussian corruption in input units, >= 0. Defaults to 0.1.
        attack: a keras_secure attack to add adversarial pairs, or None. Defaults to None.
        classifier: the model the attack targets and the ``logits`` loss uses. Defaults to None.
        loss: ``"pixel"`` or ``"logits"``. Defaults to ``"pixel"``.
        epochs: >= 1. Defaults to 10.
        batch_size: >= 1. Defaults to 64.
        learning_rate: Adam learning rate, > 0. Defaults to 1e-3.
        seed: seed of the noise and the shuffling. Defaults to 0.
        verbose: passed to ``fit``. Defaults to 0.

    Returns:
        The ``keras.callbacks.History`` of the training.

    Raises:
        ValueError / TypeError: for invalid arguments, an ``attack`` or ``loss="logits"``
            without ``classifier``, or an ``attack`` without ``y``.

    Example:
        >>> denoiser = LearnedDenoiser(value_range=(0, 1))
        >>> train_denoiser(denoiser, x_train, noise_sigma=0.25, epochs=5)

    References:
        Meng & Chen (2017), "MagNet"; Liao et al. (2018), "High-Level Representation Guided
        Denoiser".
    """
    check_number("noise_sigma", noise_sigma, low=0.0)
    check_choice("loss", loss, ("pixel", "logits"))
    check_number("epochs", epochs, low=1, integer=True)
    check_number("batch_size", batch_size, low=1, integer=True)
    check_number("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    if (attack is not None or loss == "logits") and classifier is None:
        raise ValueError("`classifier` is required with `attack` or loss='logits'. "
                         "Received: classifier=None")
    if attack is not None and y is None:
        raise ValueError("`y` is required to generate adversarial pairs with `attack`. "
                         "Received: y=None")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    x = np.asarray(x, dtype=np.float32)
    inputs, targets_x = [x], [x]
    noisy = [True]
    if attack is not None:
        inputs.append(np.asarray(attack(classifier, x, y), dtype=np.float32))
        targets_x.append(x)
        noisy.append(False)
    x_in = np.concatenate(inputs)
    x_target = np.concatenate(targets_x)
    # Only the clean copies get Gaussian noise; adversarial copies are denoised as they are.
    noise_mask = np.concatenate([np.full(len(a), float(flag), np.float32)
                                 for a, flag in zip(inputs, noisy)])
    image = keras.Input(x.shape[1:])
    mask = keras.Input(())
    noise = keras.layers.GaussianNoise(noise_sigma, seed=seed)(keras.ops.zeros_like(image))
    corrupted = image + noise * keras.ops.reshape(mask, (-1, 1, 1, 1))
    out = denoiser(corrupted)
    was_trainable = classifier.trainable if classifier is not None else None
    try:
        if loss == "logits":
            # frozen for this training only: the caller's classifier is left as it was
            classifier.trainable = False
            # logits through the classifier contract: a softmax or sigmoid classifier is
            # compared on the logits behind its activation, as HGD's loss is defined
            clf = as_classifier(classifier)
            columns = max(2, int(classifier.output_shape[-1]))
            out = keras.layers.Lambda(clf.logits, output_shape=(columns,))(out)
            x_target = np.concatenate([
                clf.logits(tf.constant(x_target[i:i + 256])).numpy()
                for i in range(0, len(x_target), 256)])
        trainer = keras.Model([image, mask], out)
        trainer.compile(keras.optimizers.Adam(learning_rate), "mse")
        # GaussianNoise is only active with training=True, which fit provides.
        return trainer.fit([x_in, noise_mask], x_target, epochs=epochs, batch_size=batch_size,
                           shuffle=True, verbose=verbose)
    finally:
        if classifier is not None:
            classifier.trainable = was_trainable


