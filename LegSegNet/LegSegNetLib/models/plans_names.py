"""The names in a model's plans.json that nnU-Net turns into Python objects, checked against an allow-list.

nnU-Net v2 builds a model from strings in plans.json, and some of those strings are imported:

- `architecture.network_class_name`: `pydoc.locate(name)`, which imports any module and returns any
  object (e.g. `unittest.mock.MagicMock`), then calls it; failing that, a class of that name is searched
  in dynamic_network_architectures;
- every key listed in `architecture._kw_requires_import`: `pydoc.locate(arch_kwargs[key])`, handed to
  the network's constructor (conv_op, norm_op, dropout_op, nonlin, ...);
- `preprocessor_name`, `normalization_schemes`, `resampling_fn_data/_seg/_probabilities`,
  `label_manager` and `image_reader_writer`: any attribute of any module in one nnU-Net subpackage
  (nnU-Net's `recursive_find_python_class`; those modules also hold `os`, `pickle`, file helpers), called
  with arguments the plans choose.

A model file is untrusted, so each of these names must be one that nnU-Net itself ships for that role:
the U-Nets of dynamic_network_architectures, `torch.nn` convolution, normalisation, dropout and
activation layers, nnU-Net's preprocessor, normalisation schemes, resampling functions, label manager
and image readers. `check_plans_names` refuses anything else with one InputError naming it, before
nnU-Net sees the plans, so nothing named by a refused file is imported or run. It only reads the JSON.

The trainer a checkpoint names is looked up by `find_trainer_class`: only nnU-Net's own trainer classes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..core.errors import InputError

# ---------------------------------------------------------------------- what nnU-Net ships
_DNA = "dynamic_network_architectures"
# Networks nnU-Net builds from plans (its planners write the first two; the old-plans conversion and
# older releases spell ResidualEncoderUNet's module `residual_unet`, which nnU-Net finds in the package).
NETWORK_CLASSES = frozenset(
    {f"{_DNA}.architectures.unet.{name}" for name in ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")}
    | {f"{_DNA}.architectures.residual_unet.ResidualEncoderUNet"}
)
LEGACY_UNET_CLASS_NAMES = frozenset({"PlainConvUNet", "ResidualEncoderUNet"})  # plans without 'architecture'

# torch.nn layers a network may be given by name, by the module that defines them.
_TORCH_LAYERS = {
    "conv": ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
    "instancenorm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "normalization": ("GroupNorm", "LayerNorm"),
    "dropout": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    "activation": (
        "LeakyReLU",
        "ReLU",
        "ReLU6",
        "PReLU",
        "ELU",
        "CELU",
        "SELU",
        "GELU",
        "SiLU",
        "Mish",
        "Hardswish",
        "Tanh",
        "Sigmoid",
    ),
}
# Every spelling that resolves to one of them: torch.nn.X, torch.nn.modules.X, torch.nn.modules.<module>.X
# (nnU-Net's planners write the last, e.g. torch.nn.modules.conv.Conv2d).
_LAYER_NAMES = frozenset(
    spelling
    for module, layers in _TORCH_LAYERS.items()
    for layer in layers
    for spelling in (f"torch.nn.{layer}", f"torch.nn.modules.{layer}", f"torch.nn.modules.{module}.{layer}")
)
# Building blocks a residual U-Net takes by name (its `block` argument).
_BLOCK_NAMES = frozenset(f"{_DNA}.building_blocks.residual.{name}" for name in ("BasicBlockD", "BottleneckD"))
IMPORTABLE_ARGUMENTS = _LAYER_NAMES | _BLOCK_NAMES

# Names nnU-Net looks up inside its own subpackages (plans key -> names it ships for that role).
PREPROCESSORS = frozenset({"DefaultPreprocessor"})
NORMALIZATION_SCHEMES = frozenset(
    {"ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization", "RGBTo01Normalization"}
)
# called as fn(data, new_shape, current_spacing, new_spacing, **kwargs from the plans)
RESAMPLING_FUNCTIONS = frozenset({"resample_data_or_seg_to_shape", "resample_torch_fornnunet", "no_resampling_hack"})
LABEL_MANAGERS = frozenset({"LabelManager"})
IMAGE_READER_WRITERS = frozenset(
    {"NaturalImage2DIO", "SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient", "Tiff3DIO"}
)
_RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


# ---------------------------------------------------------------------- the check
def check_plans_names(plans: dict, model: str) -> None:
    """InputError unless every name in `plans` that nnU-Net would import or look up is one it ships for
    that role (see the module docstring). Reads the dictionary only; imports nothing."""
    for what, value, allowed in _named_objects(plans, model):
        if not isinstance(value, str) or value not in allowed:
            raise InputError(
                f"plans.json of model '{model}' names {_shown(value)} as {what}, which is not one that nnU-Net "
                "ships; LegSegNet builds models only from nnU-Net's own networks, torch.nn layers and "
                "preprocessing functions, so it refuses this model (nothing from it was imported or run)"
            )


def _named_objects(plans: dict, model: str) -> Iterator[tuple[str, Any, frozenset]]:
    """(what it is, the name given, the names allowed) for every name nnU-Net resolves from the plans."""
    for key, allowed in (("label_manager", LABEL_MANAGERS), ("image_reader_writer", IMAGE_READER_WRITERS)):
        if key in plans:
            yield f"its {key}", plans[key], allowed
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict):
        return  # the folder check says what is missing
    # Every configuration, not only 2d: nnU-Net merges a configuration with the ones it inherits from.
    for config_name, config in configurations.items():
        if not isinstance(config, dict):
            continue
        where = f"(configuration '{config_name}')"
        if "preprocessor_name" in config:
            yield f"the preprocessor {where}", config["preprocessor_name"], PREPROCESSORS
        if "normalization_schemes" in config:
            schemes = config["normalization_schemes"]
            for scheme in schemes if isinstance(schemes, list) else [schemes]:
                yield f"a normalization scheme {where}", scheme, NORMALIZATION_SCHEMES
        for key in _RESAMPLING_KEYS:
            if key in config:
                yield f"the {key} function {where}", config[key], RESAMPLING_FUNCTIONS
        if "UNet_class_name" in config and "architecture" not in config:
            yield f"the network class {where}", config["UNet_class_name"], LEGACY_UNET_CLASS_NAMES
        if "architecture" in config:
            yield from _architecture_names(config["architecture"], where, model)


def _architecture_names(architecture: Any, where: str, model: str) -> Iterator[tuple[str, Any, frozenset]]:
    if not isinstance(architecture, dict):
        raise InputError(f"plans.json of model '{model}': 'architecture' {where} is not an object; the file is damaged")
    yield f"the network class {where}", architecture.get("network_class_name"), NETWORK_CLASSES
    kwargs = architecture.get("arch_kwargs", {})
    to_import = architecture.get("_kw_requires_import", [])
    if not isinstance(kwargs, dict) or not isinstance(to_import, list):
        raise InputError(
            f"plans.json of model '{model}': 'arch_kwargs' or '_kw_requires_import' {where} has the wrong type; "
            "the file is damaged"
        )
    for key in to_import:
        if not isinstance(key, str) or key not in kwargs:
            raise InputError(
                f"plans.json of model '{model}' asks to import the network argument {_shown(key)} {where}, "
                "which its arch_kwargs do not hold; the file is damaged"
            )
        if kwargs[key] is not None:  # nnU-Net skips None (no dropout, no norm)
            yield f"the network's {key} {where}", kwargs[key], IMPORTABLE_ARGUMENTS
    # Any other string that reads as a dotted Python name must be an allowed one too: a trainer's own
    # network builder may import arguments that _kw_requires_import does not list.
    for path, value in _strings(kwargs):
        if _DOTTED_NAME.match(value) and value not in IMPORTABLE_ARGUMENTS | NETWORK_CLASSES:
            yield f"the network argument {path} {where}", value, IMPORTABLE_ARGUMENTS


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path or "value", value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _shown(value: Any) -> str:
    """A name as the error line shows it: quoted, one line, not too long."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return f"'{text[:120]}{'...' if len(text) > 120 else ''}'"


