"""The Python API: engine.fit on images and on feature vectors, the label-issues table,
find_label_issues with cleanlab's conventions, a method defined outside the package, and the
README's examples run as written."""
import enum
import os
import pickle
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import engine
from engine.api import label_quality_scores
from engine.methods.base import Stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["index", "given_label", "predicted_label", "label_quality", "is_label_issue"]


def readme_block(heading):
    """The first ```python block after `heading` in README.md."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index(f"\n{heading}\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as feature vectors, 30% of the training labels moved by a random shift."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    noisy = y.copy()
    flip = rng.random(len(y)) < 0.3
    noisy[flip] = (y[flip] + rng.integers(1, 10, flip.sum())) % 10
    return x[:1400], noisy[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def gce_module(tmp_path_factory):
    """README's GCE method as the module `gce` in a folder on sys.path."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / "gce.py").write_text(readme_block("## Your own method"))
    sys.path.insert(0, str(folder))
    import gce

    yield folder, gce
    sys.path.remove(str(folder))


def test_fit_on_feature_vectors_learns_and_finds_the_wrong_labels(digits):
    x, noisy, true, x_test, y_test = digits
    result = engine.fit(x, noisy, method="jnpl", x_test=x_test, y_test=y_test, true_labels=true, epochs=12)
    assert result.summary["model"] == "mlp" and result.config.hyperparameters.model == "mlp"
    assert result.summary["test_acc"] > 0.85, result.summary
    assert result.summary["det_f1"] > 0.85, result.summary
    table = result.label_issues()
    assert list(table.columns) == COLUMNS + ["true_label"] and len(table) == len(x)
    assert table["label_quality"].between(0, 1).all() and table["index"].tolist() == list(range(len(x)))
    wrong = table["given_label"] != table["true_label"]
    assert (table["is_label_issue"] & wrong).sum() / table["is_label_issue"].sum() == pytest.approx(
        result.summary["det_precision"])
    assert isinstance(result.metrics, pd.DataFrame) and len(result.metrics) == 12
    assert result.summary["best_test_acc"] == result.metrics["test_acc"].max()
    probs = result.predict_proba(x_test)
    assert probs.shape == (len(x_test), 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y_test).mean() == pytest.approx(result.summary["test_acc"])
    assert np.array_equal(result.predict(torch.from_numpy(x_test)), probs.argmax(1))
    # Printed, it says what the run gave, in one line (not the model, the table or the [N, C] probabilities).
    text = repr(result)
    assert text.startswith("FitResult(method='jnpl', dataset='arrays', model='mlp', epochs=12, test_acc=0.")
    assert f"det_f1={result.summary['det_f1']:.4g}" in text and "\n" not in text and len(text) < 500


