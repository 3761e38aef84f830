"""Reading files that may come from someone else without running their code. Pickle-based
formats can call any importable function while they load; these readers admit only what the
formats hold: torch files (checkpoints, label files) through torch's weights-only unpickler
with numpy arrays of plain numeric types admitted besides tensors, and CIFAR's python batches
through an unpickler that admits numpy arrays besides dicts, lists, strings and numbers."""
import codecs
import pickle
import struct

import numpy as np

NUMERIC_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                  "float32", "float64")
_reconstruct = np._core.multiarray._reconstruct
# How numpy arrays pickle: by numpy 1 (numpy.core) and numpy 2 (numpy._core) names.
TORCH_NUMPY_GLOBALS = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                       *(type(np.dtype(name)) for name in NUMERIC_DTYPES)]
PICKLE_ARRAY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),  # numpy numbers
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes as protocol-2 pickles write them
})


# What a missing, empty, truncated or foreign file can raise inside torch's reader.
TORCH_READ_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, IndexError, KeyError, TypeError,
                     AttributeError, OSError, struct.error)


def read_error_reason(error):
    """Why a file could not be read, in one sentence (an OSError's reason without its path; torch
    follows its reason with sentences of advice about checkpoints)."""
    text = (error.strerror if isinstance(error, OSError) else None) or str(error).strip()
    return (text.splitlines() or [type(error).__name__])[0].split(". ")[0]


def load_npy(path, what):
    """np.load of the .npy file `path` without pickle; a file that is pickled, empty, truncated,
    missing, or declares an array too large for memory raises ValueError naming `what`."""
    try:
        return np.load(path, allow_pickle=False)
    except MemoryError:
        raise ValueError(f"{what}: declares an array too large for memory") from None
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"{what}: not a readable .npy file of plain numbers ({read_error_reason(error)})") from None


def not_dense(tensor):
    """"meta" or "sparse" for a tensor that holds no values to read as an array (a file's or a
    user's: torch's own errors on them name neither), else None."""
    import torch

    if tensor.is_meta:
        return "meta"
    return None if tensor.layout == torch.strided else "sparse"


def torch_load(source, what, map_location="cpu"):
    """torch.load of `source` (a path or file object) with weights_only=True, numpy arrays
    admitted; anything else in it raises ValueError naming `what`, before any of it runs, and so
    does a file that cannot be read (missing, empty, truncated)."""
    import torch  # only torch files need it: the data modules load without

    try:
        with torch.serialization.safe_globals(TORCH_NUMPY_GLOBALS):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "got <" in line),
                       "it holds objects other than tensors, arrays, numbers, strings, lists and dicts")
        raise ValueError(f"{what}: refused, not a plain tensor / array file ({refused})") from None
    except TORCH_READ_ERRORS as error:
        raise ValueError(f"{what}: not a readable .pt file ({read_error_reason(error)})") from None


class _Refused(pickle.UnpicklingError):
    """A global outside PICKLE_ARRAY_GLOBALS."""


def _latin1_encode(text, encoding="latin1", *errors):
    """_codecs.encode as protocol-2 pickles call it for bytes (latin-1, the same length): another
    codec could grow the data (hex doubles it: a kilobyte file took gigabytes)."""
    if encoding not in ("latin1", "latin-1") or errors:
        raise _Refused(f"_codecs.encode with the codec {encoding!r}")
    return codecs.encode(text, "latin1")


def _empty_reconstruct(subtype, shape, dtype):
    """numpy's _reconstruct as array pickles call it, on an empty array that __setstate__ then
    fills from the pickle's data; any other shape would allocate what the file does not hold."""
    if tuple(shape) != (0,):
        raise _Refused(f"numpy _reconstruct of shape {shape!r:.40}")
    return _reconstruct(subtype, shape, dtype)


CHECKED_GLOBALS = {("_codecs", "encode"): _latin1_encode, ("numpy.core.multiarray", "_reconstruct"): _empty_reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): _empty_reconstruct}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in PICKLE_ARRAY_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return CHECKED_GLOBALS.get((module, name)) or super().find_class(module, name)


def unpickle_arrays(path):
    """A pickle of dicts, lists, strings, bytes, numbers and numpy arrays (CIFAR's python
    batches; Python 2 strings read as latin-1), refusing anything else with a ValueError."""
    with open(path, "rb") as file:
        try:
            return _ArrayUnpickler(file, encoding="latin1").load()
        except _Refused as error:
            raise ValueError(f"{path}: refused, a CIFAR batch holds only arrays, lists, strings and numbers, "
                             f"this one calls {error}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise ValueError(f"{path}: not a readable CIFAR batch ({error})") from None
