"""bench/real_noise.py without training: the runs it starts (resuming unfinished ones), the
table it writes from finished runs, and the refusal to mix in a run of another budget or options."""
import json
import os
import re
import sys
import time

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import real_noise  # noqa: E402


def unfinished_run(folder, method, epochs, seed, seconds, options=()):
    """A run's folder as a killed run leaves it: its config, a checkpoint and the driver's record."""
    os.makedirs(folder)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump({"method": method, "seed": seed, "hyperparameters": {"epochs": epochs}}, f)
    open(os.path.join(folder, "checkpoint.pt"), "wb").close()
    real_noise.write_driver_record(folder, {"options": list(options), "seconds": seconds})


def finished_run(folder, method, epochs, seed, test_acc, seconds, options=()):
    unfinished_run(folder, method, epochs, seed, seconds, options)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump({"model": "small_cnn", "test_acc": test_acc, "best_test_acc": test_acc + 0.01,
                   "det_precision": 0.5, "det_recall": 0.75, "det_f1": 0.6}, f)


def test_finished_runs_make_the_table_and_nothing_is_trained_again(tmp_path, capsys):
    out = tmp_path / "bench"
    for method, seed, acc in (("ce", 0, 0.589), ("jnpl", 0, 0.445), ("ce", 1, 0.6), ("jnpl", 1, 0.62)):
        finished_run(str(out / f"worst_{method}_seed{seed}"), method, 20, seed, acc, 180.0 + 60 * seed)
    real_noise.main(["--data-dir", str(tmp_path), "--epochs", "20", "--out", str(out), "--methods", "ce", "jnpl",
                     "--variants", "worst", "--seeds", "0", "1"])
    table = (out / "table.md").read_text()
    assert "| worst | ce | 0 | small_cnn | 58.9% / 59.9% |  | 0.500 / 0.750 / 0.600 | 3 |" in table
    assert "| worst | jnpl | 0 | small_cnn | 44.5% / 45.5% | -14.4 |" in table
    assert "| worst | jnpl | 1 | small_cnn | 62.0% / 63.0% | +2.0 | 0.500 / 0.750 / 0.600 | 4 |" in table
    assert "| worst | jnpl | mean of 2 | small_cnn | 53.2% / 54.2% | -6.2 | 0.500 / 0.750 / 0.600 | 4 |" in table
    assert "| worst | ce | mean of 2 | small_cnn | 59.5% / 60.5% |  |" in table
    assert "started" not in capsys.readouterr().out


def test_a_run_of_another_budget_is_refused(tmp_path):
    out = tmp_path / "bench"
    finished_run(str(out / "worst_ce_seed0"), "ce", 10, 0, 0.5, 60.0)
    with pytest.raises(SystemExit, match="10 epochs, seed 0: use another --out for 20 epochs"):
        real_noise.main(["--data-dir", str(tmp_path), "--epochs", "20", "--out", str(out), "--methods", "ce",
                         "--variants", "worst"])


@pytest.mark.parametrize("recorded", [None, ["--no-augment"]])
def test_a_run_of_other_options_is_refused(tmp_path, recorded):
    """Its numbers would stand under the header of these options (they were reused silently)."""
    out = tmp_path / "bench"
    finished_run(str(out / "worst_ce_seed0"), "ce", 20, 0, 0.5, 60.0, recorded or ())
    if recorded is None:
        os.remove(out / "worst_ce_seed0" / "driver.json")
    given = "no record of its options (driver.json)" if recorded is None else "options ['--no-augment']"
    with pytest.raises(SystemExit, match=rf"holds a run with {re.escape(given)}: use another --out for options "
                                         rf"\['--lr', '0.01'\]"):
        real_noise.main(["--data-dir", str(tmp_path), "--epochs", "20", "--out", str(out), "--methods", "ce",
                         "--variants", "worst", "--", "--lr", "0.01"])


def test_an_unfinished_run_is_resumed_and_a_failure_stops_the_other_runs(tmp_path, monkeypatch):
    """A killed run's folder (a checkpoint, no summary) was started again without --resume, which
    engine.train refuses; and a failed run left the other runs training on."""
    out = tmp_path / "bench"
    unfinished_run(str(out / "worst_ce_seed0"), "ce", 20, 0, 30.0)
    args = real_noise.parse_args(["--data-dir", str(tmp_path), "--epochs", "20", "--out", str(out)])
    assert real_noise.command(args, "ce", "worst", 0)[-1] == "--resume"
    assert "--resume" not in real_noise.command(args, "jnpl", "worst", 0)

    def command(args, method, variant, seed):  # ce trains on, jnpl fails
        return [sys.executable, "-c", "import time; time.sleep(60)" if method == "ce" else "raise SystemExit(3)"]

    monkeypatch.setattr(real_noise, "command", command)
    began = time.time()
    with pytest.raises(SystemExit, match="worst jnpl seed 0 failed \\(exit 3\\)"):
        real_noise.main(["--data-dir", str(tmp_path), "--epochs", "20", "--out", str(out), "--methods", "ce",
                         "jnpl", "--variants", "worst", "--jobs", "2"])
    assert time.time() - began < 30, "ce was stopped"
    assert 30.0 < real_noise.driver_record(str(out / "worst_ce_seed0"))["seconds"] < 60.0


def test_each_run_is_the_command_line_with_the_data_the_labels_and_the_extra_options(tmp_path):
    args = real_noise.parse_args(["--data-dir", "data", "--epochs", "5", "--out", str(tmp_path), "--seeds", "2",
                                  "--", "--model", "small_cnn"])
    command = real_noise.command(args, "bldr", "aggre", 2)
    assert command[1:3] == ["-m", "engine.train"]
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags == {"--method": "bldr", "--dataset": "cifar10", "--data-dir": os.path.abspath("data"),
                     "--noise": "cifar10n", "--noise-variant": "aggre", "--epochs": "5", "--seed": "2",
                     "--out": str(tmp_path / "aggre_bldr_seed2"), "--model": "small_cnn"}
    with pytest.raises(SystemExit):
        real_noise.parse_args(["--data-dir", "data", "--epochs", "0", "--out", str(tmp_path)])
