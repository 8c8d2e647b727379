"""Chapter 2: input-denoising defences attacked adaptively, and certified accuracy of
randomized smoothing (the seed paper's Table 2 row "Input Preprocessing"). Quick mode: 8x8
digits at L-inf eps 0.1; full mode: MNIST at L-inf eps 0.3."""

from __future__ import annotations

import keras

from keras_secure import attacks as A
from keras_secure import layers, models
from keras_secure.classifier import Classifier
from keras_secure.demo.common import VALUE_RANGE, demo_data, train_cnn
from keras_secure.evaluation import evaluate_robustness

SIGMAS = (0.12, 0.25, 0.5)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def _defences(x_train, seed, epochs=8, quick=False):
    denoiser = layers.LearnedDenoiser(filters=16, depth=4, value_range=VALUE_RANGE,
                                      name="learned_denoiser")
    layers.train_denoiser(denoiser, x_train, noise_sigma=0.2, epochs=epochs, seed=seed)
    smooth = [  # differentiable filters: left out of the quick demo (its time budget)
        ("Median 3x3", lambda g: layers.MedianSmoothing(3, gradient="exact" if g == "exact"
                                                        else "bpda")),
        ("Gaussian sigma=0.5", lambda g: layers.GaussianSmoothing(0.5)),
    ]
    return [
        ("Bit depth (2 bits)", lambda g: layers.BitDepthReduction(2, VALUE_RANGE, gradient=g)),
        *([] if quick else smooth),
        ("JPEG q=75", lambda g: layers.JpegCompression(75, VALUE_RANGE, gradient=g)),
        ("Learned denoiser", lambda g: denoiser),
    ]


def _attacks(quick, seed, linf_eps):
    """FGSM and PGD at ``linf_eps`` (C&W-L2 is measured in chapters 1 and 3; here it would
    double the chapter's time for a second threat model)."""
    return [
        A.FGSM(linf_eps, value_range=VALUE_RANGE),
        A.PGD(linf_eps, steps=10 if quick else 20, value_range=VALUE_RANGE, seed=seed),
    ]


