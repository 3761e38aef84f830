"""Training methods, one module each, on the interface in engine/methods/base.py."""
import dataclasses
import importlib
import inspect

from engine.config import DENSE_MODEL_SIDE, short_budget, size_class
from engine.methods.base import Method
from engine.methods.bldr import BLDR
from engine.methods.ce import CE
from engine.methods.jnpl import JNPL
from engine.methods.l2b import L2B
from engine.methods.nlnl import NLNL
from engine.methods.pmnar import PMNAR
from engine.methods.pudistill import PUDistill

METHODS = {method.name: method for method in (CE, NLNL, JNPL, PMNAR, BLDR, L2B, PUDistill)}


def method_class(spec):
    """The Method subclass named by `spec`: a built-in name (METHODS) or "module:Class", a
    subclass in the user's own module (importable from the working directory or PYTHONPATH)."""
    if spec in METHODS:
        return METHODS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown method {spec!r}: choose one of {', '.join(METHODS)} or give module:Class")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as error:  # ValueError: an empty module name (":Class")
        raise ValueError(f"method {spec}: cannot import {module_name!r} ({error})") from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise ValueError(f"method {spec}: {module_name} has no Method subclass named {class_name}")
    if not dataclasses.is_dataclass(cls.Config):  # its fields are the method's options
        raise ValueError(f"method {spec}: its Config must be a dataclass (a MethodConfig subclass decorated "
                         f"@dataclass(frozen=True)), got {cls.Config!r}")
    return cls


def as_method(method, options):
    """A new Method instance from a name / "module:Class" / class / instance (its options
    copied: a trained instance is never reused), with `options` (its Config's fields) replacing
    the preset's values."""
    if isinstance(method, Method):
        return type(method)(**{**method.options, **options})
    if inspect.isclass(method) and issubclass(method, Method):
        return method(**options)
    if isinstance(method, str):
        return method_class(method)(**options)
    raise TypeError(f"method must be a name, a Method subclass or a Method instance, got {type(method).__name__}")


def with_model_for(method, input_shape, num_samples, num_classes):
    """`method` (an instance), with the model its data need where none was chosen: the MLP for
    feature vectors (`input_shape` [D]; the presets' models are CNNs), and small_cnn_dense for
    a large data set (at least SMALL_DATA samples) of images of at most DENSE_MODEL_SIDE pixels a
    side at a short budget, where the method's short-budget preset takes the small CNN: 24k
    parameters underfit tens of thousands of images (CIFAR-10N `worst`, CE for 20 epochs with
    crops: 60.8% against 72.1%, at 1.4 times the step time; docs/methods.md, "Defaults")."""
    if "model" in method.options:
        return method
    if len(input_shape) == 1:
        return as_method(method, {"model": "mlp"})
    if (size_class(num_samples) == "paper" and short_budget(method.options.get("epochs"))
            and max(input_shape[:2]) <= DENSE_MODEL_SIDE
            and type(method).Config.preset("small", num_classes).model == "small_cnn"):
        return as_method(method, {"model": "small_cnn_dense"})
    return method


__all__ = ["METHODS", "Method", "as_method", "method_class", "with_model_for"]
