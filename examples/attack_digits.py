"""Train a small CNN on the embedded digits, attack it, and print the robustness table.

Run: .venv/bin/python examples/attack_digits.py
"""

import keras

import keras_secure as ks
from keras_secure import attacks

x_train, y_train = ks.datasets.load_digits("train")
x_test, y_test = ks.datasets.load_digits("test")
x_test, y_test = x_test[:200], y_test[:200]

keras.utils.set_random_seed(0)
model = ks.models.small_cnn(seed=0)
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
print(f"clean test accuracy: {model.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

# One attack by hand: the adversarial digits stay within eps of the originals and in [0, 1].
pgd = attacks.PGD(eps=0.1, steps=20, value_range=(0.0, 1.0), seed=0)
x_adv = pgd(model, x_test, y_test)
print(f"max |x_adv - x| = {abs(x_adv - x_test).max():.3f}")
print(f"accuracy under PGD: {model.evaluate(x_adv, y_test, verbose=0)[1]:.3f}")

# A targeted attack: turn every digit into the next one.
targets = (y_test + 1) % 10
x_target = attacks.PGD(eps=0.3, steps=30, targeted=True, value_range=(0, 1), seed=0)(
    model, x_test, targets)
hit = (model.predict(x_target, verbose=0).argmax(1) == targets).mean()
print(f"targeted PGD reaches its target on {100 * hit:.0f}% of the digits")

# The report: several attacks, including a gradient-free one, and the worst case over all.
report = ks.evaluation.evaluate_robustness(model, x_test, y_test, [
    attacks.FGSM(0.1, value_range=(0, 1)),
    pgd,
    attacks.APGD(0.1, steps=50, value_range=(0, 1), seed=0),
    attacks.Square(0.1, queries=300, value_range=(0, 1), seed=0),
    attacks.CarliniWagnerL2(value_range=(0, 1), eps=1.0, learning_rate=0.1, initial_const=0.1,
                            steps=50, binary_search_steps=5),
])
print(report.table(full=True))