def run(ctx) -> None:
    data = demo_data(ctx)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    linf_eps = data.linf_eps
    # full mode (MNIST, six defences): 60 images keep the chapter within the demo's budget
    x_eval, y_eval = (x_test[:100], y_test[:100]) if ctx.quick else (x_test[:60], y_test[:60])
    ctx.log(f"training the undefended CNN and a learned denoiser on {data.name} ...")
    cnn = train_cnn(data, 10 if ctx.quick else 8, ctx.seed)

    rows = []
    header = ("| Defence | Clean (%) | FGSM (%) | PGD, naive gradient (%) | PGD, BPDA (%) | "
              "Square (%) | Masking flags: naive | Masking flags: adaptive |\n"
              "|---|---|---|---|---|---|---|---|")
    flags = []
    for name, make in [("None", None), *_defences(x_train, ctx.seed, 8 if ctx.quick else 3,
                                                   ctx.quick)]:
        ctx.log(f"attacking: {name}")
        adaptive = _defended(cnn, make("bpda") if make else None)
        naive = _defended(cnn, make("exact") if make else None)
        report = evaluate_robustness(adaptive, x_eval, y_eval, [
            *_attacks(ctx.quick, ctx.seed, linf_eps),
            A.Square(linf_eps, queries=200, value_range=VALUE_RANGE,
                     seed=ctx.seed)])
        # keras_secure always attacks through the adaptive path; adaptive=False shows what a
        # naive evaluation (the layers' own masked gradients) would have reported.
        naive_report = evaluate_robustness(Classifier(naive, adaptive=False), x_eval, y_eval, [
            A.PGD(linf_eps, steps=10 if ctx.quick else 20, value_range=VALUE_RANGE,
                  seed=ctx.seed)], seed=ctx.seed)
        naive_pgd = naive_report.results[0]
        fgsm, pgd, square = report.results
        row = [name, fgsm.clean_accuracy, fgsm.adversarial_accuracy,
               naive_pgd.adversarial_accuracy, pgd.adversarial_accuracy,
               square.adversarial_accuracy]
        rows.append(row)
        flags.append(([f["flag"] for f in naive_report.flags],
                      [f["flag"] for f in report.flags]))
    table = header + "\n" + "\n".join(
        "| " + " | ".join([r[0]] + [_pct(v) for v in r[1:]]
                          + [", ".join(f) or "none" for f in fl]) + " |"
        for r, fl in zip(rows, flags))
    print(f"\nTable 2 (Input Preprocessing) - accuracy under attack ({data.name})\n")
    print(table, flush=True)
    ctx.results["chapter2_denoisers"] = [
        {**dict(zip(["defence", "clean", "fgsm", "pgd_naive", "pgd_bpda", "square"], r)),
         "flags_naive": fl[0], "flags_adaptive": fl[1]}
        for r, fl in zip(rows, flags)]

    ctx.log("randomized smoothing: noise training and certification ...")
    n_cert = 50 if ctx.quick else 100
    n_samples = 500 if ctx.quick else 1000
    curves = {}
    for sigma in SIGMAS:
        keras.utils.set_random_seed(ctx.seed)
        base = models.small_cnn(data.input_shape, width=data.width, seed=ctx.seed)
        smoothed = layers.RandomizedSmoothing(base, sigma=sigma, num_samples=100,
                                              seed=ctx.seed)
        trainer = keras.Sequential([keras.Input(x_train.shape[1:]), smoothed])
        trainer.compile(keras.optimizers.Adam(2e-3),
                        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # fit calls the layer with training=True: Gaussian noise augmentation of the base.
        trainer.fit(x_train, y_train, epochs=6 if ctx.quick else 4, batch_size=64, verbose=0)
        predictions, radii = smoothed.certify(x_test[:n_cert], n0=100, n=n_samples,
                                              alpha=0.001, batch_size=2000)
        curves[sigma] = layers.certified_accuracy(radii, predictions, y_test[:n_cert], RADII)
        ctx.log(f"sigma={sigma}: certified accuracy "
                + ", ".join(f"r={r}: {100 * a:.0f}%" for r, a in zip(RADII, curves[sigma])))
    cert_table = ("| sigma | " + " | ".join(f"r = {r}" for r in RADII) + " |\n|---|"
                  + "---|" * len(RADII) + "\n" + "\n".join(
                      f"| {s} | " + " | ".join(f"{100 * a:.1f}" for a in curves[s]) + " |"
                      for s in SIGMAS))
    print(f"\nCertified accuracy (%) of randomized smoothing at L2 radius r "
          f"({n_cert} test images, n={n_samples}, alpha=0.001)\n")
    print(cert_table, flush=True)
    ctx.results["chapter2_certified"] = {"radii": list(RADII), "n": n_samples,
                                         "examples": n_cert,
                                         **{str(s): list(map(float, c))
                                            for s, c in curves.items()}}
    plot = ctx.line_plot("ch2_certified_accuracy.png", list(RADII),
                         {f"sigma = {s}": c for s, c in curves.items()}, "L2 radius",
                         "certified accuracy (%)")
    ctx.section(
        "Each denoiser is put in front of the same undefended CNN and attacked *adaptively*: "
        "non-differentiable layers pass a straight-through (BPDA) gradient. The 'naive "
        "gradient' column attacks the same model through the layer's true gradient (zero for "
        "quantisers and JPEG): where it is much higher than the BPDA column, the defence only "
        "masks gradients, and the naive report's own gradient-masking flags say so "
        "(`evaluate_robustness` computes them for every report; see the chapter on honest "
        "evaluation). Square is gradient-free. L-inf attacks use eps="
        f"{linf_eps}.\n\n"
        f"Table 2 - Input Preprocessing (accuracy %, {len(x_eval)} test images of "
        f"{data.name})\n\n" + table + "\n\n"
        "Randomized smoothing (Cohen et al. 2019): a CNN trained with Gaussian noise of "
        "standard deviation sigma (the layer's training mode), certified with CERTIFY "
        f"(n0=100, n={n_samples}, alpha=0.001) on {n_cert} test images.\n\n"
        "Certified accuracy (%) at L2 radius r\n\n" + cert_table
        + f"\n\n![certified accuracy]({plot})\n")


def _pct(value) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}"  # NaN: not run in quick mode


def _defended(cnn, layer):
    if layer is None:
        return cnn
    return keras.Sequential([keras.Input(cnn.input_shape[1:]), layer, cnn])
