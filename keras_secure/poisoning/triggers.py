"""Backdoor triggers (BadNets patch, blended pattern) and the backdoor dataset transform."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_secure.classifier import check_inputs
from keras_secure.poisoning._common import (MODES, check_class, check_data, check_fraction,
                                            check_seed, choose, eligible, next_labels)
from keras_secure.validation import check_choice, check_number, check_value_range

POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


def _image_shape(x, name: str = "x") -> tuple[int, int, int]:
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(f"Triggers are applied to images of shape (n, height, width, channels). "
                         f"Received: {name}.shape={shape}")
    return tuple(int(d) for d in shape[1:])


class Trigger:
    """A backdoor trigger: ``x' = x * (1 - M) + P * M`` with an image-sized mask ``M`` and
    pattern ``P`` built for the image shape ``(height, width, channels)``.

    Subclasses implement ``_build(image_shape) -> (M, P)`` (float32 arrays of the image shape)
    and raise ``ValueError`` naming the offending argument when the trigger cannot be placed
    on such images.
    """

    def __init__(self):
        self._built: dict = {}

    def _build(self, image_shape):  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, image_shape) -> None:
        """Raise ``ValueError`` (naming the argument) if the trigger does not fit images of
        ``image_shape = (height, width, channels)``.

        Example:
            >>> PatchTrigger(size=3).check((8, 8, 1))
        """
        self.arrays(image_shape)

    def arrays(self, image_shape) -> tuple[np.ndarray, np.ndarray]:
        """``(M, P)``: the trigger's mask and pattern for ``image_shape``, float32."""
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3:
            raise ValueError("Triggers are built for images of shape (height, width, channels)."
                             f" Received: image_shape={image_shape}")
        if image_shape not in self._built:
            self._built[image_shape] = self._build(image_shape)
        return self._built[image_shape]

    def apply_tensor(self, x) -> tf.Tensor:
        """The trigger applied to a batch tensor ``(n, height, width, channels)``, in ``x``'s
        dtype (integers rounded). Traceable (for training steps).

        Example:
            >>> x_triggered = trigger.apply_tensor(tf.constant(x))
        """
        x = tf.convert_to_tensor(x)
        mask, pattern = self.arrays(_image_shape(x))
        xf = tf.cast(x, tf.float32)
        out = xf * (1.0 - mask) + pattern * mask
        if x.dtype.is_integer:
            out = tf.round(out)
        return tf.cast(out, x.dtype)

    def apply(self, x) -> np.ndarray:
        """The trigger applied to every image of ``x`` ``(n, height, width, channels)``.

        Args:
            x: images (array or tensor), finite.

        Returns:
            NumPy array of the same shape and dtype.

        Raises:
            ValueError: if ``x`` is not a batch of images or the trigger does not fit them.

        Example:
            >>> x_triggered = PatchTrigger(size=2).apply(x_test)
        """
        arr = check_inputs(x, "x")
        _image_shape(arr)
        return self.apply_tensor(arr).numpy()

    __call__ = apply


def _pattern_array(pattern, name: str = "pattern") -> np.ndarray:
    try:
        arr = np.asarray(pattern, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a pattern name or an array of numbers. Received: "
                        f"{name}={pattern!r}") from None
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ValueError(f"`{name}` must be an array of shape (height, width) or (height, width,"
                         f" channels). Received: {name}.shape={arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite. Received: {name} with non-finite values")
    return arr


