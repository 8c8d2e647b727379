"""Chapter: data poisoning on the digits - label flipping, BadNets and blended backdoors,
detection of the poisoned samples (spectral signatures, activation clustering, TracIn) and
repair (fine-pruning, remove and retrain)."""

from __future__ import annotations

import keras
import numpy as np

from keras_secure import datasets, models
from keras_secure import poisoning as P


#: runs in the demo's child process, in parallel with the chapters before it (runner.py)
IN_CHILD_PROCESS = True

TARGET = 0
DETECT_FRACTION = 0.05


class _Trainer:
    """One compiled CNN reused for every training run: weights and optimizer state are reset
    before each run, so the training step is traced once (the chapter trains many models)."""

    def __init__(self, seed, quick):
        keras.utils.set_random_seed(seed)
        self.seed = seed
        self.width = 16 if quick else 32
        self.epochs = 5 if quick else 12
        self.model = self.build()
        self.model.compile(keras.optimizers.Adam(5e-3),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        self.weights = self.model.get_weights()
        self.optimizer_state = [v.numpy() for v in self.model.optimizer.variables]

    def build(self):
        return models.small_cnn(width=self.width, seed=self.seed)

    def fresh(self):
        """A new compiled model of the same kind (remove-and-retrain builds one)."""
        keras.utils.set_random_seed(self.seed)
        model = self.build()
        model.compile(keras.optimizers.Adam(5e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def fit(self, x, y, callbacks=()):
        self.model.set_weights(self.weights)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)
        keras.utils.set_random_seed(self.seed)
        self.model.fit(x, y, epochs=self.epochs, batch_size=128, verbose=0,
                       callbacks=list(callbacks))
        return self.model


def _pct(v):
    return f"{100 * v:.1f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run(ctx) -> None:
    quick, seed = ctx.quick, ctx.seed
    x_train, y_train = datasets.load_digits("train", seed=seed)
    x_test, y_test = datasets.load_digits("test", seed=seed)
    # the defender's small clean set (fine-pruning) and the evaluation set do not overlap
    x_def, y_def = x_test[:120], y_test[:120]
    x_eval, y_eval = x_test[120:], y_test[120:]
    trainer = _Trainer(seed, quick)
    triggers = {"BadNets patch 2x2": P.PatchTrigger(size=2, position="bottom_right"),
                "Blended noise (alpha 0.2)": P.BlendedTrigger("noise", alpha=0.2, seed=seed)}

    def figures(model):
        out = {"clean": P.clean_accuracy(model, x_eval, y_eval)}
        for name, trigger in triggers.items():
            out[name] = P.attack_success_rate(model, x_eval, y_eval, trigger, target=TARGET)
        return out

    # -- label flipping -------------------------------------------------------------------------
    flip_fractions = (0.0, 0.1, 0.4) if quick else (0.0, 0.1, 0.2, 0.3, 0.4)
    flip_rows, results = [], {"label_flipping": [], "backdoor": [], "detection": []}
    baseline = None
    for fraction in flip_fractions:
        ctx.log(f"label flipping: {100 * fraction:.0f}% random flips")
        x_p, y_p, mask = P.flip_labels(x_train, y_train, fraction, num_classes=10, seed=seed)
        model = trainer.fit(x_p, y_p)
        f = figures(model) if fraction == 0.0 else {
            "clean": P.clean_accuracy(model, x_eval, y_eval)}
        if fraction == 0.0:
            baseline = f
        flip_rows.append([f"{100 * fraction:.0f}", int(mask.sum()), _pct(f["clean"])])
        results["label_flipping"].append({"fraction": fraction, "flipped": int(mask.sum()),
                                          "clean_accuracy": f["clean"]})

    # -- backdoors, detection, repair -------------------------------------------------------------
    fractions = (0.01, DETECT_FRACTION) if quick else (0.01, 0.02, DETECT_FRACTION, 0.1)
    # quick mode detects and repairs the patch backdoor only
    detected = list(triggers)[:1] if quick else list(triggers)
    backdoor_rows = [["none (clean model)", "0", _pct(baseline["clean"]),
                      " / ".join(_pct(baseline[n]) for n in triggers)]]
    curves = {name: [] for name in triggers}
    detection_rows, repair_rows, pruning_rows = [], [], []
    for name, trigger in triggers.items():
        for fraction in fractions:
            ctx.log(f"backdoor: {name}, {100 * fraction:g}% poisoned")
            x_p, y_p, mask = P.backdoor(x_train, y_train, trigger, fraction, target=TARGET,
                                        num_classes=10, seed=seed)
            checkpoints = P.TracInCheckpoints()
            model = trainer.fit(x_p, y_p, [checkpoints])
            clean = P.clean_accuracy(model, x_eval, y_eval)
            asr = P.attack_success_rate(model, x_eval, y_eval, trigger, target=TARGET)
            curves[name].append(asr)
            backdoor_rows.append([name, f"{100 * fraction:g}", _pct(clean), _pct(asr)])
            results["backdoor"].append({"trigger": name, "fraction": fraction,
                                        "poisoned": int(mask.sum()), "clean_accuracy": clean,
                                        "attack_success": asr})
            if fraction != DETECT_FRACTION or name not in detected:
                continue
            ctx.log(f"detection: {name}, {int(mask.sum())} poisoned of {len(mask)}")
            conv_features = model.layers[2].name  # the flattened conv features
            detectors = {
                "Spectral signatures": P.spectral_signatures(
                    model, x_p, y_p, layer=conv_features, expected_fraction=fraction),
                "Activation clustering": P.activation_clustering(
                    model, x_p, y_p, layer=conv_features, seed=seed),
                "TracIn self-influence": P.tracin_self_influence(
                    model, x_p, y_p, checkpoints.checkpoints, expected_fraction=fraction),
            }
            for method, result in detectors.items():
                m = result.evaluate(mask)
                detection_rows.append([name, method, m["flagged"], _pct(m["precision"]),
                                       _pct(m["recall"]), f"{m['auc']:.3f}"])
                results["detection"].append({"trigger": name, "method": method, **m})
            # repair the patch backdoor only (the blended one is repaired the same way)
            if name != next(iter(triggers)):
                continue

            def evaluate(m, _trigger=trigger):
                return {"clean": P.clean_accuracy(m, x_eval, y_eval),
                        "asr": P.attack_success_rate(m, x_eval, y_eval, _trigger,
                                                     target=TARGET)}

            ctx.log("repair: fine-pruning")
            if not quick:  # quick mode: the repair table's 0% and 90% rows only
                curve = P.pruning_curve(model, x_def, (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
                                        evaluate)
                pruning_rows = [[f"{100 * row['fraction']:.0f}", _pct(row["clean"]),
                                 _pct(row["asr"])] for row in curve]
                results["pruning_curve"] = curve
            fp = P.fine_pruning(model, x_def, y_def, fraction=0.9, epochs=10,
                                learning_rate=1e-3, batch_size=32, evaluate=evaluate, seed=seed)
            repair_rows += [
                ["none (backdoored model)", _pct(clean), _pct(asr)],
                ["pruning 90% of the last conv layer's channels", _pct(fp.before_fine_tuning[
                    "clean"]), _pct(fp.before_fine_tuning["asr"])],
                ["fine-pruning (90% pruned + 10 epochs on 120 clean digits)",
                 _pct(fp.after["clean"]), _pct(fp.after["asr"])]]
            ctx.log("repair: remove and retrain")
            for method in (["Activation clustering"] if quick else list(detectors)):
                flagged = detectors[method].flagged
                model_r = trainer.fit(x_p[~flagged], y_p[~flagged])
                r = evaluate(model_r)
                repair_rows.append([f"remove the {int(flagged.sum())} flagged by {method} and "
                                    "retrain", _pct(r["clean"]), _pct(r["asr"])])
            results["repair"] = [dict(zip(("repair", "clean_accuracy", "attack_success"),
                                          (row[0], float(row[1]) / 100, float(row[2]) / 100)))
                                 for row in repair_rows]

    results["asr_curves"] = {"fractions": list(fractions), **curves}
    ctx.results["chapter_poisoning"] = results

    flip_table = _table(["random flips (%)", "flipped labels", "clean accuracy (%)"], flip_rows)
    backdoor_table = _table(["trigger", "poisoned (%)", "clean accuracy (%)",
                             "attack success (%)"], backdoor_rows)
    detection_table = _table(["backdoor", "detector", "flagged", "precision (%)", "recall (%)",
                              "AUC"], detection_rows)
    pruning_table = _table(["channels pruned (%)", "clean accuracy (%)", "attack success (%)"],
                           pruning_rows)
    repair_table = _table(["repair", "clean accuracy (%)", "attack success (%)"], repair_rows)
    tables = [("Label flipping", flip_table), ("Backdoors", backdoor_table),
              (f"Detection ({100 * DETECT_FRACTION:g}% poisoned)", detection_table),
              ("Pruning the last conv layer (no fine-tuning)", pruning_table),
              ("Repair", repair_table)]
    for title, table in tables if pruning_rows else tables[:3] + tables[4:]:
        print(f"\n{title}\n\n{table}", flush=True)
    plot = ctx.line_plot("ch_poisoning_attack_success.png", [100 * f for f in fractions],
                         curves, "poisoned training examples (%)", "attack success (%)",
                         size=(6, 4))
    n_eval = len(x_eval)
    ctx.section(
        f"The small CNN (width {trainer.width}, {trainer.epochs} epochs) is trained on the "
        f"{len(x_train)} digits after poisoning; every figure is measured on {n_eval} held-out "
        "test digits (one example is "
        f"{100 / n_eval:.2f} points). Attack success: triggered test digits of the classes "
        f"other than {TARGET} classified as {TARGET} (all-to-one); the clean model's row is "
        "the rate at which a trigger alone moves digits to the target.\n\n"
        "Label flipping (random flips to another class; keras_secure.poisoning.flip_labels)\n\n"
        + flip_table + "\n\nBackdoors (keras_secure.poisoning.backdoor; the clean row shows "
        "patch / blended)\n\n" + backdoor_table + "\n\n"
        f"![attack success against the poison fraction]({plot})\n\n"
        f"Detection of the poisoned training samples at {100 * DETECT_FRACTION:g}% poison, "
        "from the flattened convolutional features (spectral signatures, activation clustering) "
        "and from the last layer's gradients at each epoch's checkpoint (TracIn). Precision and "
        "recall are of the flagged set (spectral signatures and TracIn flag 1.5 x the expected "
        "fraction), AUC of the per-sample scores against the true poison mask.\n\n"
        + detection_table + "\n\nFine-pruning (Liu et al. 2018) of the patch-backdoored model, "
        "channels of the last convolutional layer ranked by their mean activation on the "
        "defender's 120 clean digits:\n\n" + (pruning_table + "\n\n" if pruning_rows else "")
        + repair_table + "\n")