def colour_folder(root, per_class=20):
    """root/<red|green|blue>/<i>.jpg: 40 x 48 noise images, each tinted by its class's channel
    (learnable in a few steps); root/clean_paths.txt trusts one image per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for channel, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
            image[..., channel] += 150
            Image.fromarray(image).save(root / name / f"{i}.jpg", quality=90)
    (root / "clean_paths.txt").write_text("red/0.jpg\ngreen/0.jpg\nblue/0.jpg\n")


@pytest.mark.parametrize("stream", [False, True])
def test_fit_on_a_loaded_folder_of_jpegs(tmp_path, stream):
    """engine.fit takes what load_dataset loaded, streamed or decoded: its labels, test split,
    class names, file paths and trusted samples; the model predicts inputs of the same kind."""
    from engine.data.datasets import ImageFiles, load_dataset

    colour_folder(tmp_path / "photos")
    data = load_dataset("folder", str(tmp_path / "photos"), image_size=32, stream=stream)
    result = engine.fit(data, method="ce", epochs=3, batch_size=8)
    assert result.summary["dataset"] == "folder" and result.summary["clean_subset_size"] == 3
    assert (result.predict(data.x_test) == data.y_test).mean() == pytest.approx(result.summary["test_acc"])
    assert result.summary["test_acc"] >= 0.9, result.summary
    table = result.label_issues()
    assert sorted(table["path"]) == sorted(data.train_paths) and len(table) == 48
    assert sorted(table["path"][table["clean_subset"]]) == ["blue/0.jpg", "green/0.jpg", "red/0.jpg"]
    assert (table["given_class"] == table["path"].str.split("/").str[0]).all()
    # cleanlab's conventions over the 60 images as given: the 12 held out as the test share are in
    # the mask, never flagged, and the ranked indices are its True positions (10 labels moved).
    noisy = data.y_train.copy()
    noisy[1:40:4] = (noisy[1:40:4] + 1) % 3
    mask = engine.find_label_issues(data, noisy, method="ce", epochs=3, batch_size=8)
    ranked = engine.find_label_issues(data, noisy, method="ce", epochs=3, batch_size=8,
                                      return_indices_ranked_by="label_quality")
    assert mask.dtype == bool and mask.shape == (60,) and not mask[np.setdiff1d(np.arange(60), data.train_rows)].any()
    assert mask.sum() >= 5 and sorted(ranked) == np.flatnonzero(mask).tolist()
    files = ImageFiles(str(tmp_path / "photos"), ["red/3.jpg", "blue/5.jpg"], 32)  # decoded where the data were
    assert result.predict(files).tolist() == [data.class_names.index("red"), data.class_names.index("blue")]
    copy = pickle.loads(pickle.dumps(result))  # its loaders (DALI pipelines where streamed) stay behind
    assert np.array_equal(copy.predict_proba(files), result.predict_proba(files))
    pd.testing.assert_frame_equal(copy.label_issues(), table)
    assert result.predict_proba(ImageFiles(str(tmp_path / "photos"), [], 32)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"^ImageFiles paths: expected a list of paths relative to .*photos, got one "
                                         r"path 'red/3.jpg'; give \['red/3.jpg'\]$"):
        ImageFiles(str(tmp_path / "photos"), "red/3.jpg", 32)
    if stream:
        with pytest.raises(ValueError, match=r"^x: the model trained on image files at 32 px: give image files"):
            result.predict(np.zeros((2, 32, 32, 3), np.uint8))
    for options, message in (({"x_test": data.x_test}, "x_test: a loaded data set brings its own"),
                             ({"clean_indices": [0]}, r"clean_indices: the data set has its own clean subset "
                                                      r"\(clean_paths.txt, 3 samples\)"),
                             ({"labels": np.full(48, 3)}, "labels: the data set has 3 classes, found label 3")):
        with pytest.raises(ValueError, match=message):
            engine.fit(data, method="ce", epochs=1, **options)


@pytest.mark.parametrize("method", ["ce", "l2b", "pudistill"])
def test_a_fit_result_pickles_for_joblib_and_multiprocessing_workers(digits, method):
    """A worker returns its FitResult pickled: the copy predicts and gives the label issues as the
    result does (its training loaders, a generator and L2B's clean batches, stay behind)."""
    x, noisy, _, x_test, _ = digits
    result = engine.fit(x, noisy, method=method, epochs=2, clean_indices=np.arange(100), seed=1)
    copy = pickle.loads(pickle.dumps(result))
    assert np.array_equal(copy.predict_proba(x_test), result.predict_proba(x_test))
    pd.testing.assert_frame_equal(copy.label_issues(), result.label_issues())
    assert copy.summary == result.summary and np.array_equal(copy.pred_probs, result.pred_probs)


def test_fit_trains_when_a_batch_would_hold_one_sample():
    """513 feature vectors: a last training batch (128) and evaluation batch (512) of one sample,
    which BatchNorm1d refuses in training mode."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(513, 5)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    result = engine.fit(x, labels, method="ce", epochs=3, verbose=False)
    assert (result.predict(x) == labels).mean() > 0.9


@pytest.mark.parametrize("count, sizes", [(9, [4, 4]), (10, [4, 4, 2]), (8, [4, 4])])
def test_training_batches_of_the_run_and_of_a_methods_sub_trainings_never_hold_one_sample(count, sizes):
    from engine.data.training_data import from_arrays
    from engine.methods import CE
    from engine.trainer import Trainer

    x = np.random.default_rng(0).normal(size=(count, 3)).astype(np.float32)
    trainer = Trainer(CE(epochs=1, batch_size=4, model="mlp"), from_arrays(x, np.arange(count) % 2))
    assert [len(indices) for _, indices in trainer.train_loader] == sizes
    sub_training = trainer.preparation().loader(np.arange(count), shuffle=True, augment=True)
    assert [len(indices) for _, indices in sub_training] == sizes  # PU-distillation's teachers, ...
    assert [len(indices) for _, indices in trainer.preparation().loader(np.arange(count))] == [count]  # evaluation


@pytest.mark.parametrize("augment", [True, False])
def test_augment_off_trains_on_the_images_as_given(augment):
    """augment=False (--no-augment): the run's training batches and those of a method's
    sub-trainings are the normalized images; with it on (the default), random crops of them."""
    from engine.data.training_data import from_arrays
    from engine.methods import CE
    from engine.trainer import Trainer

    x = np.random.default_rng(0).integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    trainer = Trainer(CE(epochs=1, batch_size=8, augment=augment), from_arrays(x, np.arange(40) % 2))
    mean, std = (torch.tensor(part, dtype=torch.float32) for part in (trainer.data.mean, trainer.data.std))
    sub_training = trainer.preparation().loader(np.arange(40), shuffle=True, augment=True)
    for batches in (trainer.train_loader, sub_training):
        as_given = [torch.allclose(images, ((torch.from_numpy(x[indices.numpy()]).float() - mean) / std)
                                   .permute(0, 3, 1, 2), atol=1e-5) for images, indices in batches]
        assert len(as_given) == 5 and all(as_given) != augment and any(as_given) != augment


@pytest.mark.parametrize("model,height,width", [("small_cnn_dense", 20, 30), ("small_cnn", 28, 2)])
def test_fit_on_images_that_are_not_square(model, height, width):
    x = np.random.default_rng(0).integers(0, 256, size=(16, height, width), dtype=np.uint8)
    result = engine.fit(x, np.arange(16) % 2, method="ce", epochs=1, model=model, batch_size=8)
    assert result.predict_proba(x[:3]).shape == (3, 2)


def test_fit_on_images_with_class_names_and_outputs(tmp_path, capsys):
    from engine.data.datasets import load_dataset

    data = load_dataset("mnist5k")
    x, y = data.x_train[:600], data.y_train[:600]
    noisy = (y + (np.arange(600) % 5 == 0)) % 10  # every fifth label moved to the next class
    names = [f"digit {c}" for c in range(10)]
    result = engine.fit(torch.from_numpy(x[..., 0]), noisy, method="ce", epochs=2, clean_indices=[0, 1, 2],
                        class_names=names, true_labels=y, out=str(tmp_path), lr=0.1, verbose=True)
    assert "epoch 2/2 [ce]" in capsys.readouterr().out
    table = result.label_issues()
    assert list(table.columns) == COLUMNS + ["true_label", "given_class", "predicted_class", "clean_subset"]
    assert table["given_class"][5] == f"digit {noisy[5]}" and not table["is_label_issue"][:3].any()
    assert table["predicted_class"].tolist() == [names[c] for c in table["predicted_label"]]
    assert (table["predicted_label"] != table["given_label"]).any(), "the two columns must be told apart"
    hyperparameters = result.config.hyperparameters
    assert (hyperparameters.lr, hyperparameters.model, hyperparameters.clean_size) == (0.1, "small_cnn", 3)
    for name in ("config.yaml", "metrics.csv", "summary.json", "label_issues.csv", "separation.png", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_size > 0
    written = pd.read_csv(tmp_path / "label_issues.csv")
    assert written["is_label_issue"].tolist() == table["is_label_issue"].tolist()
    assert result.predict_proba(x[:3]).shape == (3, 10)
    with pytest.raises(ValueError, match="expected inputs of shape"):
        result.predict_proba(np.zeros((2, 32, 32, 3), dtype=np.uint8))


def test_clean_indices_of_a_loaded_data_set_name_samples_as_the_label_issues_index_does(tmp_path):
    from engine.data.datasets import load_dataset

    x = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(100) % 2)
    data = load_dataset("npz", str(tmp_path / "d.npz"))  # holds out 20 samples as the test share
    trusted = data.train_rows[[3, 10, 50, 70]]
    assert (trusted != [3, 10, 50, 70]).any(), "positions in the data as given, not in the training part"
    mask = np.isin(np.arange(100), trusted)
    for given in (trusted, mask):
        table = engine.fit(data, method="ce", epochs=1, clean_indices=given).label_issues()
        assert table["index"][table["clean_subset"]].tolist() == sorted(trusted.tolist())
    held_out = np.setdiff1d(np.arange(100), data.train_rows)[0]
    with pytest.raises(ValueError, match=f"^clean_indices: sample {held_out} is in the test share held out of the data "
                                         r"\(20 samples\); trust training samples only"):
        engine.fit(data, method="ce", epochs=1, clean_indices=[held_out])
    with pytest.raises(ValueError, match="^clean_indices: all 80 training samples are in the clean subset"):
        engine.fit(data, method="ce", epochs=1, clean_indices=data.train_rows)
    with pytest.raises(ValueError, match=r"^clean_indices: 80 values of 0 and 1, one per training sample: give a mask "
                                         r"of one value per sample as given \(100, a test share held out of them\)"):
        engine.fit(data, method="ce", epochs=1, clean_indices=(data.y_train == 1).astype(int))
    with pytest.raises(ValueError, match=r"^clean_indices \(positions in the data as given\): a boolean mask needs one "
                                         r"value per sample \(100\)"):
        engine.fit(data, method="ce", epochs=1, clean_indices=data.y_train == 1)


def test_fit_leaves_the_callers_random_generator_alone(digits):
    x, noisy, _, _, _ = digits
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    engine.fit(x, noisy, method="ce", epochs=1)  # seeds torch's generator from its own seed inside
    assert torch.equal(torch.rand(3), expected)


def test_find_label_issues_follows_cleanlab(digits):
    x, noisy, true, _, _ = digits
    options = dict(method="ce", epochs=6, seed=2)
    result = engine.fit(x, noisy, **options)
    mask = engine.find_label_issues(x, noisy, **options)
    table = result.label_issues()
    assert mask.dtype == bool and mask.shape == (len(x),)
    assert np.array_equal(mask, table["is_label_issue"].to_numpy()), "training is deterministic on the CPU"
    assert (noisy != true)[mask].mean() > 0.8 and mask[noisy != true].mean() > 0.6
    for ranking in ("label_quality", "self_confidence", "normalized_margin"):
        ranked = engine.find_label_issues(x, noisy, return_indices_ranked_by=ranking, **options)
        assert sorted(ranked.tolist()) == np.flatnonzero(mask).tolist()
        scores = (table["label_quality"].to_numpy() if ranking == "label_quality"
                  else label_quality_scores(noisy, result.pred_probs, ranking))
        assert np.all(np.diff(scores[ranked]) >= 0), f"{ranking}: most likely wrong first"
    probs = result.pred_probs
    others = np.where(np.eye(10, dtype=bool)[noisy], -1, probs).max(1)
    expected = (probs[np.arange(len(x)), noisy] - others + 1) / 2  # cleanlab's normalized margin
    np.testing.assert_allclose(label_quality_scores(noisy, probs, "normalized_margin"), expected)
    with pytest.raises(ValueError, match="return_indices_ranked_by must be"):
        engine.find_label_issues(x, noisy, return_indices_ranked_by="confidence")


def test_a_method_defined_outside_the_package_trains_through_the_api(digits, gce_module):
    x, noisy, true, x_test, y_test = digits
    _, gce = gce_module
    result = engine.fit(x, noisy, method=gce.GCE(q=0.5), x_test=x_test, y_test=y_test, true_labels=true, epochs=8)
    assert result.config.hyperparameters.q == 0.5 and result.summary["method"] == "gce"
    assert result.summary["test_acc"] > 0.8, result.summary
    with pytest.raises(ValueError, match=r"GCEConfig.q must be in \(0, 1\]"):
        engine.fit(x, noisy, method=gce.GCE, q=1.5, epochs=1)


@pytest.mark.parametrize("call,message", [
    (lambda x, y: engine.fit(x.astype(np.float32)[..., None, None].repeat(2, 2), y), "must be uint8"),
    (lambda x, y: engine.fit(x.astype(np.float32)[..., None].repeat(2, 2), y), "x: images [N, H, W(, C)] must be uint8 "
     "(0-255), got float32; convert them, e.g. (x * 255).round().astype(np.uint8) for floats in [0, 1], or pass "
     "feature vectors x.reshape(len(x), -1)"),
    (lambda x, y: engine.find_label_issues(x, y, filter_by="prune_by_noise_rate"), "find_label_issues: cleanlab's "
     "filter_by is not an option here"),
    (lambda x, y: engine.find_label_issues(x, y, pred_probs=np.ones((len(y), 10)) / 10), "find_label_issues: "
     "cleanlab's pred_probs is not an option here"),
    (lambda x, y: engine.fit(x, y[:-1]), "labels: expected 1400 labels"),
    (lambda x, y: engine.fit(x, y.astype(float) + 0.5), "labels: labels must be integer class indices 0, 1, ..., "
                                                        "got float64"),
    (lambda x, y: engine.fit(x, y.astype(float)), "got float64 (pass labels.astype(int))"),
    (lambda x, y: engine.fit(x, y % 2 == 0), "got bool (pass labels.astype(int))"),
    (lambda x, y: engine.fit(x, np.array(["cat", "dog"])[y % 2]), "got <U3 (class names: map them to indices, e.g. "
                                                                  "names, labels = np.unique(labels, return_inverse"),
    (lambda x, y: engine.fit(x, y, true_labels=list(map(str, y))), "true_labels: labels must be integer class "),
    (lambda x, y: engine.fit(x, y, x_test=x[:5]), "x_test and y_test go together"),
    (lambda x, y: engine.fit(x, y, x_test=x[:5, :10], y_test=y[:5]), "x_test: samples of shape"),
    (lambda x, y: engine.fit(x, y, method="l2b"), "method l2b needs a clean subset"),
    (lambda x, y: engine.fit(x, y, method="l2b", clean_indices=np.flatnonzero(y != 4)[:50]),
     "has none of class 4: raise clean_size or clean_fraction (engine.fit: add samples of class 4 to clean_indices)"),
    (lambda x, y: engine.fit(x, y, clean_indices=[5000]), "clean_indices: must lie in [0, 1400)"),
    (lambda x, y: engine.fit(x, y, clean_indices=[0.5, 2.0]), "clean_indices: expected a 1-D array of integer"),
    (lambda x, y: engine.fit(x, y, clean_indices=[[0, 1], [2, 3]]), "clean_indices: expected a 1-D array"),
    (lambda x, y: engine.fit(x, y, clean_indices=np.ones(5, bool)), "clean_indices: a boolean mask needs one value"),
    (lambda x, y: engine.fit(x, y, clean_indices=np.ones(len(x), bool)), "clean_indices: all 1400 samples are in"),
    (lambda x, y: engine.fit(x, y, method="l2b", clean_indices=np.arange(len(x))), "clean_indices: all 1400"),
    (lambda x, y: engine.fit(x, y, x_test=x[:0], y_test=y[:0]), "x_test: no samples"),
    (lambda x, y: engine.fit(x, np.where(np.arange(len(y)) == 3, 10**5, y)), "labels: labels must be < 100000"),
    (lambda x, y: engine.fit(x, y, x_test=x[:2], y_test=[0, 10**7]), "y_test: labels must be < 100000"),
    (lambda x, y: engine.fit(x, y, x_test=x[:5], y_test=np.arange(6, 11)), "y_test: label 10 is no class of the training "
     "labels (0..9); the test set may lack a class, not have another"),  # 1-based: it added an 11th class
    (lambda x, y: engine.fit(x, y, true_labels=y - 2), "true_labels: labels must be >= -1"),
    (lambda x, y: engine.fit(x, y, true_labels=y + 1), "true_labels: label 10 is no class of the given labels or "
     "y_test (0..9)"),  # it added an 11th class, sized by the truth
    (lambda x, y: engine.fit(x, y, true_labels=y + 1, class_names=list("abcdefghij")), "true_labels: label 10 is no"),
    (lambda x, y: engine.fit(x, y - 1), "labels: labels must be >= 0"),
    (lambda x, y: engine.fit(x, np.full_like(y, 3)), "labels: every label is 3; a classifier needs samples of at least "
                                                      "2 classes"),
    (lambda x, y: engine.fit(x, y, device="gpu"), "device: expected 'cpu', 'cuda' or 'cuda:N'"),
    (lambda x, y: engine.fit(x, y, out=""), "out: expected a folder"),
    (lambda x, y: engine.fit(x, y, out=REPO + "/README.md"), "out: " + REPO + "/README.md is a file"),
    (lambda x, y: engine.fit(x, y, out="/proc/version/run"), "out: /proc/version/run cannot be written"),
    (lambda x, y: engine.fit(x, y, method="ce", batch_size=1), "batch_size 1: model mlp's BatchNorm1d needs"),
    (lambda x, y: engine.fit(x, y, lr=-1.0), "JNPLConfig.lr must be > 0"),
    (lambda x, y: engine.fit(x, y, gamma=2), "has no option 'gamma'"),
    (lambda x, y: engine.fit(x, y, method="l2b", clean_fraction=0.1), "takes the clean subset as clean_indices"),
    (lambda x, y: engine.fit(x, y, method="nosuch"), "unknown method 'nosuch'"),
    (lambda x, y: engine.fit(np.where(np.arange(64) == 3, np.nan, x), y), "NaN or infinite"),
    (lambda x, y: engine.fit(x[:, :0], y), "x: samples of shape [0] hold no values"),
    (lambda x, y: engine.fit(torch.empty(x.shape, device="meta"), y),
     "x: a meta tensor; give a dense one with values"),
    (lambda x, y: engine.fit(torch.from_numpy(x).to_sparse(), y), "x: a sparse tensor; give a dense one with values"),
    (lambda x, y: engine.fit(np.zeros((len(y), 0, 0), np.uint8), y), "x: samples of shape [0, 0, 1] hold no values"),
    (lambda x, y: engine.fit(np.zeros((len(y), 8, 8, 2), np.uint8), y), "x: images [N, H, W, C] need C in (1, 3)"),
    (lambda x, y: engine.fit(x, y, model="small_cnn"), "does not fit feature vectors"),
    (lambda x, y: engine.fit(x, y, class_names=dict(enumerate("abcdefghij"))), "class_names: expected a list of "
     "names in label order, got dict (a dict {label: name}: pass [d[i] for i in range(num_classes)])"),
    (lambda x, y: engine.fit(x, y, class_names="abcdefghij"), "class_names: expected a list of names in label order"),
    (lambda x, y: engine.fit(x, y, class_names=list("abcdefghia")), "class_names: classes 0 and 9 are both named 'a'"),
])
def test_bad_api_input_gets_a_clear_error(digits, call, message):
    x, noisy, _, _, _ = digits
    with pytest.raises(ValueError, match=re.escape(message)):
        call(x, noisy)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_on_cuda_without_a_cuda_device_names_the_argument(digits):
    with pytest.raises(ValueError, match="device cuda: no CUDA device is available"):
        engine.fit(digits[0], digits[1], device="cuda")


def test_empty_inputs_predict_empty_arrays_and_out_may_be_a_path(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    result = engine.fit(x, np.arange(40) % 3, method="ce", epochs=1, out=tmp_path / "run")
    assert result.config.out == str(tmp_path / "run") and (tmp_path / "run" / "summary.json").exists()
    probs = result.predict_proba(x[:0])
    assert probs.shape == (0, 3) and probs.dtype == np.float32
    assert result.predict(x[:0]).shape == (0,)


def test_fit_resumes_the_run_in_out(tmp_path):
    """fit had no resume: a script under torchrun could only start a killed run over. A finished
    run resumes to the same results without training; other arguments are refused."""
    from engine.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    y = np.arange(60) % 3
    first = engine.fit(x, y, method="ce", epochs=2, out=tmp_path)
    resumed = engine.fit(x, y, method="ce", epochs=2, out=tmp_path, resume=True)
    assert resumed.summary == first.summary and first.summary["processes"] == 1
    pd.testing.assert_frame_equal(resumed.metrics.drop(columns="seconds"), first.metrics.drop(columns="seconds"))
    np.testing.assert_array_equal(resumed.pred_probs, first.pred_probs)
    with pytest.raises(CheckpointError, match="belongs to a different run"):
        engine.fit(x, y, method="ce", epochs=2, out=tmp_path, resume=True, seed=1)
    # The classes and the true labels (scored each epoch) are the run's too
    differs = r"belongs to a different run \(what differs: the training data, labels, test split, classes or true"
    for other in (dict(class_names=["a", "b", "c", "d"]), dict(true_labels=(y + 1) % 3)):
        with pytest.raises(CheckpointError, match=differs):
            engine.fit(x, y, method="ce", epochs=2, out=tmp_path, resume=True, **other)
    # A checkpoint of an engine before the fingerprint covered them (2026-12-08) resumes still
    path = str(tmp_path / "checkpoint.pt")
    state = read_checkpoint(path)
    state["identity"]["data_fingerprint"] = resumed._trainer.data.fingerprint(before_classes=True)
    assert state["identity"]["data_fingerprint"] != resumed._trainer.data.fingerprint()
    save_checkpoint(path, state)
    os.remove(tmp_path / "summary.json")
    assert engine.fit(x, y, method="ce", epochs=2, out=tmp_path, resume=True).summary == first.summary
    with pytest.raises(CheckpointError, match=differs):
        engine.fit(x, (y + 1) % 3, method="ce", epochs=2, out=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume: needs out"):
        engine.fit(x, y, method="ce", epochs=2, resume=True)


def test_fit_refuses_resume_with_overwrite_as_the_command_line_does(tmp_path):
    """--resume and --overwrite exclude each other; fit took both and ignored overwrite."""
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="^overwrite: excludes resume"):
        engine.fit(x, np.arange(60) % 3, method="ce", epochs=1, out=tmp_path, resume=True, overwrite=True)
    assert not os.listdir(tmp_path)


class Part(enum.Enum):
    FIRST = "first"
    SECOND = "second"


class Recorder(engine.Method):
    """Two stages (2 epochs, then 1); its loss, the constant 2, records what the trainer gives it
    and a draw of torch's generator (model-side randomness such as mixup partners)."""

    name = "recorder"

    def __init__(self, **options):
        super().__init__(**options)
        self.seen = []

    def stages(self):
        return [Stage(Part.FIRST, 2, self.config.lr), Stage(Part.SECOND, 1, self.config.lr)]

    def loss(self, model, batch, step):
        draw = torch.randint(1 << 30, ()).item()
        self.seen.append((step.epoch, step.stage.name, step.epoch_in_stage, draw, step.step, batch.indices.tolist()))
        return model(batch.images).sum() * 0 + 2.0


def test_the_loop_gives_each_epoch_its_stage_a_new_order_and_the_next_steps(tmp_path):
    """Each epoch trains in its stage (the first epoch of a stage counts 0), on every sample once
    in an order of its own; steps count on over the run and the checkpoint keeps the count (the
    offset of the random streams on resume); torch is seeded anew each epoch; train_loss is the mean
    of the batches' losses."""
    from engine.checkpoint import read_checkpoint

    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    result = engine.fit(x, np.arange(40) % 2, method=Recorder(), epochs=3, batch_size=8, out=tmp_path)
    method = result.method  # fit's own instance, with the options
    assert result.metrics["stage"].tolist() == ["first", "first", "second"]
    assert result.metrics["train_loss"].tolist() == [2.0, 2.0, 2.0]
    assert [step for *_, step, _ in method.seen] == list(range(15))
    orders = []
    for epoch, where in enumerate([("first", 0), ("first", 1), ("second", 0)]):
        steps = [seen for seen in method.seen if seen[0] == epoch]
        assert len(steps) == 5 and all(seen[1:3] == where for seen in steps)
        orders.append(sum((indices for *_, indices in steps), []))
        assert sorted(orders[-1]) == list(range(40))
    assert len({tuple(order) for order in orders}) == 3, "each epoch its own order"
    first_draws = [draw for *_, draw, step, _ in method.seen if step % 5 == 0]
    assert len(set(first_draws)) == 3, "each epoch's own seed"
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 15)


