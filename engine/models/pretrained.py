"""Starting weights from a file (--pretrained), e.g. torchvision's ImageNet weights for resnet18
/ resnet50, whose parameter names those models share. A file is read as data only: safetensors,
or torch's weights-only unpickler (a file that would run code is refused)."""
import zipfile

import torch

from engine.safe_loading import not_dense, torch_load

CLASSIFIER = "fc."  # the layer that starts new when the file's has another number of classes
SHOWN = 3           # keys named per kind of mismatch


def torch_file(path):
    """Whether `path` can be a torch.save file: a zip archive, or (torch before 1.6) a pickle of
    protocol 2 or later, which starts with byte 0x80; other files would reach the unpickler as
    garbage and be reported as refused objects."""
    with open(path, "rb") as file:
        return file.read(1) == b"\x80" or zipfile.is_zipfile(file)


def read_state_dict(path):
    """The tensors of a .safetensors file, or the state dict in a torch file: plain, or under
    "state_dict" / "model" as training scripts save it; DDP's "module." prefixes dropped."""
    what = f"pretrained weights {path}"
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        elif torch_file(path):
            state = torch_load(path, what)  # a ValueError naming the file if it would run code
        else:
            raise ValueError(f"{what}: not a safetensors or torch weights file (neither a zip archive nor a pickle)")
    except ValueError:
        raise
    except Exception as error:  # torch's and safetensors' own errors: a corrupt or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{what}: not a safetensors or torch weights file ({reason})") from None
    if isinstance(state, dict):
        state = next((state[key] for key in ("state_dict", "model") if isinstance(state.get(key), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                              for key, value in state.items()):
        raise ValueError(f"{what}: holds no state dict (a mapping of parameter names to tensors)")
    for key, value in state.items():
        if not_dense(value):
            raise ValueError(f"{what}: {key} is a {not_dense(value)} tensor, not weights (save a dense state dict: "
                             f".to_dense() / real values)")
        if value.is_floating_point() and not torch.isfinite(value).all():  # the run would only diverge
            raise ValueError(f"{what}: {key} holds NaN or infinite values")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_pretrained(network, path, name):
    """Copies the weights in `path` into `network`, model `name` (as errors call it). Every key of
    the network must be in the file with its shape, and the file may hold no others, except: the
    classifier (`fc.*`) stays as initialized when the file's differs in shape (ImageNet's 1000
    classes) or is absent (a classifier is loaded whole or not at all: a part of one is missing
    keys), and BatchNorm's num_batches_tracked counters may be absent (older files). Else
    ValueError naming the file and the first keys that differ."""
    state, own = read_state_dict(path), network.state_dict()
    new_classifier = not any(key.startswith(CLASSIFIER) for key in state) or any(
        key in state and state[key].shape != own[key].shape for key in own if key.startswith(CLASSIFIER))
    if new_classifier:
        state = {key: value for key, value in state.items() if not key.startswith(CLASSIFIER)}
    optional = [key for key in own if (new_classifier and key.startswith(CLASSIFIER))
                or key.endswith("num_batches_tracked")]
    problems = {
        "missing": [key for key in own if key not in state and key not in optional],
        "unexpected": [key for key in state if key not in own],
        "of another shape": [f"{key} {list(state[key].shape)} in the file, {list(own[key].shape)} in the network"
                             for key in own if key in state and state[key].shape != own[key].shape],
    }
    found = [f"{kind}: {', '.join(keys[:SHOWN])}{f' (+{len(keys) - SHOWN} more)' if len(keys) > SHOWN else ''}"
             for kind, keys in problems.items() if keys]
    if found:
        raise ValueError(f"pretrained weights {path} do not fit the {name} network; "
                         + "; ".join(found))
    network.load_state_dict(state, strict=False)
    return network