def _channels(arr: np.ndarray, channels: int, name: str) -> np.ndarray:
    """A (h, w) pattern for every channel, or a (h, w, c) one whose c matches the images."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], channels, axis=-1)
    if arr.shape[-1] != channels:
        raise ValueError(f"`{name}` has {arr.shape[-1]} channels but the images have {channels}."
                         f" Received: {name}.shape={arr.shape}, images of {channels} channels")
    return arr


class PatchTrigger(Trigger):
    """BadNets patch trigger: a small pattern pasted over the image at a fixed position.

    The pixels of the patch are replaced by the pattern (the rest of the image is untouched):
    ``x'[r:r+h, c:c+w, :] = pattern``.

    Args:
        size: side of the square patch, or ``(height, width)``, in pixels >= 1; None is 3 for a
            named pattern and the array's size for an array (a different size is an error).
            Defaults to None.
        position: ``"bottom_right"``, ``"bottom_left"``, ``"top_right"``, ``"top_left"``,
            ``"center"`` or the ``(row, column)`` of the patch's top-left pixel. Defaults to
            ``"bottom_right"``.
        pattern: ``"checkerboard"`` (high where ``(i + j)`` is even, low elsewhere; top-left
            pixel high), ``"solid"`` (all high), or an array ``(height, width)`` (every channel)
            or ``(height, width, channels)`` of pixel values in the images' units. Defaults to
            ``"checkerboard"``.
        value_range: ``(low, high)`` pixel values of the named patterns. Defaults to (0, 1).
        margin: pixels between a named corner position and the image border, >= 0. Defaults to
            0.

    Raises:
        ValueError: (at construction) a bad ``size``, ``position``, ``pattern`` or
            ``value_range``; (when applied) a patch larger than the image or reaching outside
            it (names ``size``/``pattern`` and ``position``), or a pattern whose channels do not
            match the images' (names ``pattern``).

    Example:
        >>> trigger = PatchTrigger(size=2, position="bottom_right")
        >>> x_triggered = trigger.apply(x)        # x[:, 6:8, 6:8, :] is now [[1, 0], [0, 1]]

    References:
        Gu, Dolan-Gavitt & Garg (2017), "BadNets: Identifying Vulnerabilities in the Machine
        Learning Model Supply Chain".
    """

    def __init__(self, size=None, position="bottom_right", pattern="checkerboard",
                 value_range=(0.0, 1.0), margin: int = 0):
        super().__init__()
        self.value_range = check_value_range(value_range)
        if self.value_range is None:
            raise ValueError("`value_range` must be a pair (low, high). Received: "
                             "value_range=None")
        self.margin = check_number("margin", margin, low=0, integer=True)
        if isinstance(pattern, str):
            check_choice("pattern", pattern, ("checkerboard", "solid"))
            size = 3 if size is None else size
            if isinstance(size, (tuple, list)):
                if len(size) != 2:
                    raise ValueError("`size` must be an int or a pair (height, width). "
                                     f"Received: size={size!r}")
                h, w = (check_number("size", s, low=1, integer=True) for s in size)
            else:
                h = w = check_number("size", size, low=1, integer=True)
            self.pattern = pattern
            self._array = None
        else:
            self._array = _pattern_array(pattern)
            h, w = self._array.shape[:2]
            if size is not None and tuple(np.broadcast_to(size, 2)) != (h, w):
                raise ValueError(f"`size` disagrees with the pattern array of shape "
                                 f"{self._array.shape}; pass size=None. Received: size={size!r}")
            self.pattern = "array"
        self.size = (int(h), int(w))
        if isinstance(position, str):
            check_choice("position", position, POSITIONS)
        else:
            try:
                row, col = position
            except (TypeError, ValueError):
                raise ValueError(f"`position` must be one of {POSITIONS} or a pair (row, column)."
                                 f" Received: position={position!r}") from None
            position = (check_number("position", row, low=0, integer=True),
                        check_number("position", col, low=0, integer=True))
        self.position = position

    def _origin(self, height, width):
        h, w = self.size
        m = self.margin
        if not isinstance(self.position, str):
            return self.position
        return {
            "bottom_right": (height - h - m, width - w - m),
            "bottom_left": (height - h - m, m),
            "top_right": (m, width - w - m),
            "top_left": (m, m),
            "center": ((height - h) // 2, (width - w) // 2),
        }[self.position]

    def _build(self, image_shape):
        height, width, channels = image_shape
        h, w = self.size
        what = "pattern" if self._array is not None else "size"
        if h > height or w > width:
            shown = self._array.shape if self._array is not None else self.size
            raise ValueError(f"The trigger ({h}x{w}) is larger than the images ({height}x{width})"
                             f". Received: {what}={shown}")
        row, col = self._origin(height, width)
        if row < 0 or col < 0 or row + h > height or col + w > width:
            raise ValueError(f"A {h}x{w} trigger at (row, column) = ({row}, {col}) reaches outside"
                             f" the {height}x{width} images. Received: position={self.position!r}"
                             f", margin={self.margin}")
        low, high = self.value_range
        if self._array is not None:
            patch = _channels(self._array, channels, "pattern")
        elif self.pattern == "solid":
            patch = np.full((h, w, channels), high, np.float32)
        else:
            board = (np.add.outer(np.arange(h), np.arange(w)) % 2 == 0)
            patch = np.repeat(np.where(board, high, low)[..., None], channels, -1)
        mask = np.zeros(image_shape, np.float32)
        pattern = np.zeros(image_shape, np.float32)
        mask[row:row + h, col:col + w, :] = 1.0
        pattern[row:row + h, col:col + w, :] = patch
        return mask, pattern

    def get_config(self) -> dict:
        return {"size": self.size, "position": self.position,
                "pattern": self.pattern if self._array is None else self._array.tolist(),
                "value_range": self.value_range, "margin": self.margin}

    def __repr__(self):
        return (f"PatchTrigger(size={self.size}, position={self.position!r}, "
                f"pattern={self.pattern!r})")


class BlendedTrigger(Trigger):
    """Blended trigger: an image-sized pattern alpha-blended into the whole image,
    ``x' = (1 - alpha) * x + alpha * pattern``.

    Args:
        pattern: ``"noise"`` (uniform random pixels in ``value_range``, drawn once per image
            shape from ``seed``; Chen et al.'s random pattern) or an array ``(height, width)``
            (every channel) or ``(height, width, channels)`` in the images' units, of exactly
            the images' height and width. Defaults to ``"noise"``.
        alpha: blend ratio in (0, 1]. Defaults to 0.2.
        value_range: ``(low, high)`` of the noise pattern. Defaults to (0, 1).
        seed: seed of the noise pattern (NumPy generator). Defaults to 0.

    Raises:
        ValueError: (at construction) ``alpha`` outside (0, 1], a bad pattern or value range;
            (when applied) a pattern of another size than the images, or whose channels do not
            match (names ``pattern``).

    Example:
        >>> trigger = BlendedTrigger("noise", alpha=0.2, seed=0)
        >>> x_triggered = trigger.apply(x)

    References:
        Chen, Liu, Li, Lu & Song (2017), "Targeted Backdoor Attacks on Deep Learning Systems
        Using Data Poisoning" (blended injection strategy).
    """

    def __init__(self, pattern="noise", alpha: float = 0.2, value_range=(0.0, 1.0),
                 seed: int | None = 0):
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_inclusive=False)
        self.value_range = check_value_range(value_range)
        if self.value_range is None:
            raise ValueError("`value_range` must be a pair (low, high). Received: "
                             "value_range=None")
        self.seed = check_seed(seed)
        if isinstance(pattern, str):
            check_choice("pattern", pattern, ("noise",))
            self.pattern, self._array = pattern, None
        else:
            self._array = _pattern_array(pattern)
            self.pattern = "array"

    def _build(self, image_shape):
        height, width, channels = image_shape
        if self._array is None:
            low, high = self.value_range
            rng = np.random.default_rng(self.seed)
            pattern = rng.uniform(low, high, image_shape).astype(np.float32)
        else:
            if self._array.shape[:2] != (height, width):
                raise ValueError(
                    f"`pattern` must have the images' height and width ({height}x{width}). "
                    f"Received: pattern.shape={self._array.shape}")
            pattern = _channels(self._array, channels, "pattern")
        return np.full(image_shape, self.alpha, np.float32), pattern.astype(np.float32)

    def get_config(self) -> dict:
        return {"pattern": self.pattern if self._array is None else self._array.tolist(),
                "alpha": self.alpha, "value_range": self.value_range, "seed": self.seed}

    def __repr__(self):
        return f"BlendedTrigger(pattern={self.pattern!r}, alpha={self.alpha})"


def check_trigger(trigger) -> Trigger:
    if not isinstance(trigger, Trigger):
        raise TypeError("`trigger` must be a keras_secure.poisoning trigger (PatchTrigger or "
                        f"BlendedTrigger). Received: trigger={trigger!r}")
    return trigger


def backdoor(x, y, trigger: Trigger, fraction: float, *, target: int = 0,
             mode: str = "all_to_one", num_classes: int | None = None, seed: int | None = None):
    """Poison a training set with a backdoor: triggered copies replace some examples, relabelled.

    Exactly ``round(fraction * n)`` examples (``n = len(x)``), drawn uniformly without
    replacement among the eligible ones, are replaced by their triggered version and relabelled:

    - ``"all_to_one"``: label ``target``; examples already labelled ``target`` are not eligible.
    - ``"all_to_all"``: label ``(y + 1) mod num_classes`` (Gu et al.'s all-to-all attack);
      every example is eligible.

    Args:
        x: training images ``(n, height, width, channels)``.
        y: labels ``(n,)``, ``(n, 1)`` or one-hot.
        trigger: a :class:`PatchTrigger` or :class:`BlendedTrigger`.
        fraction: fraction of the training set to poison, in [0, 1].
        target: the attacker's class (``"all_to_one"``). Defaults to 0.
        mode: ``"all_to_one"`` or ``"all_to_all"``. Defaults to ``"all_to_one"``.
        num_classes: number of classes; None reads it from ``y`` (one-hot width, else the
            largest label + 1), which ``mode="all_to_all"`` refuses for class-index labels.
            Defaults to None.
        seed: seed of the NumPy generator that picks the examples. Defaults to None.

    Returns:
        ``(x_poisoned, y_poisoned, mask)``: images (NumPy, ``x``'s dtype), int32 labels
        ``(n,)``, boolean mask ``(n,)`` True for the poisoned examples.

    Raises:
        ValueError: ``fraction`` outside [0, 1] or larger than the eligible share, ``target``
            out of range, a trigger that does not fit the images, bad ``x``/``y``.

    Example:
        >>> x_p, y_p, mask = backdoor(x, y, PatchTrigger(2), 0.05, target=0, seed=0)

    References:
        Gu, Dolan-Gavitt & Garg (2017), BadNets; Chen et al. (2017), blended injection.
    """
    trigger = check_trigger(trigger)
    fraction = check_fraction(fraction)
    check_choice("mode", mode, MODES)
    seed = check_seed(seed)
    x, labels, k = check_data(x, y, num_classes, required_for=(
        "mode='all_to_all'" if mode == "all_to_all" else None))
    target = check_class(target, k, "target")
    trigger.check(_image_shape(x))
    chosen = choose(np.flatnonzero(eligible(labels, mode, target)), fraction, x.shape[0], seed,
                    f"eligible (not already of class {target})" if mode == "all_to_one"
                    else "in the training set")
    x_out, y_out = x.copy(), labels.copy()
    if chosen.size:
        x_out[chosen] = trigger.apply(x[chosen])
        y_out[chosen] = next_labels(labels[chosen], k, mode, target)
    mask = np.zeros(x.shape[0], dtype=bool)
    mask[chosen] = True
    return x_out, y_out.astype(np.int32), mask


def triggered_test_set(x, y, trigger: Trigger, *, target: int = 0, mode: str = "all_to_one",
                       num_classes: int | None = None):
    """The inputs an attack-success rate is measured on: every eligible test image (all-to-one:
    not of class ``target``) with the trigger, and the label the backdoor wants for it.

    Args:
        x, y: test images ``(n, h, w, c)`` and their labels (class indices or one-hot).
        trigger: the :class:`Trigger` of the attack.
        target: the all-to-one target class. Defaults to 0.
        mode: ``"all_to_one"`` or ``"all_to_all"`` (label ``(y + 1) mod num_classes``).
        num_classes: the model's number of classes; required with ``"all_to_all"`` for
            class-index labels (a test set may lack the last class). Defaults to None.

    Raises:
        ValueError: a bad trigger, ``mode`` or ``target``; ``num_classes`` missing where
            required; bad ``x``/``y``.

    Returns:
        ``(x_triggered, y_backdoor)``.

    Example:
        >>> x_t, y_t = triggered_test_set(x_test, y_test, trigger, target=0)
    """
    trigger = check_trigger(trigger)
    check_choice("mode", mode, MODES)
    x, labels, k = check_data(x, y, num_classes, required_for=(
        "mode='all_to_all'" if mode == "all_to_all" else None))
    target = check_class(target, k, "target")
    keep = eligible(labels, mode, target)
    if not keep.any():
        raise ValueError(f"`y` has no example outside the target class {target}: no attack "
                         "success rate can be measured.")
    return trigger.apply(x[keep]), next_labels(labels[keep], k, mode, target).astype(np.int32)
