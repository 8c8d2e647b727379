import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_secure.cli import main


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
    report = json.loads(open(out).read())
    assert [r["attack"] for r in report["results"]] == [
        "FGSM-Linf (eps=0.1)", "PGD-Linf (eps=0.1)", "DeepFool-L2"]
    assert report["results"][0]["num_examples"] == 40


def test_evaluate_command_errors(cnn, eval_set, tmp_path):
    x, y = eval_set
    data = str(tmp_path / "data.npz")
    np.savez(data, inputs=x, y=y)
    with pytest.raises(SystemExit, match="--attacks"):
        main(["evaluate", "m.keras", "--data", data, "--attacks", "fgsm,bim", "--eps", "0.1"])
    with pytest.raises(SystemExit, match="lacks arrays"):
        main(["evaluate", "m.keras", "--data", data, "--eps", "0.1"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["evaluate", "m.keras", "--data", str(tmp_path / "no.npz"), "--eps", "0.1"])
    np.savez(data, x=x, y=y)
    with pytest.raises(SystemExit, match="`eps` must be a number > 0"):
        main(["evaluate", "m.keras", "--data", data, "--eps", "-1"])


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "keras-secure")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout and "evaluate" in result.stdout


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
    training = {r["training"]: r for r in results["chapter3_training"]}
    assert (training["Adversarial training (PGD-7, Madry)"]["pgd_ce"]
            > training["Standard training"]["pgd_ce"] + 0.2)
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
        "none", "random state noise", "adversarial states", "reward manipulation"]
    assert all(r["mean"] >= 8 and 0 <= r["retention"] for r in rl["table3"])
    assert len(rl["table4"]) == 4 and all(r["restoration"] >= 0 for r in rl["table4"])
    assert "Table 3 - attacks on a DQN CartPole agent" in report
