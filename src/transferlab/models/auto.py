"""transferlab's model classes registered with the transformers Auto classes, so that after `import transferlab`
`AutoModelFor...from_pretrained(RUN/model)` and `transformers.pipeline(task, model=RUN/model)` load a saved
transferlab model with no remote code and no trust_remote_code prompt.

`import transferlab` must stay light (the CLI answers `--help` without torch), so the registration waits for
transformers: it runs as soon as transformers has been imported, by whoever imports it (`register_on_import`).
Other model classes (a new task's head, an image family's) join with `add_auto_class`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# (Auto class, "module:class" of the transferlab model it loads for that model's config type)
_MODELING = "transferlab.models.modeling_transferlab"
_BASELINES = "transferlab.models.baselines"
AUTO_CLASSES: list[tuple[str, str]] = [
    ("AutoModelForSequenceClassification", f"{_MODELING}:TransferlabForSequenceClassification"),
    ("AutoModelForTokenClassification", f"{_MODELING}:TransferlabForTokenClassification"),
    ("AutoModelForQuestionAnswering", f"{_MODELING}:TransferlabForQuestionAnswering"),
    ("AutoModelForImageClassification", "transferlab.models.image_classification:TransferlabForImageClassification"),
    ("AutoModelForSequenceClassification", f"{_BASELINES}:BaselineForSequenceClassification"),
]
CONFIGS: dict[str, str] = {"transferlab": f"{_MODELING}:TransferlabConfig",
                           "transferlab-baseline": f"{_BASELINES}:BaselineConfig"}


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def add_auto_class(auto_class: str, model: str, config: tuple[str, str] | None = None) -> None:
    """Register one more model class ("module:Class") for an Auto class, with its config ((model_type,
    "module:ConfigClass")) when it brings a new one; takes effect at once if transformers is already loaded."""
    AUTO_CLASSES.append((auto_class, model))
    if config is not None:
        CONFIGS[config[0]] = config[1]
    if "transformers" in sys.modules:
        register_auto_classes()


def register_auto_classes() -> None:
    """Register every config and model class with transformers (idempotent). Importing the backbone families
    registers their own architectures too (EfficientNet-Lite, VGG: their modules call AutoConfig.register); an
    import of the backbones already under way does so itself."""
    import transformers

    if "transferlab.backbones" not in sys.modules:
        importlib.import_module("transferlab.backbones")
    for model_type, target in CONFIGS.items():
        transformers.AutoConfig.register(model_type, _load(target), exist_ok=True)
    for auto_class, target in AUTO_CLASSES:
        model = _load(target)
        getattr(transformers, auto_class).register(model.config_class, model, exist_ok=True)


class _RegisterAfterLoading(importlib.abc.Loader):
    """The loader of the transformers package, which registers transferlab's classes once the package is loaded."""

    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        register_auto_classes()

    def __getattr__(self, name: str):  # resource readers and the like: the real loader's
        return getattr(self.inner, name)


class _WatchTransformers(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of transformers it wraps the real loader (then steps aside)."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoading(spec.loader)
        return spec


def register_on_import() -> None:
    """Register now if transformers is loaded, else as soon as something imports it (costs nothing until then)."""
    if "transformers" in sys.modules:
        register_auto_classes()
    elif not any(isinstance(finder, _WatchTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WatchTransformers())
