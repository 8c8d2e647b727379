import json
import os
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(__file__))  # tests/_browser.py

import keras
import numpy as np
import pytest

import keras_secure as ks
from keras_secure.cli import main
from keras_secure.evaluation import evaluate_robustness

VR = ("--value-range", "0", "1")


def test_evaluate_command(cnn, eval_set, tmp_path, capsys):
    x, y = eval_set
    model_path = str(tmp_path / "cnn.keras")
    cnn.save(model_path)
    data = str(tmp_path / "data.npz")
    np.savez(data, x=x, y=y)
    out = str(tmp_path / "report.json")
    code = main(["evaluate", model_path, "--data", data, "--attacks", "fgsm,pgd,deepfool",
                 "--eps", "0.1", "--value-range", "0", "1", "--max-samples", "40",
                 "--steps", "5", "--output", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Accuracy Under Attack (%)" in printed and "PGD-Linf (eps=0.1)" in printed
    report = _read_json(out)
    assert [r["attack"] for r in report["results"]] == [
        "FGSM-Linf (eps=0.1)", "PGD-Linf (eps=0.1)", "DeepFool-L2"]
    assert report["results"][0]["num_examples"] == 40
    # one worst case per threat model: DeepFool without a budget belongs to none
    assert [r["attack"] for r in report["worst_cases"]] == ["Worst case (Linf, eps=0.1)"]
    # how the model was read, printed and in the JSON
    assert report["classifier"]["kind"] == "logits"
    assert "Model " in printed and "logits" in printed and "Adaptive path" in printed


def _run(args, timeout=60, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout,
                          **kwargs)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _usage_error(capsys, argv) -> str:
    """Run the CLI, expect a user mistake: exit code 2 and one line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert err.startswith("keras-secure"), err
    return err


def test_evaluate_command_errors(cnn, eval_set, tmp_path, capsys):
    x, y = eval_set
    data = str(tmp_path / "data.npz")
    np.savez(data, inputs=x, y=y)
    assert "--attacks" in _usage_error(
        capsys, ["evaluate", "m.keras", "--data", data, "--attacks", "fgsm,bim", "--eps", "0.1"])
    assert "lacks arrays" in _usage_error(
        capsys, ["evaluate", "m.keras", "--data", data, "--eps", "0.1"])
    assert "does not exist" in _usage_error(
        capsys, ["evaluate", "m.keras", "--data", str(tmp_path / "no.npz"), "--eps", "0.1"])
    np.savez(data, x=x, y=y)
    assert "`eps` must be a number > 0" in _usage_error(
        capsys, ["evaluate", "m.keras", "--data", data, "--eps", "-1"])


# --------------------------------------------------------------------------------------------
# User mistakes: one line on stderr, exit code 2, no traceback
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny 3-class logits model on 2 features, saved, and files around it."""
    d = tmp_path_factory.mktemp("cli")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model.layers[-1].set_weights([np.array([[2.0, -1.0, 0.0], [-1.0, 2.0, 0.5]], np.float32),
                                  np.zeros(3, np.float32)])
    paths = {"model": str(d / "model.keras"), "dir": str(d)}
    model.save(paths["model"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (20, 2)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    paths["x"], paths["y"] = x, y

    def npz(name, **arrays):
        path = str(d / name)
        np.savez(path, **arrays)
        return path

    paths["data"] = npz("data.npz", x=x, y=y)
    paths["npz"] = npz
    return paths


def _crafted_model(path, registered_name):
    """A .keras file whose second layer is a class Keras cannot locate."""
    keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)]).save(path)
    with zipfile.ZipFile(path) as z:
        contents = {name: z.read(name) for name in z.namelist()}
    config = json.loads(contents["config.json"])
    layer = config["config"]["layers"][1]
    layer.update(module=None, class_name=registered_name.split(">")[1],
                 registered_name=registered_name)
    contents["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in contents.items():
            z.writestr(name, data)
    return path


def test_model_file_mistakes(files, tmp_path, capsys):
    data = files["data"]

    def run(model):
        return _usage_error(capsys, ["evaluate", model, "--data", data, "--eps", "0.1"])

    assert "does not exist" in run(str(tmp_path / "missing.keras"))
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n")
    err = run(str(h5))
    assert "must be a .keras file" in err and "model.h5" in err
    (tmp_path / "dir.keras").mkdir()
    assert "is a directory" in run(str(tmp_path / "dir.keras"))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_text("not a zip")
    assert "is not a .keras archive" in run(str(corrupt))
    err = run(_crafted_model(str(tmp_path / "custom.keras"), "mine>NoSuchLayer"))
    assert "'mine>NoSuchLayer'" in err and "not registered" in err
    assert "keras_secure's own layers load" in err  # the CLI imports keras_secure first
    err = run(_crafted_model(str(tmp_path / "ks.keras"), "keras_secure>NoSuchLayer"))
    assert "'keras_secure>NoSuchLayer'" in err and "does not define" in err


def test_data_file_mistakes(files, tmp_path, capsys):
    model, x, y, npz = files["model"], files["x"], files["y"], files["npz"]

    def run(data, *extra):
        return _usage_error(capsys, ["evaluate", model, "--data", data, "--eps", "0.1", *extra])

    text = tmp_path / "data.npz"
    text.write_text("x,y\n0.1,1\n")
    assert "is not a .npz file" in run(str(text))
    np.save(tmp_path / "x.npy", x)
    assert "single .npy array" in run(str(tmp_path / "x.npy"))
    assert "empty .npz" in run(npz("empty.npz"))
    assert "lacks arrays ['y']" in run(npz("noy.npz", x=x))
    err = run(npz("zero.npz", x=x[:0], y=y[:0]))
    assert "`x`" in err and "is empty" in err
    err = run(npz("lengths.npz", x=x, y=y[:15]))
    assert "`x` and `y`" in err and "x has 20, y has 15" in err
    # the lengths are checked before --max-samples cuts both
    assert "x has 20, y has 15" in run(npz("lengths.npz", x=x, y=y[:15]), "--max-samples", "5")


@pytest.mark.parametrize("labels, expected", [
    (np.full(20, 3), "`y` must hold labels in [0, 2]"),          # out of range
    (np.full(20, -1), "`y` must hold labels in [0, 2]"),         # negative
    (np.full(20, 0.5), "`y` must hold integer class labels"),    # float, not integer-valued
    (np.array(["cat"] * 20), "`y` must hold integer class labels"),  # strings
    (np.zeros((20, 2)), "`y` must be class labels of shape"),    # neither (n, 1) nor one-hot
])
def test_label_mistakes(files, capsys, labels, expected):
    data = files["npz"]("labels.npz", x=files["x"], y=labels)
    err = _usage_error(capsys, ["evaluate", files["model"], "--data", data, "--eps", "0.1"])
    assert expected in err and "Received:" in err


def test_input_mistakes(files, capsys):
    model, npz, y = files["model"], files["npz"], files["y"]
    err = _usage_error(capsys, ["evaluate", model, "--data",
                                npz("shape.npz", x=np.zeros((20, 3), np.float32), y=y),
                                "--eps", "0.1"])
    assert "`x` must have the model's input shape (n, 2)" in err and "(20, 3)" in err
    x = files["x"].copy()
    x[3, 1] = np.nan
    err = _usage_error(capsys, ["evaluate", model, "--data", npz("nan.npz", x=x, y=y),
                                "--eps", "0.1"])
    assert "`x` must be finite" in err


def test_number_and_range_mistakes(files, tmp_path, capsys):
    model, data, npz, y = files["model"], files["data"], files["npz"], files["y"]
    base = ["evaluate", model, "--data", data]
    assert "--batch-size" in _usage_error(capsys, base + ["--eps", "0.1", "--batch-size", "0"])
    assert "--max-samples" in _usage_error(capsys, base + ["--eps", "0.1", "--max-samples", "0"])
    assert "--steps" in _usage_error(capsys, base + ["--eps", "0.1", "--steps", "-3"])
    assert "--eps is required" in _usage_error(capsys, base)
    assert "cw needs --value-range" in _usage_error(capsys, base + ["--attacks", "cw"])
    assert "LOW < HIGH" in _usage_error(capsys, base + ["--eps", "0.1", "--value-range", "1",
                                                        "0"])
    assert "square takes images" in _usage_error(capsys, base + ["--eps", "0.1", "--attacks",
                                                                 "pgd,square"])
    # the L-inf budget cannot exceed the value range (the attack's own check, before any run)
    assert "`eps` must be <=" in _usage_error(capsys, base + ["--eps", "2", *VR])
    # integer data without --value-range
    ints = npz("uint8.npz", x=(files["x"] * 255).astype(np.uint8), y=y)
    err = _usage_error(capsys, ["evaluate", model, "--data", ints, "--eps", "8"])
    assert "integer images need --value-range" in err and "0 255" in err
    # data outside --value-range: the observed min / max are named
    outside = npz("outside.npz", x=files["x"] * 2 - 0.5, y=y)
    lo, hi = float((files["x"] * 2 - 0.5).min()), float((files["x"] * 2 - 0.5).max())
    err = _usage_error(capsys, ["evaluate", model, "--data", outside, "--eps", "0.1", *VR])
    assert f"[{lo:g}, {hi:g}]" in err and "--value-range 0 1" in err
    err = _usage_error(capsys, base + ["--eps", "0.1", "--output",
                                       str(tmp_path / "no" / "r.json")])
    assert "does not exist" in err


def test_cheap_mistakes_do_not_import_tensorflow(tmp_path):
    """Help, version and the mistakes that need no model answer without TensorFlow."""
    code = f"""
import sys
from keras_secure_cli import main
for argv, expected in ((["--help"], 0), (["--version"], 0), (["evaluate", "--help"], 0),
                       (["demo", "--help"], 0),
                       (["evaluate", "m.keras", "--data", {str(tmp_path / 'no.npz')!r},
                         "--eps", "0.1"], 2),
                       (["evaluate", "m.keras", "--data", "d.npz"], 2)):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == expected, (argv, e.code)
heavy = sorted(m for m in ("tensorflow", "keras", "keras_secure") if m in sys.modules)
assert not heavy, heavy
"""
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert "--eps is required" in result.stderr and "does not exist" in result.stderr


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "keras-secure")
    result = _run([exe, "--help"])
    assert result.returncode == 0 and "demo" in result.stdout and "evaluate" in result.stdout


def test_console_script_help_and_version_are_fast():
    """`keras-secure --help` / `--version` import no TensorFlow and log nothing."""
    exe = os.path.join(os.path.dirname(sys.executable), "keras-secure")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    for flag in ("--help", "--version"):
        result = _run([exe, flag], env=env)
        assert result.returncode == 0
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")]
        assert "keras_secure_cli" in imported
        assert not [m for m in imported if m.split(".")[0] in ("tensorflow", "keras",
                                                               "keras_secure")]
        assert not [line for line in result.stderr.splitlines()
                    if not line.startswith("import time:")]
    result = _run([exe, "--version"])
    assert result.stdout.startswith(f"keras-secure {ks.__version__} (keras ")
    help_text = _run([exe, "evaluate", "--help"]).stdout
    assert "Required: MODEL.keras, --data FILE.npz, and --eps EPS" in help_text


def test_tensorflow_start_up_logs_follow_tf_cpp_min_log_level():
    """TensorFlow 2.21 writes these before it reads TF_CPP_MIN_LOG_LEVEL; the CLI applies it."""
    from keras_secure_cli import _filter_tf_logs

    preamble = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
                "STDERR\n")
    info = ("I0000 00:00:1796059211.108927    7668 cpu_feature_guard.cc:227] This TensorFlow "
            "binary is optimized to use available CPU instructions.\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
            "TensorFlow with the appropriate compiler flags.\n")
    warning = "W0000 00:00:1796059211.109240    7668 cudart_stub.cc:31] no cuda drivers\n"
    error = "E0000 00:00:1796059212.1 7668 cuda_platform.cc:52] failed call to cuInit\n"
    fatal = "F0000 00:00:1796059212.2 7668 cpu_check.cc:1] needs AVX\n"
    ours = "a warning of our own\n"
    text = preamble + info + ours + warning + error + fatal
    assert _filter_tf_logs(text, 3) == ours + fatal
    assert _filter_tf_logs(text, 2) == ours + error + fatal
    assert _filter_tf_logs(text, 1) == preamble + ours + warning + error + fatal
    assert _filter_tf_logs(text, 0) == text


