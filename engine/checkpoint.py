"""Per-epoch checkpoints with exact resume: the model, the optimizer, the method's per-sample
state (its buffers and parameters), the step counter and the metrics so far, with the run's
identity; written atomically and read back with torch's safe loader (tensors, numbers,
strings, lists and dicts only: a checkpoint cannot run code)."""
import pickle

import torch

from engine.outputs import write_atomically


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, or another run's."""


def save_checkpoint(path, state):
    write_atomically(path, lambda f: torch.save(state, f))


def load_checkpoint(path, identity, device):
    """The checkpoint at `path`, refused when it belongs to another run than `identity`."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise CheckpointError(f"--resume: {path} cannot be read ({str(error).splitlines()[0]}); delete it to start "
                         f"over") from None
    if not isinstance(state, dict) or "identity" not in state:
        raise CheckpointError(f"--resume: {path} is not a checkpoint of this engine; delete it to start over")
    if state["identity"] != identity:
        stored = state["identity"] if isinstance(state["identity"], dict) else {}
        differs = sorted(key for key in {*stored, *identity} if stored.get(key) != identity.get(key))
        what = {"data_fingerprint": "the training data, labels or test split"}
        raise CheckpointError(f"--resume: {path} belongs to a different run (other "
                              f"{', '.join(what.get(key, key) for key in differs)}); resume with that run's "
                              f"options or choose another --out")
    return state
