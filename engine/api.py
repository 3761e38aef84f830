"""The Python API: train a noise-robust method on your own arrays and see which labels are
probably wrong.

    result = engine.fit(x, labels, method="jnpl")             # uint8 images [N, H, W, C] or floats [N, D]
    result.label_issues()                                     # pandas DataFrame, one row per sample
    issues = engine.find_label_issues(x, labels, return_indices_ranked_by="label_quality")
"""
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from engine.config import RunConfig, size_class
from engine.data.datasets import ImageDataset
from engine.data.training_data import from_arrays, from_loaded
from engine.methods import as_method, with_model_for
from engine.train import check_device, check_writable, default_device

RANKINGS = ("label_quality", "self_confidence", "normalized_margin")
# cleanlab.filter.find_label_issues' arguments that have no counterpart here.
CLEANLAB_ONLY = {"pred_probs", "filter_by", "frac_noise", "num_to_remove_per_class", "min_examples_per_class",
                 "confident_joint", "n_jobs", "multi_label", "rank_by_kwargs", "low_memory"}


@dataclass
class FitResult:
    """What engine.fit trained: `model` (the evaluated module, e.g. BLDR's EMA copy), the
    `method` with its per-sample state, the resolved `config` (a RunConfig), the per-epoch
    `metrics` (a DataFrame), the `summary` and `pred_probs`, the class probabilities on the
    training samples [N, C] that the label issues are scored from: the trained network's (BLDR:
    the network whose EMA copy `model` is, so predict_proba differs from them there;
    PU-distillation where its label issues are its teachers': their mean). It pickles (a joblib or
    multiprocessing worker's result) without the training loaders: a copy predicts and gives
    the label issues, as the result does."""

    model: torch.nn.Module
    method: object
    config: RunConfig
    metrics: pd.DataFrame
    summary: dict
    pred_probs: np.ndarray
    _trainer: object = field(repr=False)

    def __repr__(self):
        # The summary's scalars: the model, the per-epoch table and the [N, C] probabilities would
        # fill a notebook cell.
        shown = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value!r}"
                          for name, value in self.summary.items() if value is not None)
        return f"FitResult({shown})"

    def predict_proba(self, x):
        """Class probabilities [M, C] (numpy float32) for inputs like the training data (uint8
        images of the same shape, feature vectors standardized as the training ones were, or
        image files, ImageFiles of the same size, for a model trained on files)."""
        return self._trainer.predict_proba(x)

    def predict(self, x):
        return self.predict_proba(x).argmax(1)

    def label_issues(self):
        """One row per training sample: index, given_label, predicted_label, label_quality (in
        [0, 1], lower = more likely mislabeled), is_label_issue (cleanlab's names), then
        true_label / given_class / predicted_class / clean_subset where they apply."""
        return self._trainer.table.copy()


def fit(x, labels=None, *, method="jnpl", x_test=None, y_test=None, true_labels=None, clean_indices=None, epochs=None,
        seed=0, device=None, out=None, resume=False, overwrite=False, class_names=None, verbose=False, sync_bn=False,
        **options):
    """Train `method` on inputs `x` with the given (possibly noisy) `labels` [N].

    x: uint8 images [N, H, W, C] (or [N, H, W]) or float feature vectors [N, D] (tabular data:
    an MLP, no augmentation, features standardized), numpy or torch; or a data set that
    engine.data.datasets.load_dataset loaded (e.g. a folder of JPEGs streamed from disk), which
    brings its labels (`labels` replaces them), its test split, class names, file paths, known
    true labels and trusted samples. method: a built-in name
    ("ce", "nlnl", "jnpl", "pmnar", "bldr", "l2b", "pudistill"), "module:Class", or a Method
    (class or instance) of your own. x_test / y_test: a test split (test accuracy per epoch).
    true_labels: the true labels where known (detection precision / recall). clean_indices:
    samples whose labels you trust (L2B and PU-distillation need some of every class). epochs
    and **options: fields of the method's Config (lr=..., batch_size=..., beta=...) replacing
    its preset (the short-budget one below 20,000 samples or for at most 50 epochs, else the
    paper's; at a short budget 20,000 training images or more of at most 64 pixels a side train
    small_cnn_dense, not the small CNN). out: a folder for the outputs and checkpoints (none by
    default). resume: continue the run whose checkpoint is in out (killed or finished; the same
    arguments), as the command line's --resume: a checkpoint of other arguments or data is
    refused. overwrite: start a new run in out even where one that did not finish left its
    checkpoint (refused otherwise; not with resume). verbose: print a line per epoch. Returns a
    FitResult. Under torchrun, every process calls fit with the same arguments and trains its
    share (README "Distributed training"); sync_bn: SyncBatchNorm there (CUDA).
    """
    if resume and overwrite:  # the command line's --resume and --overwrite exclude each other too
        raise ValueError("overwrite: excludes resume (continue the run in out, or start a new one deleting it)")
    device = as_device(device)
    if out is not None:
        out = as_folder(out)
    elif resume:
        raise ValueError("resume: needs out, the folder of the run to continue")
    if isinstance(x, ImageDataset):
        given = [name for name, value in (("x_test", x_test), ("y_test", y_test), ("class_names", class_names))
                 if value is not None]
        if given:
            raise ValueError(f"{given[0]}: a loaded data set brings its own (load_dataset's test_fraction sets the "
                             f"held-out share where it has no test split)")
        data = from_loaded(x, labels, true_labels=true_labels, clean_indices=clean_indices)
    elif labels is None:
        raise ValueError("labels: the given label of each sample of x (only a loaded data set brings its own)")
    else:
        data = from_arrays(x, labels, x_test=x_test, y_test=y_test, true_labels=true_labels,
                           clean_indices=clean_indices, class_names=class_names)
    if epochs is not None:
        options["epochs"] = epochs
    if {"clean_size", "clean_fraction"} & set(options):
        raise ValueError("engine.fit takes the clean subset as clean_indices (the samples whose labels you trust), "
                         "not clean_size / clean_fraction")
    options["clean_size"] = len(data.clean_indices)  # config.yaml records the subset the run used
    method = with_model_for(as_method(method, options), data.input_shape, len(data.x_train), data.num_classes)
    config = method.configure(size_class(len(data.x_train)), data.num_classes)
    run = RunConfig(method=method.name, seed=seed, device=device.type, out=out, sync_bn=sync_bn,
                    hyperparameters=config)
    from engine.trainer import Trainer, quiet

    # The run seeds torch's global generators from `seed`; the caller's draws go on afterwards as
    # if fit had not run (a script drawing a new subsample per fit gets a new one). Every GPU's
    # too where CUDA is in use (manual_seed seeds them all); a CPU run leaves CUDA uninitialized.
    in_use = device.type == "cuda" or torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if in_use else ()):
        trainer = Trainer(method, data, seed=seed, device=device, out=out, resume=resume, overwrite=overwrite,
                          run_config=run, sync_bn=sync_bn, log=print if verbose else quiet)
        summary = trainer.run()
    return FitResult(method.eval_model(trainer.model), method, run, pd.DataFrame(trainer.metrics), summary,
                     trainer.issue_probs, trainer)


