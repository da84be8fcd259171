"""transferlab: turn a pretrained transformer into a task model by transfer learning, and ship it."""

import importlib.abc
import importlib.util
import os
import sys

# Never reach a model hub: every model and dataset comes from a local directory or an installed package.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"


def _register_architectures() -> None:
    """Put transferlab's own architectures (EfficientNet-Lite, VGG) in the transformers Auto classes, so that
    `transformers.pipeline` loads their saved models after `import transferlab`. Importing the backbones registers
    them; an import of the backbones already under way does so itself."""
    if "transferlab.backbones" not in sys.modules:
        importlib.import_module("transferlab.backbones")


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Registers the architectures right after transformers is first imported: `import transferlab` (and so the
    command line's start) stays free of torch."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def load_and_register(module) -> None:
                load(module)
                _register_architectures()

            spec.loader.exec_module = load_and_register
        return spec


if "transformers" in sys.modules:
    _register_architectures()
else:
    sys.meta_path.insert(0, _AfterTransformers())
