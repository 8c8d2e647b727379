"""Pictures of a robustness report: clean inputs next to their adversarial examples."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_adversarial_examples"]


def plot_adversarial_examples(report, attack: str | None = None, num_examples: int = 8,
                              path: str | None = None):
    """A grid of clean images, their adversarial examples and the perturbations, with the true
    and predicted labels.

    Row 1: the clean input, titled ``y=<true> pred <clean prediction>``; row 2: the adversarial
    input, titled with its prediction (red when wrong); row 3: the perturbation ``x_adv - x``
    scaled to its largest absolute value (blue negative, red positive), titled with its norm in
    the attack's norm. Examples the attack fooled (correct clean, wrong attacked) come first, in
    example order, then the others. Clean and adversarial images share one grey scale, the
    joint minimum to maximum of the shown pixels. Predictions are the report's own (the
    classifier contract's predicted labels), not recomputed.

    Args:
        report: a :class:`~keras_secure.evaluation.RobustnessReport` made with
            ``keep_adversarial=True`` on images ``(n, height, width)`` or ``(n, height, width,
            channels)`` with 1 or 3 channels.
        attack: the attack's row label (e.g. ``"PGD-Linf (eps=0.3)"``). Defaults to the attack
            with the lowest accuracy under attack (the first of equals).
        num_examples: columns of the grid, 1 to 32. Defaults to 8 (fewer if fewer examples).
        path: if given, the figure is saved there (PNG at 100 dpi).

    Returns:
        The matplotlib ``Figure`` (object API: no pyplot state, no GUI backend).

    Raises:
        ValueError: if the report kept no adversarial examples, holds no images, ``attack`` is
            not one of its attacks, or ``num_examples`` is out of range.

    Example:
        >>> report = evaluate_robustness(model, x, y, attacks, keep_adversarial=True)
        >>> plot_adversarial_examples(report, path="adversarial.png")
    """
    from keras_secure.validation import check_number

    num_examples = check_number("num_examples", num_examples, low=1, high=32, integer=True)
    if getattr(report, "inputs", None) is None or not getattr(report, "adversarial", None):
        raise ValueError("The report kept no adversarial examples: call "
                         "evaluate_robustness(..., keep_adversarial=True).")
    rows = {r.attack: r for r in report.results}
    kept = [label for label in report.adversarial if label in rows]
    if attack is None:
        attack = min(kept, key=lambda label: rows[label].adversarial_accuracy)
    elif attack not in report.adversarial:
        raise ValueError(f"`attack` must be one of the report's attacks {kept}. "
                         f"Received: attack={attack!r}")
    x = np.asarray(report.inputs)
    x_adv = np.asarray(report.adversarial[attack])
    if x.ndim == 4 and x.shape[-1] == 1:
        x, x_adv = x[..., 0], x_adv[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise ValueError("plot_adversarial_examples shows images: inputs of shape (n, height, "
                         "width) or (n, height, width, 1 or 3). Received: inputs of shape "
                         f"{np.asarray(report.inputs).shape}")
    y = np.asarray(report.labels)
    clean_pred = np.asarray(report.predictions["clean"])
    adv_pred = np.asarray(report.predictions[attack])
    fooled = (clean_pred == y) & (adv_pred != y)
    order = np.concatenate([np.flatnonzero(fooled), np.flatnonzero(~fooled)])[:num_examples]
    norm = rows[attack].norm

    from matplotlib.figure import Figure

    shown = np.concatenate([x[order], x_adv[order]])
    low, high = float(shown.min()), float(shown.max())
    high = high if high > low else low + 1.0

    def scaled(image):
        image = (image - low) / (high - low)
        return np.clip(image, 0.0, 1.0)

    cols = len(order)
    fig = Figure(figsize=(1.25 * cols + 0.9, 4.3))
    grid = fig.subplots(3, cols, squeeze=False)
    for j, i in enumerate(order):
        delta = x_adv[i].astype(np.float64) - x[i].astype(np.float64)
        size = (np.abs(delta).max() if norm == "linf" else np.sqrt((delta ** 2).sum()))
        peak = np.abs(delta).max() or 1.0
        kwargs = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if x.ndim == 3 else {}
        grid[0, j].imshow(scaled(x[i]), **kwargs)
        grid[0, j].set_title(f"y={y[i]} pred {clean_pred[i]}", fontsize=8)
        grid[1, j].imshow(scaled(x_adv[i]), **kwargs)
        grid[1, j].set_title(f"pred {adv_pred[i]}", fontsize=8,
                             color="tab:red" if adv_pred[i] != y[i] else "black")
        shown_delta = delta if x.ndim == 3 else delta.mean(axis=-1)
        grid[2, j].imshow(shown_delta / peak, cmap="seismic", vmin=-1.0, vmax=1.0)
        grid[2, j].set_title(f"{'Linf' if norm == 'linf' else 'L2'} {size:.2f}", fontsize=8)
    for ax in grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for r, name in enumerate(("clean", "adversarial", "perturbation")):
        grid[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{attack}: {int(fooled.sum())} of {len(y)} examples fooled "
                 f"(fooled first)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
