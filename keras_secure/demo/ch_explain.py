"""Chapter: explainability. SHAP and LIME attributions of the digits CNN, saliency pictures of
clean and adversarial digits, and the attribution-based detector of Fidel, Bitton & Shabtai
(2020): the seed paper's Table 5 (SHAP vs LIME, detection accuracy and time, measured in the
same run), the attacks not seen in training, and the adaptive attacks that know the
detector."""

from __future__ import annotations

import keras
import numpy as np

from keras_secure import attacks as A
from keras_secure import datasets, models
from keras_secure.classifier import as_classifier
from keras_secure.explain import (
    AdaptivePGD,
    AdaptiveSquare,
    AttributionDetector,
    Explainer,
    saliency_grid,
    saliency_pair,
)


#: runs in the demo's child process, in parallel with the chapters before it (runner.py)
IN_CHILD_PROCESS = True

VALUE_RANGE = (0.0, 1.0)
EPS = 0.1


def _successful(clf, x, y, x_adv):
    """The adversarial inputs that fooled the model on examples it classified correctly."""
    ok = (clf.predict_labels(x) == y) & (clf.predict_labels(x_adv) != y)
    return x_adv[ok]


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}"


def run(ctx) -> None:
    quick = ctx.quick
    x_train, y_train = datasets.load_digits("train", seed=ctx.seed)
    x_test, y_test = datasets.load_digits("test", seed=ctx.seed)
    ctx.log("training the digits CNN ...")
    keras.utils.set_random_seed(ctx.seed)
    model = models.train_small_cnn(x_train, y_train, epochs=3 if quick else 10, seed=ctx.seed)
    clf = as_classifier(model)
    layer = model.layers[-2].name  # the hidden layer before the logits (Fidel et al.)
    n_fit, n_test = (120, 60) if quick else (500, 200)
    background = x_train[-40:]
    x_fit, y_fit = x_train[:n_fit], y_train[:n_fit]
    x_eval, y_eval = x_test[:n_test], y_test[:n_test]

    seen = [A.FGSM(EPS, value_range=VALUE_RANGE),
            A.PGD(EPS, steps=10, value_range=VALUE_RANGE, seed=ctx.seed)]
    unseen = [
        A.CarliniWagnerL2(value_range=VALUE_RANGE, steps=15 if quick else 50,
                          binary_search_steps=2 if quick else 5, initial_const=1.0,
                          learning_rate=0.1),
        A.DeepFool(value_range=VALUE_RANGE, steps=10 if quick else 50),
        A.APGD(EPS, steps=10 if quick else 50, value_range=VALUE_RANGE, seed=ctx.seed),
        A.Square(EPS, queries=60 if quick else 500, value_range=VALUE_RANGE, seed=ctx.seed),
    ]
    ctx.log("attacking the training and test examples ...")
    train_adv = np.concatenate([_successful(clf, x_fit, y_fit, a(clf, x_fit, y_fit))
                                for a in seen])
    test_adv = {a.label: a(clf, x_eval, y_eval) for a in seen + unseen}
    test_ok = {k: _successful(clf, x_eval, y_eval, v) for k, v in test_adv.items()}
    seen_test = np.concatenate([test_ok[a.label] for a in seen])

    explainers = {
        "SHAP (DeepExplainer)": Explainer(model, background, "deep", layer=layer),
        "LIME": Explainer(model, background, "lime", layer=layer,
                          num_samples=80 if quick else 200, seed=ctx.seed),
    }
    detectors, table5, unseen_rows = {}, [], []
    for name, explainer in explainers.items():
        ctx.log(f"fitting the {name} detector ...")
        det = AttributionDetector(explainer, seed=ctx.seed).fit(x_fit, y_fit,
                                                               x_adversarial=train_adv)
        detectors[name] = det
        r = det.evaluate(x_eval, seen_test, name="FGSM + PGD")
        table5.append([name, r.accuracy, r.roc_auc, r.tpr_at_5_fpr, r.fpr,
                       1000 * r.seconds_per_input])
        for attack in unseen:
            adv = test_ok[attack.label]
            if len(adv) == 0:
                unseen_rows.append([attack.label, name, None, None, None, 0])
                continue
            u = det.evaluate(x_eval, adv, name=attack.label)
            unseen_rows.append([attack.label, name, u.accuracy, u.roc_auc, u.tpr_at_5_fpr,
                                u.n_adversarial])

    ctx.log("adaptive attacks on the SHAP detector ...")
    shap_det = detectors["SHAP (DeepExplainer)"]
    clean_scores = shap_det.decision_function(x_eval)
    n_adaptive = 40 if quick else n_test
    adaptive = [
        A.PGD(EPS, steps=20 if quick else 50, value_range=VALUE_RANGE, seed=ctx.seed),
        AdaptivePGD(shap_det, EPS, steps=20 if quick else 50, value_range=VALUE_RANGE,
                    seed=ctx.seed),
        A.Square(EPS, queries=60 if quick else 500, value_range=VALUE_RANGE, seed=ctx.seed),
        AdaptiveSquare(shap_det, EPS, queries=60 if quick else 500, value_range=VALUE_RANGE,
                       seed=ctx.seed),
    ]
    adaptive_rows = []
    for attack in adaptive:
        r = shap_det.evaluate_attack(x_eval[:n_adaptive], y_eval[:n_adaptive], attack,
                                     clean_scores=clean_scores[:n_adaptive])
        adaptive_rows.append([r.name, "yes" if r.adaptive else "no", r.classifier_accuracy,
                              r.tpr, r.evasion_rate, r.roc_auc])

    # pictures: input attributions (DeepExplainer on the pixels), clean vs PGD
    pixels = Explainer(model, background, "deep")
    pgd_label = seen[1].label
    x_pgd = test_adv[pgd_label]
    fooled = np.flatnonzero((clf.predict_labels(x_eval) == y_eval)
                            & (clf.predict_labels(x_pgd) != y_eval))
    i = int(fooled[0]) if fooled.size else 0
    a_clean = pixels.explain(x_eval[i:i + 1])
    a_adv = pixels.explain(x_pgd[i:i + 1])
    pair = "ch_explain_saliency_pair.png"
    saliency_pair(x_eval[i:i + 1], x_pgd[i:i + 1], a_clean, a_adv, path=ctx.path(pair),
                  labels=(f"(predicted {a_clean.classes[0, 0]})",
                          f"(predicted {a_adv.classes[0, 0]})"),
                  title=f"DeepExplainer attributions of the predicted class, PGD eps={EPS}")
    grid = "ch_explain_saliency_grid.png"
    saliency_grid(x_eval[:8], pixels.explain(x_eval[:8]), labels=y_eval[:8],
                  path=ctx.path(grid), title="DeepExplainer attributions, test digits")

    ctx.log("done")
    t5 = ("| Explainer | Detection accuracy (%) | ROC AUC | TPR at 5% FPR (%) | FPR at threshold "
          "(%) | Detection time per input (ms) |\n|---|---|---|---|---|---|\n" + "\n".join(
              f"| {r[0]} | {_pct(r[1])} | {r[2]:.3f} | {_pct(r[3])} | {_pct(r[4])} | "
              f"{r[5]:.2f} |" for r in table5))
    gen = ("| Unseen attack | Detector | Detection accuracy (%) | ROC AUC | TPR at 5% FPR (%) "
           "| adversarial inputs |\n|---|---|---|---|---|---|\n" + "\n".join(
               f"| {r[0]} | {r[1]} | {_pct(r[2])} | "
               f"{'n/a' if r[3] is None else f'{r[3]:.3f}'} | {_pct(r[4])} | {r[5]} |"
               for r in unseen_rows))
    adapt = ("| Attack on the SHAP detector | knows the detector | classifier accuracy (%) | "
             "detection rate (%) | evasion rate (%) | ROC AUC |\n|---|---|---|---|---|---|\n"
             + "\n".join(f"| {r[0]} | {r[1]} | {_pct(r[2])} | {_pct(r[3])} | {_pct(r[4])} | "
                         f"{'n/a' if r[5] is None else f'{r[5]:.3f}'} |"
                         for r in adaptive_rows))
    print(f"\nTable 5 - SHAP vs LIME as adversarial-input detectors (trained on FGSM + PGD, "
          f"L-inf eps={EPS}; {len(x_eval)} clean test digits)\n")
    print(t5)
    print("\nAttacks not seen in training\n")
    print(gen)
    print("\nAdaptive evaluation (the detector's threshold at 5% FPR on held-out clean "
          "digits)\n")
    print(adapt, flush=True)
    ctx.results["chapter_explain_table5"] = [
        dict(zip(["explainer", "accuracy", "roc_auc", "tpr_at_5_fpr", "fpr",
                  "ms_per_input"], r)) for r in table5]
    ctx.results["chapter_explain_unseen"] = [
        dict(zip(["attack", "explainer", "accuracy", "roc_auc", "tpr_at_5_fpr",
                  "n_adversarial"], r)) for r in unseen_rows]
    ctx.results["chapter_explain_adaptive"] = [
        dict(zip(["attack", "adaptive", "classifier_accuracy", "detection_rate",
                  "evasion_rate", "roc_auc"], r)) for r in adaptive_rows]
    ctx.results["chapter_explain_detectors"] = {k: d.describe() for k, d in detectors.items()}
    shap_desc = detectors["SHAP (DeepExplainer)"].describe()
    lime_desc = detectors["LIME"].describe()
    ctx.section(
        "Attributions come from the libraries: shap's DeepExplainer (background: "
        f"{len(background)} training digits) and LIME's tabular explainer "
        f"({lime_desc['num_samples']} samples per explanation), both on the "
        f"{shap_desc['training']['signature_size']} activations of the hidden layer "
        f"`{layer}` before the logits, as Fidel, Bitton & Shabtai (2020) use SHAP values of "
        "hidden layers. The detector (`keras_secure.explain.AttributionDetector`) is a "
        "logistic regression on the predicted class's attributions, trained on "
        f"{shap_desc['training']['clean_train']} clean digits and "
        f"{shap_desc['training']['adversarial']} successful FGSM/PGD examples (L-inf "
        f"eps={EPS}); its threshold flags 5% of {shap_desc['training']['clean_calibration']} "
        "held-out clean digits. Both detectors see exactly the same inputs.\n\n"
        f"Table 5 - SHAP vs LIME as detectors ({len(x_eval)} clean test digits and the "
        "successful FGSM/PGD test examples)\n\n" + t5 + "\n\n"
        "Attacks not seen in training (train on FGSM + PGD, test on each):\n\n" + gen + "\n\n"
        "Adaptive evaluation (Carlini & Wagner 2017): the adaptive attacks minimise the "
        "classifier's margin plus the detector's score above its threshold. Adaptive PGD "
        "differentiates through the attribution itself (the logits are affine in the hidden "
        "layer, so the exact SHAP values are an in-graph function); Adaptive Square uses "
        "queries only. Evasion rate = fraction of the test digits misclassified and not "
        f"flagged ({n_adaptive} digits). A detector that stops only attacks that ignore it is "
        "no defence:\n\n" + adapt + "\n\n"
        f"![clean vs adversarial saliency]({pair})\n\n![saliency grid]({grid})\n")
