"""Per-epoch checkpoints with exact resume: the model, the optimizer, the method's per-sample
state (its buffers and parameters), the step counter and the metrics so far, with the run's
identity; written atomically and read back with torch's safe loader (tensors, numbers,
strings, lists and dicts only: a checkpoint cannot run code). The state is stored as the bytes
of its torch file next to their sha256, so a file changed after writing (a flipped bit, a
partial copy) is refused instead of resumed from."""
import hashlib
import io

import torch

from engine.outputs import write_atomically
from engine.safe_loading import TORCH_READ_ERRORS, read_error_reason

FORMAT = "noisy-label-engine checkpoint 1"
STATE_KEYS = ("epoch", "step", "identity", "model", "optimizer", "method", "metrics")
RESUMING = "resuming (--resume, engine.fit's resume=True)"  # the errors name the command line's and the API's


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, damaged, or another run's."""


class RunNote(UserWarning):
    """What resuming did that its caller may not expect (no checkpoint: a new run): engine.fit
    shows it as a warning, the command line as a note."""


def save_checkpoint(path, state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    wrapped = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
               "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    write_atomically(path, lambda f: torch.save(wrapped, f))


def read_checkpoint(path, device="cpu"):
    """The state saved at `path`, or CheckpointError saying what is wrong and what to do."""
    def refuse(problem):
        return CheckpointError(f"{RESUMING}: {path} {problem}; delete it to start over")

    try:
        wrapped = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_READ_ERRORS as error:
        raise refuse(f"cannot be read ({read_error_reason(error)})") from None
    if not isinstance(wrapped, dict) or wrapped.get("format") != FORMAT:
        raise refuse("is not a checkpoint of this engine")
    payload, digest = wrapped.get("payload"), wrapped.get("sha256")
    if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1
            and isinstance(digest, str)):
        raise refuse("is damaged (it lacks the state's bytes or their digest)")
    payload = payload.numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != digest:
        raise refuse("is damaged (its content does not match the digest written with it)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except TORCH_READ_ERRORS as error:  # a digest that matches a state that is no torch file: built by hand
        raise refuse(f"holds a state that cannot be read ({read_error_reason(error)})") from None
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise refuse("is not a checkpoint of this engine")
    return state


def load_checkpoint(path, identity, device, earlier=lambda: None):
    """The checkpoint at `path`, refused when it belongs to another run than `identity` (or
    earlier(): the run's identity as an earlier version of the engine wrote it)."""
    state = read_checkpoint(path, device)
    if state["identity"] != identity and state["identity"] != earlier():
        stored = state["identity"] if isinstance(state["identity"], dict) else {}
        raise CheckpointError(f"{RESUMING}: {path} belongs to a different run (what differs: "
                              f"{'; '.join(differences(stored, identity))}); resume with that run's "
                              f"options or choose another output folder (--out, engine.fit's out)")
    return state


def differences(stored, identity):
    """What differs between a checkpoint's run identity and this run's: the data, and each option
    with its two values (a section of the same options, as the hyperparameters, option by option)."""
    found = []
    for key in sorted({*stored, *identity}):
        theirs, ours = stored.get(key), identity.get(key)
        if theirs == ours:
            continue
        if key == "data_fingerprint":
            found.append("the training data, labels, test split, classes or true labels")
        elif isinstance(theirs, dict) and isinstance(ours, dict) and theirs.keys() == ours.keys():
            found += differences(theirs, ours)
        elif isinstance(theirs, dict) or isinstance(ours, dict):  # another method's options: the method differs
            found.append(key)
        else:
            found.append(f"{key} {theirs!r:.60} in the checkpoint, {ours!r:.60} in this run")
    return found
