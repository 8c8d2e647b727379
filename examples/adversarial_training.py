"""Adversarial training with a callback, robust accuracy monitored every epoch, best robust
model checkpointed.

Run: .venv/bin/python examples/adversarial_training.py [OUTPUT_DIR]
"""

import os
import sys
import tempfile

import keras

import keras_secure as ks
from keras_secure import attacks

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
x_train, y_train = ks.datasets.load_digits("train")
x_test, y_test = ks.datasets.load_digits("test")

keras.utils.set_random_seed(0)
model = ks.models.small_cnn(seed=0)
model.compile(keras.optimizers.Adam(2e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])

train_attack = attacks.PGD(eps=0.1, steps=7, value_range=(0.0, 1.0), seed=0)
eval_attack = attacks.PGD(eps=0.1, steps=20, value_range=(0.0, 1.0), seed=1)
history = model.fit(
    x_train, y_train, epochs=6, batch_size=64, verbose=0,
    callbacks=[
        ks.callbacks.AdversarialTraining(train_attack, mode="madry", warmup_epochs=2),
        ks.callbacks.RobustnessMonitor(x_test, y_test, eval_attack, max_samples=150),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "best_robust.keras"),
                                        monitor="val_robust_accuracy", mode="max",
                                        save_best_only=True),
    ])
for epoch, (adv_loss, robust) in enumerate(zip(history.history["adv_loss"],
                                               history.history["val_robust_accuracy"]), 1):
    print(f"epoch {epoch}: adv_loss {adv_loss:.3f}  val_robust_accuracy {robust:.3f}")

best = keras.saving.load_model(os.path.join(out, "best_robust.keras"))
report = ks.evaluation.evaluate_robustness(best, x_test, y_test, [
    attacks.FGSM(0.1, value_range=(0, 1)), eval_attack,
    attacks.Square(0.1, queries=300, value_range=(0, 1), seed=0)])
print(report)