def test_a_loss_that_fails_on_nan_outputs_stops_the_run_as_diverged():
    """A loss whose input checks fail on NaN outputs before any loss shows NaN (here
    torch.multinomial's): the run stops as diverged, naming the outputs, not with the error."""
    from engine.losses import weighted_ce
    from engine.methods.base import Diverged

    class Sampled(engine.Method):
        name = "sampled"

        def loss(self, model, batch, step):
            logits = model(batch.images)
            drawn = torch.multinomial(torch.softmax(logits.detach().float(), 1), 1).squeeze(1)
            return weighted_ce(logits, drawn)

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    with pytest.raises(Diverged, match=r"epoch 2 \[ce\]: the model's outputs are NaN or infinite: the run diverged"):
        engine.fit(x, np.arange(60) % 3, method=Sampled(), epochs=3, lr=1e30)


def test_a_loss_error_on_the_finite_outputs_of_a_two_headed_model_is_raised_as_it_is():
    """BLDR's model returns its heads in a dict: the check for NaN outputs after a failed loss used
    to fail on it with a TypeError, hiding the loss's own error."""
    from engine.methods import BLDR

    class Failing(BLDR):
        def loss(self, model, batch, step):
            raise RuntimeError("the loss's own error")

    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    with pytest.raises(RuntimeError, match="^the loss's own error$"):
        engine.fit(x, np.arange(60) % 3, method=Failing(), epochs=2)