# --------------------------------------------------------------------------------------------
# What the command computes
# --------------------------------------------------------------------------------------------
def test_default_attacks_need_only_the_required_flags(files, capsys):
    assert main(["evaluate", files["model"], "--data", files["data"], "--eps", "0.05",
                 "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    for label in ("FGSM-Linf (eps=0.05)", "PGD-Linf (eps=0.05)", "APGD-CE-Linf (eps=0.05)",
                  "Worst case (Linf, eps=0.05)"):
        assert label in printed
    assert "value range not given" in printed


def _image_model(tmp_path, seed):
    """A random linear 3-class logits model on 4x4x1 images, saved; ``(rng, model, path)``."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.layers[-1].set_weights([rng.normal(size=(16, 3)).astype(np.float32),
                                  np.zeros(3, np.float32)])
    path = str(tmp_path / "img.keras")
    model.save(path)
    return rng, model, path


def test_json_equals_evaluate_robustness(tmp_path, capsys):
    """The CLI's JSON holds what evaluate_robustness returns on the same examples and attacks
    (image data: the default attacks include square)."""
    rng, model, path = _image_model(tmp_path, 1)
    x = rng.uniform(0.0, 1.0, (40, 4, 4, 1)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), axis=1)
    y[::4] = (y[::4] + 1) % 3  # a quarter wrong
    data = str(tmp_path / "img.npz")
    np.savez(data, x=x, y=y)
    out = str(tmp_path / "r.json")
    assert main(["evaluate", path, "--data", data, "--eps", "0.05", *VR, "--steps", "4",
                 "--max-samples", "30", "--seed", "3", "--batch-size", "16", "--verbose", "1",
                 "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "[4/4] Square-Linf (eps=0.05) on 30 examples" in printed  # the progress bar
    cli = _read_json(out)

    vr = (0.0, 1.0)
    expected = evaluate_robustness(keras.saving.load_model(path), x[:30], y[:30], [
        ks.attacks.FGSM(0.05, value_range=vr, seed=3),
        ks.attacks.PGD(0.05, steps=4, value_range=vr, seed=3),
        ks.attacks.APGD(0.05, steps=10, value_range=vr, seed=3),
        ks.attacks.Square(0.05, queries=200, value_range=vr, seed=3),
    ], batch_size=16).to_dict()
    keys = ("attack", "threat_model", "num_examples", "clean_accuracy", "adversarial_accuracy",
            "accuracy_drop", "success_rate")
    for part in ("results", "worst_cases"):
        assert [{k: r[k] for k in keys} for r in cli[part]] == [
            {k: r[k] for k in keys} for r in expected[part]]
    assert 0.5 < cli["results"][0]["clean_accuracy"] < 1.0
    assert cli["classifier"] == json.loads(json.dumps(expected["classifier"]))
    assert [a["class"] for a in cli["run"]["attacks"]] == ["FGSM", "PGD", "APGD", "Square"]
    assert cli["run"]["num_examples"] == 30 and cli["run"]["value_range"] == [0.0, 1.0]


def test_evaluate_writes_html_report_and_adversarial_examples(tmp_path, capsys):
    """--report writes the self-contained page; --save-adv the examples behind the table."""
    from _browser import static_check

    rng, model, path = _image_model(tmp_path, 2)
    x = rng.uniform(0.0, 1.0, (30, 4, 4, 1)).astype(np.float32)
    y = ks.classifier.as_classifier(model).predict_labels(x)
    data = str(tmp_path / "img.npz")
    np.savez(data, x=x, y=y)
    out, html, adv = (str(tmp_path / n) for n in ("r.json", "r.html", "adv.npz"))
    assert main(["evaluate", path, "--data", data, "--eps", "0.1", *VR, "--steps", "4",
                 "--attacks", "fgsm,pgd", "--output", out, "--report", html,
                 "--save-adv", adv]) == 0
    printed = capsys.readouterr().out
    assert f"HTML report written to {html}" in printed and f"written to {adv}" in printed
    results = _read_json(out)["results"]
    saved = np.load(adv)
    assert list(saved["attacks"]) == [r["attack"] for r in results]
    np.testing.assert_array_equal(saved["x"], x)
    np.testing.assert_array_equal(saved["y"], y)
    clf = ks.classifier.as_classifier(model)
    for i, row in enumerate(results):
        x_adv = saved[f"x_adv_{i}"]
        assert x_adv.shape == x.shape and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
        np.testing.assert_array_equal(saved[f"pred_{i}"], clf.predict_labels(x_adv))
        robust = (saved[f"pred_{i}"] == y) & (saved["clean_pred"] == y)
        assert robust.mean() == pytest.approx(row["adversarial_accuracy"])
    page = static_check(open(html, encoding="utf-8").read())
    table = next(t for t in page["tables"] if t and t[0][0] == "Attack Type")
    assert [r[0] for r in table[1:3]] == [r["attack"] for r in results]
    assert any(t and t[0][0] == "Class" for t in page["tables"])  # per-class accuracy
    assert len(page["images"]) == 1  # the grid of clean and adversarial inputs
    assert path in page["text"] and "Run time" in page["text"]
    # mistakes with the new options are one line, before anything runs
    assert "--report" in _usage_error(capsys, ["evaluate", path, "--data", data, "--eps", "0.1",
                                               "--report", str(tmp_path / "no" / "r.html")])
    assert "different files" in _usage_error(capsys, [
        "evaluate", path, "--data", data, "--eps", "0.1", "--output", out, "--report", out])


@pytest.mark.parametrize("activation, output", [
    ("sigmoid", "one sigmoid probability"),
    (None, "one logit"),
])
def test_single_output_binary_models(tmp_path, capsys, activation, output):
    """p = sigmoid(x0 - x1) is right on every point; PGD at eps 0.3 in [0, 1] flips them all."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation=activation)])
    model.layers[-1].set_weights([np.array([[1.0], [-1.0]], np.float32), np.zeros(1, np.float32)])
    path = str(tmp_path / "binary.keras")
    model.save(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (200, 2)).astype(np.float32)
    y = (x[:, 0] > x[:, 1]).astype(np.int64)[:, None]  # (n, 1) labels
    data = str(tmp_path / "binary.npz")
    np.savez(data, x=x, y=y)
    out = str(tmp_path / "r.json")
    assert main(["evaluate", path, "--data", data, "--attacks", "pgd", "--eps", "0.3", *VR,
                 "--verbose", "0", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert output in printed and "2 classes" in printed
    report = _read_json(out)
    pgd = report["results"][0]
    assert pgd["attack"] == "PGD-Linf (eps=0.3)"
    assert pgd["clean_accuracy"] == 1.0 and pgd["adversarial_accuracy"] == 0.0
    assert report["classifier"]["num_classes"] == 2


def test_model_with_keras_secure_layers_in_a_fresh_process(tmp_path):
    """A .keras file with a keras_secure layer loads (the CLI imports keras_secure first); the
    output names the adaptive path, and stderr holds no TensorFlow logs."""
    model = keras.Sequential([keras.Input((2,)),
                              ks.layers.BitDepthReduction(3, (0, 1), name="bits"),
                              keras.layers.Dense(3)])
    model.layers[-1].set_weights([np.array([[2.0, -1.0, 0.0], [-1.0, 2.0, 0.5]], np.float32),
                                  np.zeros(3, np.float32)])
    path = str(tmp_path / "defended.keras")
    model.save(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (20, 2)).astype(np.float32)
    data = str(tmp_path / "d.npz")
    np.savez(data, x=x, y=np.argmax(model.predict(x, verbose=0), axis=1))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    exe = os.path.join(os.path.dirname(sys.executable), "keras-secure")
    result = _run([exe, "evaluate", path, "--data", data, "--attacks", "fgsm", "--eps", "0.1",
                   *VR], timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "BitDepthReduction 'bits'" in result.stdout
    # not a terminal: --verbose defaults to 2, one progress line per attack and one for the
    # diagnostics, nothing else
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("[1/1] FGSM-Linf (eps=0.1)"), result.stderr
    assert lines[1].startswith("[diagnostics] gradient-masking checks ..."), result.stderr


@pytest.mark.slow
def test_quick_demo_writes_a_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Worst case" in printed
    report = (out / "report.md").read_text()
    for attack in ("FGSM", "PGD", "MI-FGSM", "APGD", "Square", "C&W", "DeepFool"):
        assert attack in report
    assert (out / "ch1_accuracy_under_attack.png").stat().st_size > 1000
    assert (out / "ch1_accuracy_vs_eps.png").stat().st_size > 1000
    assert (out / "ch2_certified_accuracy.png").stat().st_size > 1000
    assert (out / "ch3_robust_accuracy_per_epoch.png").stat().st_size > 1000
    for title in ("Input Preprocessing", "Certified accuracy", "Adversarial Training",
                  "Defensive Distillation"):
        assert title in report
    results = json.loads((out / "results.json").read_text())
    rows = results["chapter1"]["results"]
    pgd = next(r for r in rows if r["attack"].startswith("PGD"))
    assert pgd["adversarial_accuracy"] < pgd["clean_accuracy"] - 0.2
    training = {r["training"].split(" (")[0]: r for r in results["chapter3_training"]}
    # quick mode: 4 epochs of PGD-5 training, 100 test digits (one standard error of a
    # difference of two accuracies near 0.6-0.8 is about 0.065): measured +0.19
    assert (training["Adversarial training"]["pgd_ce"]
            > training["Standard training"]["pgd_ce"] + 0.1)
    assert "vanishing_gradients" in training["Defensive distillation"]["flags"]
    assert set(results["chapter2_certified"]) >= {"0.12", "0.25", "0.5"}
    privacy = results["chapter4_privacy"]
    assert [r["model"] for r in privacy] == ["Non-private (SGD)", "DP-SGD (target eps = 8)",
                                            "DP-SGD (target eps = 1)"]
    assert privacy[0]["epsilon"] is None  # not private
    assert 7.0 < privacy[1]["epsilon"] <= 8.0 and 0.8 < privacy[2]["epsilon"] <= 1.0
    # utility falls with epsilon; every audit ran
    assert privacy[0]["test_accuracy"] > privacy[2]["test_accuracy"]
    assert all(0.0 <= r["auc_threshold"] <= 1.0 for r in privacy)
    assert "privacy / utility trade-off" in report
    rl = results["chapter5_rl"]
    assert [r["attack"].split(" (")[0] for r in rl["table3"]] == [
        "none", "random state noise", "adversarial states", "learned adversary",
        "reward manipulation"]
    assert all(r["mean"] >= 8 and 0 <= r["retention"] for r in rl["table3"])
    from keras_secure.demo.ch5_rl import RECIPES  # every defence: all but PPO and the attack

    assert [r["defence"] for r in rl["table4"]] == [
        d for k, (_, d) in RECIPES.items() if k not in ("ppo", "reward_tampering")]
    assert "sensor-offset randomization" in rl["table4"][4]["defence"]
    assert all(r["restoration"] >= 0 for r in rl["table4"])
    assert rl["seeds"] == 1
    assert "Table 3 - attacks on a PPO CartPole agent" in report
    # the HTML page: every chapter, self-contained, rendered by a real browser when there is one
    from _browser import static_check

    html = (out / "report.html").read_text()
    page = static_check(html)
    assert {f"chapter-{n}" for n in range(1, 10)} <= page["ids"]
    assert "Per-class clean and robust accuracy" in report and "Class" in page["text"]
    assert (out / "ch1_adversarial_examples.png").stat().st_size > 1000
    assert len(page["images"]) == report.count("![")  # every picture of report.md, embedded
    assert [c["number"] for c in results["run"]["chapters"]] == list(range(1, 10))
    # chapters 4 and 6-9 ran in the child process: their tables and results came back
    assert [r["model"] for r in results["chapter_masking"]] == ["SL", "RL", "SL-adv", "RL-adv"]
    assert all(isinstance(r["flags"], list) for r in results["chapter_masking"])
    assert results["chapter_poisoning"] and results["chapter_explain_table5"]
    for title in ("Seed 002", "Data poisoning", "Explainability", "Federated learning"):
        assert title in report
    federated = results["chapter_federated"]

    def final(history, key):
        return history["rounds"][-1][key]

    # model replacement wins against FedAvg, the robust aggregators refuse it, Bulyan cannot
    # run with 2 attackers among 10 clients (n >= 4f + 3) and says so
    aggregators = federated["aggregators"]
    assert final(aggregators["fedavg"], "backdoor_success") > 0.5
    for name in ("fedmedian", "krum"):
        assert final(aggregators[name], "backdoor_success") < 0.3
    assert "n >= 4f + 3" in aggregators["bulyan"]["refused"]
    eps = [final(h, "epsilon") for h in federated["dp"].values()]
    assert len(eps) == 2 and eps[0] > eps[1] > 0  # more noise, less epsilon
    from _browser import BROWSER, check_in_browser

    if BROWSER is not None:
        target = os.environ.get("KERAS_SECURE_SCREENSHOT_DIR")
        check_in_browser(str(out / "report.html"),
                         os.path.join(target, "report.png") if target else None)


def test_minimal_norm_attacks_on_a_smoothed_model_are_one_line(tmp_path, capsys):
    base = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model = keras.Sequential([keras.Input((2,)),
                              ks.layers.RandomizedSmoothing(base, sigma=0.1, seed=0)])
    path = str(tmp_path / "smoothed.keras")
    model.save(path)
    data = str(tmp_path / "d.npz")
    np.savez(data, x=np.full((4, 2), 0.5, np.float32), y=np.array([0, 1, 0, 1]))
    err = _usage_error(capsys, ["evaluate", path, "--data", data, "--eps", "0.1",
                                "--attacks", "deepfool", "--value-range", "0", "1"])
    assert "coin flip" in err


def test_evaluate_suite_surrogate_and_diagnostics(cnn, eval_set, tmp_path, capsys):
    """--suite runs the standard suite (cumulative rows), --surrogate adds the transfer check,
    and the gradient-masking checks are printed and written to the JSON report."""
    x, y = eval_set
    model_path, surrogate = str(tmp_path / "cnn.keras"), str(tmp_path / "surrogate.keras")
    cnn.save(model_path)
    cnn.save(surrogate)
    data = str(tmp_path / "data.npz")
    np.savez(data, x=x[:12], y=y[:12])
    out = str(tmp_path / "report.json")
    code = main(["evaluate", model_path, "--data", data, "--suite", "standard", "--eps", "0.1",
                 *VR, "--surrogate", surrogate, "--output", out, "--verbose", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "+ APGD-T-Linf (eps=0.1)" in printed and "+ Square-Linf (eps=0.1)" in printed
    assert "`transfer_beats_white_box` [Linf, eps=0.1]: ok" in printed
    saved = _read_json(out)
    assert saved["suite"]["version"] == "standard"
    assert saved["masking_suspected"] is False
    assert [r["cumulative"] for r in saved["results"]] == [True] * 4
    assert "needs --value-range" in _usage_error(
        capsys, ["evaluate", model_path, "--data", data, "--suite", "standard", "--eps", "0.1"])
    assert "either --suite or --attacks" in _usage_error(
        capsys, ["evaluate", model_path, "--data", data, "--suite", "standard", "--eps", "0.1",
                 "--attacks", "pgd", *VR])
    assert "--surrogate" in _usage_error(
        capsys, ["evaluate", model_path, "--data", data, "--eps", "0.1", "--surrogate",
                 str(tmp_path / "missing.keras")])
