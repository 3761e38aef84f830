"""A run's output files, each written atomically (a temporary file unique to the process in
the same folder, flushed and fsynced, then renamed over the old one): metrics.csv, the
per-sample label_issues.csv, summary.json, config.yaml, separation.png and checkpoint.pt."""
import contextlib
import fcntl
import json
import os
import stat
import tempfile

import numpy as np
import pandas as pd

# The files a run writes in its folder; a new run (not a resumed one) first removes those of an earlier run.
OUTPUT_FILES = ("config.yaml", "metrics.csv", "summary.json", "label_issues.csv", "separation.png", "checkpoint.pt")
METRIC_FIELDS = ["epoch", "stage", "train_loss", "test_acc", "det_precision", "det_recall", "det_f1", "seconds"]


LOCK_NAME = ".noisy-engine.lock"  # its own name: a .lock of another tool in the folder is left alone


class FolderInUse(RuntimeError):
    """Another live run writes to the output folder, or one that did not finish left its
    checkpoint there (refuse_unfinished_run)."""


def refuse_unfinished_run(folder):
    """Raises FolderInUse where `folder` holds the checkpoint of a run that did not finish (no
    summary.json): a new run there would delete what it trained, perhaps for hours."""
    checkpoint, summary = (os.path.join(folder, name) for name in ("checkpoint.pt", "summary.json"))
    if os.path.exists(checkpoint) and not os.path.exists(summary):
        raise FolderInUse(f"output folder {folder} holds the checkpoint of a run that did not finish: resume it "
                          f"(--resume, engine.fit's resume=True) or start a new run there, deleting it (--overwrite, "
                          f"overwrite=True)")


def written_by_engine(folder):
    """Whether the outputs in `folder` are a run's of this engine: its checkpoint.pt is one, or its
    config.yaml is a run's (written at the start, before the first checkpoint)."""
    from engine.checkpoint import FORMAT
    from engine.config import load_yaml  # --config's reader: no aliases to expand

    with contextlib.suppress(Exception):  # unreadable, or not ours: not this engine's
        if {"method", "seed", "hyperparameters"} <= load_yaml(os.path.join(folder, "config.yaml")).keys():
            return True
    with contextlib.suppress(Exception):
        import torch

        wrapped = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=True, mmap=True)
        return isinstance(wrapped, dict) and wrapped.get("format") == FORMAT
    return False


def refuse_foreign_outputs(folder):
    """Raises FolderInUse where `folder` holds files of the outputs' names that no run of this
    engine wrote (another tool's config.yaml or metrics.csv): a new run would delete them."""
    present = [name for name in OUTPUT_FILES if os.path.lexists(os.path.join(folder, name))]
    if present and not written_by_engine(folder):
        raise FolderInUse(f"output folder {folder} holds {', '.join(present)}, which no run of this engine wrote: "
                          f"choose another folder, or start the run there, deleting them (--overwrite, "
                          f"overwrite=True)")


@contextlib.contextmanager
def folder_lock(folder):
    """Holds `folder`/LOCK_NAME for the block, or raises FolderInUse when another process holds
    it. An flock: the system drops it when its process ends, killed or not, so no stale lock."""
    try:  # not through a link: it would lock (and truncate) the file it points to
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        raise FolderInUse(f"output folder {folder}: cannot open its lock file {LOCK_NAME} ({error.strerror}; a link "
                          f"there is refused): remove it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FolderInUse(f"output folder {folder}: {LOCK_NAME} is not a regular file: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise FolderInUse(f"output folder {folder} is in use by another run (pid {holder}): wait for it to "
                              f"end or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        remove_leftovers(folder)
        yield
    finally:
        os.close(fd)  # releases the lock


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's files are private (0600)
TMP_SUFFIX = ".engine.tmp"  # distinctive: remove_leftovers deletes only these


def write_atomically(path, write):
    """write(binary file) fills a temporary file next to `path`, which then replaces `path`: a
    killed run leaves either the previous complete file or the new complete one (and perhaps
    a hidden temporary file, which the next run on the folder removes: remove_leftovers)."""
    # The folder as the system resolves it: abspath would drop 'link/..' as text, not follow it.
    folder = os.path.realpath(os.path.dirname(path) or os.curdir)
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    directory = os.open(folder, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_leftovers(folder):
    """Deletes the temporary files of writes that a killed run left in `folder` (call it
    holding the folder's lock: no live writer then)."""
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(TMP_SUFFIX):
            os.remove(os.path.join(folder, name))


def remove_outputs(folder):
    """Deletes the OUTPUT_FILES an earlier run left in `folder` (nothing else in it), so that the
    folder never holds a mix of two runs' files, even when the new run is killed or writes no
    separation.png (call it holding the folder's lock)."""
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


def label_issues_table(given, probs, quality, is_issue, true=None, clean_indices=None, class_names=None, paths=None,
                       rows=None):
    """The per-sample table, cleanlab's column names: index (the sample's position in the data as
    given: `rows`, else its position in `given`; then path, each sample's file, when the data were
    read from files: `paths`), given_label, predicted_label, label_quality (in
    [0, 1], lower = more likely mislabeled), is_label_issue; then true_label when the true labels
    are known (empty where one is not: -1 in `true`), given_class / predicted_class when the
    classes have names, and clean_subset (trusted labels, never an issue) when there is one."""
    predicted = probs.argmax(1)
    clean = np.zeros(len(given), dtype=bool)
    if clean_indices is not None:
        clean[clean_indices] = True
    table = {"index": np.arange(len(given)) if rows is None else rows}
    if paths is not None:
        table["path"] = paths
    table |= {"given_label": given, "predicted_label": predicted,
              "label_quality": quality.astype(np.float64), "is_label_issue": is_issue & ~clean}
    if true is not None:
        table["true_label"] = pd.Series(true).where(true >= 0).astype("Int64")
    if class_names is not None:
        names = np.asarray(class_names, dtype=object)
        table["given_class"], table["predicted_class"] = names[given], names[predicted]
    if clean.any():
        table["clean_subset"] = clean
    return pd.DataFrame(table)


def write_csv(table, path, **options):
    write_atomically(path, lambda f: f.write(table.to_csv(index=False, lineterminator="\n", **options).encode()))


def write_metrics(rows, path):
    write_csv(pd.DataFrame(rows, columns=METRIC_FIELDS), path)


def write_label_issues(table, path):
    # Significant digits, not decimals: the most likely mislabeled samples score 1e-10 and below,
    # and their ranking must survive the file (9 digits keep every float32 score).
    write_csv(table, path, float_format="%.9g")


def write_json(content, path):
    write_atomically(path, lambda f: f.write(json.dumps(content, indent=2).encode()))


def plot_separation(score, truly_noisy, path, title):
    """Histogram of label_quality for correctly and wrongly labeled samples (the papers' figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(score[~truly_noisy], bins=bins, alpha=0.6, label=f"clean labels ({(~truly_noisy).sum()})")
    ax.hist(score[truly_noisy], bins=bins, alpha=0.6, label=f"mislabeled ({truly_noisy.sum()})")
    ax.set_xlabel("label_quality (lower: more likely mislabeled)")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