def test_a_training_set_too_small_to_train_on_is_refused():
    """One sample left to train on (the others trusted, kept for L2B's meta-steps) gave no step at
    all: its only batch of 1 was dropped, and the run reported a training loss of 0.0."""
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="the training set has 1 samples to train on: training needs at least 2"):
        engine.fit(x, np.arange(4) % 2, method="l2b", epochs=1, clean_indices=[0, 1, 2])


def test_clean_indices_as_a_boolean_mask_name_its_true_samples():
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    mask = np.arange(40) % 4 == 0
    result = engine.fit(x, np.arange(40) % 2, method="ce", epochs=1, clean_indices=torch.from_numpy(mask))
    assert result.summary["clean_subset_size"] == 10 and result.config.hyperparameters.clean_size == 10
    assert result.label_issues()["clean_subset"].tolist() == mask.tolist()
    # The same mask as 0/1 integers (df.verified.astype(int)) was read as the indices {0, 1}: a subset of 2.
    with pytest.raises(ValueError, match=r"^clean_indices: 40 integers of 0 and 1, one per sample, read as indices "
                                         r"name samples 0 and 1 only; pass a mask as bool"):
        engine.fit(x, np.arange(40) % 2, method="ce", epochs=1, clean_indices=mask.astype(int))


@pytest.mark.parametrize("method", ["ce", "pmnar"])
def test_a_method_without_a_use_for_trusted_labels_trains_on_them(digits, method):
    """The only 9s in the training set are 30 trusted ones (the others dropped): the network
    predicts 9s only if it trains on them (it never did before 2026-12-06: recall 0)."""
    x, _, true, x_test, y_test = digits
    kept = np.flatnonzero(true != 9)
    kept = np.sort(np.concatenate([kept, np.flatnonzero(true == 9)[:30]]))
    x, labels = x[kept], true[kept]
    trusted = np.flatnonzero(labels == 9)
    result = engine.fit(x, labels, method=method, x_test=x_test, y_test=y_test, clean_indices=trusted, epochs=12)
    predicted = result.predict(x_test)
    assert (predicted[y_test == 9] == 9).mean() > 0.4, result.summary  # 0.68 and 0.73 measured
    assert not result.label_issues()["is_label_issue"][trusted].any()