def as_device(device):
    """fit's device (None: cuda when available) as a torch.device, or a clear error."""
    try:
        device = torch.device(device or default_device())
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N' (or a torch.device), got {device!r}") from None
    check_device(device.type, "device")
    return device


def as_folder(out):
    """fit's out (a str or os.PathLike) as a folder path the run can write to, or a clear error."""
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out):
        raise ValueError(f"out: expected a folder (str or os.PathLike), got {out!r}")
    out = os.fspath(out)
    check_writable(out, "out:")
    return out


def label_quality_scores(labels, pred_probs, method):
    """cleanlab.rank's per-sample scores: "self_confidence" p[label]; "normalized_margin"
    (p[label] - max other p + 1) / 2. Lower = more likely mislabeled."""
    self_confidence = pred_probs[np.arange(len(labels)), labels]
    if method == "self_confidence":
        return self_confidence
    others = pred_probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return (self_confidence - others.max(1) + 1) / 2


def find_label_issues(x, labels=None, *, method="pmnar", return_indices_ranked_by=None, **fit_options):
    """Which labels are probably wrong, with cleanlab.filter.find_label_issues' conventions: a
    boolean mask over the samples of the data as given (True = label issue; a test share held out
    of a loaded data set is in it, never flagged) by default; with return_indices_ranked_by the
    flagged samples' positions in the same data (the label-issues table's index, so
    sorted(indices) == flatnonzero(mask)), most likely wrong first, ranked by "label_quality" (the
    method's own score) or by cleanlab's "self_confidence" / "normalized_margin" of the trained
    model's probabilities. x, labels and fit_options go to engine.fit (a loaded data set brings
    its labels)."""
    cleanlab_only = sorted(CLEANLAB_ONLY & fit_options.keys())
    if cleanlab_only:  # else the method's Config would say it has no such option
        raise ValueError(f"find_label_issues: cleanlab's {cleanlab_only[0]} is not an option here: this function "
                         f"trains the model whose probabilities it scores, flags by the method's own rule and "
                         f"takes engine.fit's options")
    if return_indices_ranked_by not in (None, *RANKINGS):
        raise ValueError(f"return_indices_ranked_by must be None or one of {', '.join(RANKINGS)}, got "
                         f"{return_indices_ranked_by!r}")
    result = fit(x, labels, method=method, **fit_options)
    table = result.label_issues()
    rows, data = table["index"].to_numpy(), result._trainer.data
    held_out = 0 if data.train_rows is None or data.y_test is None else len(data.y_test)
    mask = np.zeros(len(rows) + held_out, dtype=bool)
    mask[rows] = table["is_label_issue"].to_numpy()
    if return_indices_ranked_by is None:
        return mask
    if return_indices_ranked_by == "label_quality":
        scores = table["label_quality"].to_numpy()
    else:
        scores = label_quality_scores(table["given_label"].to_numpy(), result.pred_probs, return_indices_ranked_by)
    flagged = np.flatnonzero(table["is_label_issue"].to_numpy())
    return rows[flagged[np.argsort(scores[flagged], kind="stable")]]