# ---------------------------------------------------------------------- trainers
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def find_trainer_class(trainer_name: str):
    """nnU-Net's trainer class of that name (nnUNetTrainer or one of the variants nnU-Net ships), or None.

    nnU-Net's own lookup imports every module under nnunetv2/training/nnUNetTrainer (some need optional
    packages) and returns any attribute of them, a module such as `os` included. Here the one module whose
    source defines `class NAME(` is imported, and only a subclass of nnUNetTrainer is accepted."""
    if not isinstance(trainer_name, str) or not _IDENTIFIER.match(trainer_name):
        return None
    import importlib
    from pathlib import Path

    import nnunetv2

    package_dir = Path(nnunetv2.__path__[0])
    definition = re.compile(rf"^class\s+{trainer_name}\s*[(:]", re.MULTILINE)
    for source in sorted((package_dir / "training" / "nnUNetTrainer").rglob("*.py")):
        try:
            if not definition.search(source.read_text(encoding="utf-8", errors="replace")):
                continue
            module = importlib.import_module(
                ".".join(("nnunetv2", *source.relative_to(package_dir).with_suffix("").parts))
            )
            from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        except Exception:  # noqa: BLE001 - a variant that needs a package not installed here
            return None
        found = getattr(module, trainer_name, None)
        if isinstance(found, type) and issubclass(found, nnUNetTrainer):
            return found
    return None