@pytest.mark.parametrize("method", ["ce", "pudistill"])
def test_the_label_issues_and_pred_probs_tell_one_story(digits, method):
    """predicted_label, label_quality, is_label_issue and pred_probs from the same probabilities:
    PU-distillation's issues once came from its teachers, its predicted_label and pred_probs from
    the student (on 8.5% of these rows the flag contradicted the table's own labels)."""
    x, noisy, true, _, _ = digits
    trusted = np.flatnonzero(noisy == true)[:200]
    result = engine.fit(x, noisy, method=method, clean_indices=trusted, true_labels=true, epochs=4)
    table = result.label_issues()
    rows = ~table["clean_subset"].to_numpy()
    given, probs = table["given_label"].to_numpy(), result.pred_probs
    assert np.array_equal(table["predicted_label"], probs.argmax(1))
    np.testing.assert_allclose(table["label_quality"], probs[np.arange(len(given)), given], atol=1e-6)
    assert np.array_equal(table["is_label_issue"][rows], (probs.argmax(1) != given)[rows])
    assert 0 < table["is_label_issue"][rows].mean() < 0.6
    # The summary's rates are those of the scored rows, the clean subset left out.
    summary, wrong = result.summary, (given != true)[rows]
    assert summary["estimated_noise_rate"] == pytest.approx(table["is_label_issue"][rows].mean())
    assert summary["true_noise_rate"] == pytest.approx(wrong.mean()) and summary["true_labels_known"] == rows.sum()
    flags = table["is_label_issue"][rows].to_numpy()
    assert summary["det_precision"] == pytest.approx(wrong[flags].mean())
    assert summary["det_recall"] == pytest.approx(flags[wrong].mean())


