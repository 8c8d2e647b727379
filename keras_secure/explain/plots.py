"""Attributions as pictures: a clean and an adversarial input side by side, and a grid of
examples. matplotlib only; figures are returned (and saved when ``path`` is given)."""

from __future__ import annotations

import numpy as np

from keras_secure.explain.attributions import Attributions


def _values(attributions, name):
    """``(n, *feature_shape)``: the first explained class of each example."""
    if isinstance(attributions, Attributions):
        return attributions.values[:, 0]
    values = np.asarray(attributions, np.float64)
    if values.ndim < 2 or not np.isfinite(values).all():
        raise ValueError(f"`{name}` must be Attributions or a finite array (n, *shape). "
                         f"Received: shape {values.shape}")
    return values


def _image(v):
    """An array to show as an image: (h, w) or (h, w, 3), or None if it is not an image."""
    v = np.asarray(v)
    if v.ndim == 3 and v.shape[-1] == 1:
        return v[..., 0]
    if v.ndim == 3 and v.shape[-1] == 3:
        return v
    if v.ndim == 2:
        return v
    return None


def _heat(v):
    """Attributions summed over channels, for a diverging colour map."""
    v = np.asarray(v)
    return v.sum(axis=-1) if v.ndim == 3 else v


def _draw_input(ax, v, title, feature_names=None):
    img = _image(v)
    if img is None:
        flat = np.asarray(v).reshape(-1)
        ax.bar(np.arange(flat.size), flat, color="0.5")
        if feature_names is not None:
            ax.set_xticks(np.arange(flat.size), feature_names, rotation=45, fontsize=7)
    else:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _draw_attribution(ax, a, limit, title, feature_names=None):
    heat = _heat(a) if _image(a) is not None else None
    if heat is None:
        flat = np.asarray(a).reshape(-1)
        ax.bar(np.arange(flat.size), flat, color=np.where(flat >= 0, "tab:red", "tab:blue"))
        ax.set_ylim(-limit, limit)
        if feature_names is not None:
            ax.set_xticks(np.arange(flat.size), feature_names, rotation=45, fontsize=7)
    else:
        ax.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _finish(fig, title, path):
    """Title, layout, and save (closing the figure) when ``path`` is given."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        import matplotlib.pyplot as plt

        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def _limit(*arrays):
    heats = [(_heat(a) if _image(a) is not None else np.asarray(a)) for a in arrays]
    return max(1e-12, max(float(np.abs(h).max()) for h in heats))


def saliency_pair(x_clean, x_adversarial, clean_attributions, adversarial_attributions, *,
                  index: int = 0, labels=None, feature_names=None, path: str | None = None,
                  title: str | None = None):
    """A clean input and its adversarial version side by side with their attributions.

    Four panels: clean input, its attribution map, adversarial input, its attribution map
    (one shared symmetric colour scale, red = pushes towards the explained class). Images
    ``(h, w, 1)``/``(h, w, 3)``/``(h, w)`` are drawn as pictures, other features as bars.

    Args:
        x_clean, x_adversarial: inputs ``(n, *shape)``.
        clean_attributions, adversarial_attributions: :class:`Attributions` of those inputs
            (the first explained class is drawn) or arrays ``(n, *shape)``.
        index: which example to draw. Defaults to 0.
        labels: optional ``(clean_label, adversarial_label)`` shown in the titles.
        feature_names: names of the features of non-image inputs. Defaults to None.
        path: where to save the figure (PNG), or None. Defaults to None.
        title: figure title. Defaults to None.

    Returns:
        The matplotlib ``Figure`` (closed when saved).

    Example:
        >>> saliency_pair(x, x_adv, e.explain(x), e.explain(x_adv), path="pair.png")
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ac = _values(clean_attributions, "clean_attributions")[index]
    aa = _values(adversarial_attributions, "adversarial_attributions")[index]
    xc, xa = np.asarray(x_clean)[index], np.asarray(x_adversarial)[index]
    limit = _limit(ac, aa)
    lc, la = labels if labels is not None else ("", "")
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    _draw_input(axes[0], xc, f"clean {lc}".strip(), feature_names)
    _draw_attribution(axes[1], ac, limit, "attribution (clean)", feature_names)
    _draw_input(axes[2], xa, f"adversarial {la}".strip(), feature_names)
    _draw_attribution(axes[3], aa, limit, "attribution (adversarial)", feature_names)
    return _finish(fig, title, path)


def saliency_grid(x, attributions, *, num: int = 8, labels=None, path: str | None = None,
                  title: str | None = None):
    """A grid of image inputs (top row) and their attribution maps (bottom row).

    Args:
        x: images ``(n, h, w, c)`` or ``(n, h, w)``.
        attributions: :class:`Attributions` of ``x`` (first explained class) or ``(n, ...)``
            arrays of the images' shape.
        num: how many examples (the first ``num``), >= 1. Defaults to 8.
        labels: optional ``(n,)`` labels shown above the images.
        path: where to save the figure, or None. Defaults to None.
        title: figure title. Defaults to None.

    Returns:
        The matplotlib ``Figure`` (closed when saved).

    Raises:
        ValueError: for inputs that are not images, or attributions of another shape.

    Example:
        >>> saliency_grid(x_test[:8], explainer.explain(x_test[:8]), path="grid.png")
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x)
    values = _values(attributions, "attributions")
    if _image(x[0]) is None:
        raise ValueError("`x` must be images (n, h, w[, c]) for saliency_grid. Received: "
                         f"x.shape={x.shape}")
    if values.shape[1:] != x.shape[1:]:
        raise ValueError("`attributions` must have the images' shape (input attributions, not "
                         f"a layer's). Received: {values.shape[1:]} for images {x.shape[1:]}")
    num = int(min(max(1, num), x.shape[0]))
    limit = _limit(*values[:num])
    fig, axes = plt.subplots(2, num, figsize=(1.4 * num, 3.0), squeeze=False)
    for i in range(num):
        label = "" if labels is None else str(np.asarray(labels)[i])
        _draw_input(axes[0, i], x[i], label)
        _draw_attribution(axes[1, i], values[i], limit, "")
    return _finish(fig, title, path)
