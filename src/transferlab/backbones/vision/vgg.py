"""VGG-16/19 feature extractors whose parameter names are torchvision's (`features.N.weight`), so a user's own
torchvision weights file loads as it is.

The convolutional part is the backbone: five blocks of 3x3 convolutions (with batch norm in the `_bn` variants),
each closed by a max-pool. The pooled output is the mean of the last feature map (512 values); torchvision's
`classifier.N` layers are ImageNet's head, which a task replaces, so they are not loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from transferlab.errors import UserError

POOL = "M"
LAYERS = {  # torchvision's configurations "D" and "E": conv widths, "M" a 2x2 max-pool
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
    "vgg19": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
              512, 512, 512, 512, POOL],
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class VggConfig(PretrainedConfig):
    """A VGG feature extractor: the conv widths and pools in order, with or without batch norm."""

    model_type = "vgg"

    def __init__(self, layers: list | None = None, batch_norm: bool = False, num_channels: int = 3,
                 image_size: int = 224, **kwargs):
        self.layers = list(layers or LAYERS["vgg16"])
        self.batch_norm = batch_norm
        self.num_channels = num_channels
        self.image_size = image_size
        super().__init__(**kwargs)


class VggPreTrainedModel(PreTrainedModel):
    config_class = VggConfig
    base_model_prefix = "vgg"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class VggModel(VggPreTrainedModel):
    """`features` exactly as torchvision builds it (same indices); pooled output = the mean of the last map."""

    def __init__(self, config: VggConfig):
        super().__init__(config)
        layers: list[nn.Module] = []
        channels = config.num_channels
        for width in config.layers:
            if width == POOL:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **unused) -> BaseModelOutputWithPoolingAndNoAttention:
        return self.finish(self.features(pixel_values))

    def finish(self, hidden: torch.Tensor) -> BaseModelOutputWithPoolingAndNoAttention:
        """The backbone's output from the last layer's output: the feature map and its spatial mean."""
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=hidden, pooler_output=hidden.mean((2, 3)))

    def block_of_layer(self) -> list[int]:
        """The conv block (0..4) of each index of `features`: a block ends with its max-pool."""
        blocks, block = [], 0
        for layer in self.features:
            blocks.append(block)
            block += isinstance(layer, nn.MaxPool2d)
        return blocks


AutoConfig.register(VggConfig.model_type, VggConfig, exist_ok=True)
AutoModel.register(VggConfig, VggModel, exist_ok=True)


def split_name(name: str) -> tuple[str, Path] | None:
    """`vgg16:PATH` / `vgg19:PATH` -> (architecture, path); None for any other name."""
    arch, sep, path = name.partition(":")
    return (arch, Path(path).expanduser()) if sep and arch in LAYERS else None


def weights_path(arch: str, path: Path) -> Path:
    """The weights file a `vggNN:PATH` name means: PATH itself, or the one weights file in the directory PATH."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise UserError(f"Directory '{path}' holds {len(found)} weights files ({', '.join(WEIGHT_SUFFIXES)}); "
                            f"{arch}:DIR needs exactly one.", f"Pass the file itself: --model {arch}:/path/to/file.pth")
        return found[0]
    if not path.is_file():
        raise UserError(f"VGG weights file '{path}' does not exist.",
                        f"Pass {arch}:PATH with the path of a torchvision {arch} state dict (.pth or .safetensors).")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a torch state dict loaded with weights_only=True (a
    checkpoint wrapping it under `state_dict`/`model`, or saved from DataParallel with `module.`, is unwrapped)."""
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else _torch_load(path)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError for files it cannot read
        raise UserError(f"Could not read weights from '{path}': {str(err).splitlines()[0]}.",
                        "Pass a tensor state dict: torch.save(model.state_dict(), path) or a .safetensors file "
                        "(whole pickled models are never loaded).") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' is not a state dict of tensors.",
                        "Save it with torch.save(model.state_dict(), path).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _torch_load(path: Path) -> object:
    try:  # memory-mapped: checking a file's architecture copies nothing
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # files saved before torch 1.6 are no zip archives and cannot be mapped
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def config_from_state(state: dict[str, torch.Tensor], path: Path, arch: str | None = None) -> VggConfig:
    """The VGG config of a torchvision state dict (VGG-16 or -19 by its number of convolutions, batch norm if it
    has running statistics), checked against the architecture its name says."""
    convs = sum(k.startswith("features.") and v.dim() == 4 for k, v in state.items())
    found = next((a for a, layers in LAYERS.items() if sum(w != POOL for w in layers) == convs), None)
    if found is None or arch not in (None, found):
        raise UserError(f"'{path}' holds {convs} convolution weights under features.N, which is "
                        f"{found or 'neither VGG-16 (13) nor VGG-19 (16)'}" + (f", not {arch}." if found else "."),
                        f"Use --model {found}:{path}" if found else
                        "Pass a torchvision VGG-16 or VGG-19 state dict (features.N.weight, classifier.N.weight).")
    batch_norm = any(k.startswith("features.") and k.endswith("running_mean") for k in state)
    return VggConfig(layers=LAYERS[found], batch_norm=batch_norm)


def check_weights(arch: str, path: Path) -> None:
    """A UserError unless `path` holds torchvision `arch` weights (memory-mapped: nothing is copied)."""
    config_from_state(read_state_dict(path), path, arch)


def load_vgg(path: Path) -> VggModel:
    """The VGG backbone of a torchvision weights file (its `features.*` tensors; the classifier is left out)."""
    state = read_state_dict(path)
    model = VggModel(config_from_state(state, path))
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    try:
        model.load_state_dict(features, strict=True)
    except RuntimeError as err:
        raise UserError(f"The weights in '{path}' do not fit torchvision's VGG: {' '.join(str(err).split())[:400]}",
                        "Pass the state dict of torchvision.models.vgg16() / vgg19() (or their _bn variants).") \
            from err
    return model.eval()