def test_a_clean_subset_needs_only_the_classes_that_occur():
    """Labels 1 and 3 (none of 0 or 2): L2B takes clean samples of those two classes;
    PU-distillation, which grows every class index's clean set, asks for classes without gaps."""
    x = np.random.default_rng(0).normal(size=(48, 3)).astype(np.float32)
    labels = np.where(x[:, 0] > 0, 3, 1)
    clean = np.concatenate([np.flatnonzero(labels == 1)[:4], np.flatnonzero(labels == 3)[:4]])
    result = engine.fit(x, labels, method="l2b", epochs=1, batch_size=8, clean_indices=clean)
    assert result.summary["clean_subset_size"] == 8 and result.pred_probs.shape == (48, 4)
    with pytest.raises(ValueError, match="class 0 has none: number the classes 0, 1, ... without gaps"):
        engine.fit(x, labels, method="pudistill", epochs=1, batch_size=8, clean_indices=clean)


def test_true_labels_may_be_partly_unknown():
    """-1 marks a sample whose true label is unknown (as train_true_labels.npy): detection is
    measured on the others."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    true = np.where(np.arange(60) < 20, -1, labels)
    result = engine.fit(x, labels, method="ce", epochs=1, true_labels=true)
    assert result.summary["true_labels_known"] == 40 and result.summary["det_f1"] is not None
    assert result.label_issues()["true_label"].isna().sum() == 20


def test_huge_feature_values_are_standardized_not_zeroed():
    """Feature values of 1e20: their squares overflow float32, so the statistics are taken in float64."""
    from engine.data.training_data import from_arrays

    x = np.random.default_rng(0).normal(size=(50, 4))
    data, scaled = from_arrays(x, np.arange(50) % 2), from_arrays(x * 1e20, np.arange(50) % 2)
    features = [next(iter(d.loader(d.x_train, 50, "cpu")))[0] for d in (data, scaled)]
    assert features[1].abs().max() > 1 and torch.allclose(features[0], features[1], atol=1e-4)


def test_bfloat16_tensors_are_taken_as_feature_vectors():
    x = torch.randn(40, 3).bfloat16()
    result = engine.fit(x, (x[:, 0] > 0).long(), method="ce", epochs=1)
    assert result.predict_proba(x[:5]).shape == (5, 2)


def test_a_diverged_fit_raises_naming_the_epoch_and_the_learning_rate(digits, tmp_path):
    x, noisy, _, _, _ = digits
    message = (f"epoch 1 [ce]: the training loss is nan: the run diverged and stopped; {tmp_path}/checkpoint.pt keeps "
               f"the run as it was before this epoch; try a lower learning rate (lr, now 1e+30)")
    with pytest.raises(engine.Diverged, match=re.escape(message)):
        engine.fit(x, noisy, method="ce", lr=1e30, epochs=2, out=str(tmp_path))


@pytest.mark.slow
def test_readme_api_example_runs_as_written(capsys):
    namespace = {}
    exec(compile(readme_block("## Python API"), "README.md", "exec"), namespace)
    result, issues, ranked, y, y_noisy = (namespace[k] for k in ("result", "issues", "ranked", "y", "y_noisy"))
    assert result.summary["test_acc"] > 0.9
    flagged = issues["is_label_issue"]
    assert (issues["given_label"] != namespace["mnist"].y_train)[flagged].mean() > 0.8
    wrong = (y_noisy != y)[ranked]
    assert len(ranked) > 300 and wrong.mean() > 0.8 and wrong[:200].mean() > 0.95, (len(ranked), wrong.mean())
