"""Vision backbones: the image processor, the typed groups and frozen-feature cache stack of every architecture
(tiny random models saved locally), EfficientNet-Lite against the original definition and on real pictures, VGG
from torchvision-named weights files."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoImageProcessor,
    ConvNextConfig,
    ConvNextForImageClassification,
    EfficientNetConfig,
    EfficientNetForImageClassification,
    MobileNetV1Config,
    MobileNetV1ForImageClassification,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from transferlab.backbones import family_of, layer_groups, open_backbone, open_saved
from transferlab.backbones.vision import ImageProcessor, build_backbone, feature_size, pooled_features, to_rgb
from transferlab.backbones.vision.efficientnet_lite import (
    EfficientNetLiteConfig,
    SameConv2d,
    pretrained_classifier,
    variant_config,
)
from transferlab.backbones.vision.vgg import VggConfig, VggModel
from transferlab.config import LoraOptions
from transferlab.errors import UserError
from transferlab.models.adapters import add_lora, lora_targets
from transferlab.training.feature_cache import CachePoint, PhaseCache
from transferlab.training.fold_batch_norm import batch_norms_folded

DATA = Path(__file__).parent / "data"
SIZE = 32  # tiny models see 32 x 32 images

def trained_norms(model: nn.Module) -> nn.Module:
    """Batch-norm scales of 1, as in a trained checkpoint: HF's EfficientNet initialises them at ~N(0, 0.02), which
    makes the gradients of a random deep model underflow to zero."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return model


TINY = {  # an image classifier of each architecture, as a user's downloaded checkpoint would be
    "resnet": lambda: ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], layer_type="basic", num_labels=3)),
    "mobilenet_v1": lambda: MobileNetV1ForImageClassification(MobileNetV1Config(
        depth_multiplier=0.25, image_size=SIZE, num_labels=3)),
    "mobilenet_v2": lambda: MobileNetV2ForImageClassification(MobileNetV2Config(
        depth_multiplier=0.25, image_size=SIZE, num_labels=3)),
    "efficientnet": lambda: trained_norms(EfficientNetForImageClassification(EfficientNetConfig(
        width_coefficient=0.25, depth_coefficient=0.5, image_size=SIZE, hidden_dim=320, num_labels=3))),
    "convnext": lambda: ConvNextForImageClassification(ConvNextConfig(
        hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1], layer_scale_init_value=1.0, num_labels=3)),
    "vit": lambda: ViTForImageClassification(ViTConfig(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=SIZE,
        patch_size=8, num_labels=3)),
}
# the groups each architecture splits into, bottom to top (name, level, kind); the task's head on top
GROUPS = {
    "resnet": [("stem", 0, "stem")] + [(f"stage.{i}", i + 1, "block") for i in range(4)] + [("head", 5, "head")],
    "mobilenet_v1": [("stem", 0, "stem")] + [(f"stage.{i}", i + 1, "block") for i in range(5)]
    + [("head", 6, "head")],
    "mobilenet_v2": [("stem", 0, "stem")] + [(f"stage.{i}", i + 1, "block") for i in range(6)]
    + [("top", 6, "block"), ("head", 7, "head")],
    "efficientnet": [("stem", 0, "stem")] + [(f"stage.{i}", i + 1, "block") for i in range(7)]
    + [("top", 7, "block"), ("head", 8, "head")],
    "convnext": [("stem", 0, "stem")] + [(f"stage.{i}", i + 1, "block") for i in range(4)]
    + [("norm", 4, "norm"), ("head", 5, "head")],
    "vit": [("embeddings", 0, "embeddings")] + [(f"layer.{i}.{part}", i + 1, part) for i in range(3)
                                                  for part in ("attention", "ffn")]
    + [("norm", 3, "norm"), ("head", 4, "head")],
    "efficientnet_lite": [("stem", 0, "stem")] + [(f"stage.{i}", i + 1, "block") for i in range(7)]
    + [("top", 7, "block"), ("head", 8, "head")],
    "vgg": [(f"stage.{i}", i + 1, "block") for i in range(5)] + [("head", 6, "head")],
}


class TinyImageClassifier(nn.Module):
    """What an image task builds: a linear head on the backbone's pooled features (cacheable like the text heads)."""

    def __init__(self, backbone: nn.Module, num_labels: int = 3):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_size(backbone), num_labels)

    def features(self, pixel_values: torch.Tensor, **unused) -> torch.Tensor:
        return self.pool_output(self.backbone(pixel_values=pixel_values), None)

    def pool_output(self, output, mask) -> torch.Tensor:
        return pooled_features(output)

    def forward(self, pixel_values=None, labels=None, features=None) -> ImageClassifierOutputWithNoAttention:
        logits = self.head(self.features(pixel_values) if features is None else features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two (no synchronisation), above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each tiny architecture saved as config.json + model.safetensors (+ VGG as a torchvision-named .pth and a
    tiny EfficientNet-Lite saved by save_pretrained)."""
    root = tmp_path_factory.mktemp("vision")
    torch.manual_seed(0)
    dirs = {}
    for name, make in TINY.items():
        make().save_pretrained(root / name)
        dirs[name] = root / name
    lite = build_backbone(EfficientNetLiteConfig(width_coefficient=0.25, head_channels=64, image_size=SIZE))
    lite.save_pretrained(root / "efficientnet_lite")
    dirs["efficientnet_lite"] = root / "efficientnet_lite"
    return dirs


def tiny_vgg() -> VggModel:
    return VggModel(VggConfig(layers=[4, "M", 8, "M", 8, 8, "M", 16, "M", 16, "M"], batch_norm=True))


def backbone_of(name: str, model_dirs) -> nn.Module:
    return tiny_vgg() if name == "vgg" else open_backbone(str(model_dirs[name])).load()


def pictures(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, SIZE, SIZE)


# ---- the image processor ----------------------------------------------------------------------------------
def test_every_pil_mode_becomes_rgb():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red: white once composited
    deep = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16))
    palette = grey.convert("P")
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    assert all(to_rgb(image).mode == "RGB" for image in (grey, rgba, deep, palette, cmyk))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    stretched = np.asarray(to_rgb(deep))[..., 0]  # 16-bit grey stretched to the full 8-bit range, not clipped
    assert stretched.min() == 0 and stretched.max() == 255 and len(np.unique(stretched)) == 64


def test_the_processor_encodes_pads_resizes_and_saves_what_transformers_loads(tmp_path):
    processor = open_backbone("efficientnet-lite0").processor
    assert (processor.modality, processor.resolution) == ("image", 224)
    assert processor.mean == pytest.approx((127 / 255,) * 3) and processor.std == pytest.approx((128 / 255,) * 3)
    images = [Image.new("L", (300, 200), 40), Image.new("RGBA", (50, 90), (10, 200, 30, 255))]
    features = processor.encode(images)
    assert [f["pixel_values"].shape for f in features] == [(3, 224, 224)] * 2
    assert processor.length(features[0]) == 1
    assert [f["pixel_values"].shape for f in processor.encode(images, size=112)] == [(3, 112, 112)] * 2
    batch = processor.pad([{**f, "labels": i} for i, f in enumerate(features)])
    assert batch["pixel_values"].shape == (2, 3, 224, 224) and batch["labels"].tolist() == [0, 1]
    # a grey pixel of value 40 normalised as the checkpoints expect: (40 - 127) / 128
    assert features[0]["pixel_values"][:, 100, 100] == pytest.approx([(40 - 127) / 128] * 3, abs=1e-3)
    processor.save(tmp_path)
    reloaded = ImageProcessor(AutoImageProcessor.from_pretrained(str(tmp_path)))
    assert torch.equal(reloaded.encode(images)[1]["pixel_values"], features[1]["pixel_values"])


# ---- groups, cache stack, training step: every architecture -----------------------------------------------
ARCHITECTURES = [*TINY, "efficientnet_lite", "vgg"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_groups_place_every_parameter_by_stage(name, model_dirs):
    model = TinyImageClassifier(backbone_of(name, model_dirs))
    groups = layer_groups(model)
    assert [(g.name, g.level, g.kind) for g in groups] == GROUPS[name]
    assert groups.total == sum(p.numel() for p in model.parameters())
    top = groups.levels()[0]  # the last stage with the final conv or norm: one unit, what progressive unfreezes
    assert {groups[g].unit for g in top} == {groups.unit(top)} and groups.unit(top) in top[0]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_cache_stack_runs_from_every_level_as_the_whole_model_does(name, model_dirs):
    model = TinyImageClassifier(backbone_of(name, model_dirs)).eval()
    pixels = pictures()
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        for level in range(2, layer_groups(model).num_layers + 1):  # the levels above a frozen one
            cache = PhaseCache(model, CachePoint(level - 1))
            rows = cache.rows({"pixel_values": pixels}, torch.float32)
            assert len(rows) == 2 and rows[0].dim() in (2, 3)  # one fixed-shape state per image
            logits = cache.module(**cache.collate_rows(rows)).logits
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


FOLDABLE = {"resnet", "mobilenet_v1", "mobilenet_v2", "efficientnet", "efficientnet_lite", "vgg"}  # conv + BN


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_batch_norms_fold_into_their_convolutions_and_come_back(name, model_dirs):
    model = TinyImageClassifier(backbone_of(name, model_dirs)).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # statistics worth folding
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    expected = model.features(pictures())
    with batch_norms_folded(model) as pairs, torch.no_grad():
        assert (pairs > 0) == (name in FOLDABLE)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) or name not in FOLDABLE
        torch.testing.assert_close(model.features(pictures()), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError), batch_norms_folded(model):
        raise RuntimeError("a failing pass")
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[n] is p and torch.equal(p, value) for n, (p, value) in before.items())  # the same objects


class BatchNormFirst(nn.Module):
    """A conv registered before the batch norm that the forward pass applies before it: not a foldable pair."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(2.0), self.bn.running_var.fill_(4.0)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(pixel_values)).mean((2, 3))


def test_the_cache_folds_only_when_the_folded_model_computes_what_the_model_computes():
    model, features = BatchNormFirst().eval(), [{}, {}]
    with torch.no_grad():
        plain = model.features(pictures())
        with batch_norms_folded(model) as pairs:  # the pair is found by its order, and folding it is wrong
            assert pairs == 1 and not torch.allclose(model.features(pictures()), plain, atol=1e-2)
    cache = PhaseCache(model, CachePoint(None))
    batches = [{"pixel_values": pictures(), "_index": torch.tensor([0, 1])}]
    assert cache.add(features, batches, None, nullcontext, lambda nbytes, done: True)
    torch.testing.assert_close(cache.get(features).values, plain)  # the cache ran unfolded


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_training_step_reaches_every_parameter(name, model_dirs):
    model = TinyImageClassifier(backbone_of(name, model_dirs)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(pixel_values=pictures(4), labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    assert torch.isfinite(loss)
    # every parameter is used (ViT's pooler is dropped) and reached by the gradient
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_lora_adapts_attention_or_else_the_blocks_and_leaves_grouped_convolutions_out(name, model_dirs):
    model = TinyImageClassifier(backbone_of(name, model_dirs)).train()
    groups, options = layer_groups(model), LoraOptions(rank=2)
    targets = lora_targets(model, groups, options)
    kind = "attention" if name == "vit" else "block"
    owned = {id(p) for g in groups.of_kind(kind) for _, p in groups[g].params}
    assert targets and all(id(m.weight) in owned and getattr(m, "groups", 1) == 1 for m in targets.values())
    add_lora(model, groups, options)
    model(pixel_values=pictures(4), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == len(targets) and all(p.grad is not None and p.grad.any() for p in lora_b)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_randomize_reinitialises_weights_and_batch_norm_statistics(name, model_dirs):
    backbone = backbone_of(name, model_dirs)
    with torch.no_grad():
        for buffer_name, buffer in backbone.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.fill_(3.0)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.dim() > 1}
    family_of(backbone).randomize(backbone)
    assert all(not torch.equal(p, before[n]) for n, p in backbone.named_parameters() if p.dim() > 1)
    assert all(b.abs().max() == 0 for n, b in backbone.named_buffers() if n.endswith("running_mean"))


@pytest.mark.parametrize("name", [*TINY, "efficientnet_lite"])
def test_a_saved_backbone_dir_opens_with_its_processor_and_rebuilds_from_its_config(name, model_dirs):
    backbone = open_backbone(str(model_dirs[name]))
    assert backbone.family.name == "vision" and backbone.processor.modality == "image"
    module = backbone.load()
    rebuilt = build_backbone(module.config)
    assert type(rebuilt) is type(module) and rebuilt.state_dict().keys() == module.state_dict().keys()
    saved = open_saved(model_dirs[name], module.config.model_type)
    assert saved.processor.resolution == backbone.processor.resolution == module.config.to_dict().get("image_size", 224)
    if name == "efficientnet_lite":  # no preprocessor config saved: the checkpoints' own normalisation
        assert saved.processor.mean == pytest.approx((127 / 255,) * 3)


# ---- EfficientNet-Lite: the original's function, real pictures, the transformers pipeline ----------------
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_lite_logits_match_the_original_definition(name):
    reference = json.loads((DATA / "efficientnet_lite_reference.json").read_text())
    expected = reference["variants"][name]
    size = expected["size"]
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(reference["seed"]))
    with torch.no_grad():
        logits = pretrained_classifier(name)(pixel_values=pixels).logits[0]
    torch.testing.assert_close(logits[:len(expected["first"])], torch.tensor(expected["first"]), rtol=0, atol=1e-4)
    top = logits.topk(5)
    assert top.indices.tolist() == expected["top5"]
    torch.testing.assert_close(top.values, torch.tensor(expected["top5_logits"]), rtol=0, atol=1e-4)


def test_lite0_classifies_real_pictures_and_loads_in_the_transformers_pipeline(tmp_path):
    from skimage import data

    cat, coffee = Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())
    backbone = open_backbone("efficientnet-lite0")
    model = pretrained_classifier("efficientnet-lite0")
    with torch.no_grad():
        probs = model(**backbone.processor.pad(backbone.processor.encode([cat, coffee]))).logits.softmax(-1)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0][0] in range(281, 286) and len(set(top5[0]) & set(range(281, 286))) >= 3  # tabby, tiger cat...
    assert top5[1][0] == 967 and probs[1, 967] > 0.5  # espresso (968, cup, is second)
    model.save_pretrained(tmp_path)
    backbone.processor.save(tmp_path)
    coffee.save(tmp_path / "coffee.png")
    # a fresh process: `import transferlab` loads no torch, yet transformers then knows the architecture
    script = ("import sys, transferlab; assert 'torch' not in sys.modules\n"
              "from transformers import pipeline\n"
              f"best = pipeline('image-classification', model={str(tmp_path)!r}, device='cpu')"
              f"({str(tmp_path / 'coffee.png')!r}, top_k=1)[0]\n"
              "print(best['label'], best['score'])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    label, score = done.stdout.split()[-2:]
    assert label == model.config.id2label[967] and float(score) == pytest.approx(float(probs[1, 967]), abs=1e-4)


def test_lite_pads_as_tensorflow_at_any_size_also_once_exported(tmp_path):
    import onnxruntime

    conv = SameConv2d(2, 2, 3, stride=2, bias=False)
    for size, before_after in ((8, (0, 1)), (9, (1, 1))):  # "SAME": the odd pixel of padding at the end
        x = torch.randn(1, 2, size, size)
        expected = nn.functional.conv2d(nn.functional.pad(x, before_after * 2), conv.weight, stride=2)
        torch.testing.assert_close(conv(x), expected)

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = pretrained_classifier("efficientnet-lite0")

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    model = Logits().eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(tmp_path / "lite0.onnx"), dynamo=False,
                      input_names=["pixel_values"], dynamic_axes={"pixel_values": {0: "batch", 2: "h", 3: "w"}})
    session = onnxruntime.InferenceSession(str(tmp_path / "lite0.onnx"))
    for size in (65, 112):  # exported at 224 (even sizes all the way down); run where odd sizes appear
        pixels = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = model(pixels).numpy()
        np.testing.assert_allclose(session.run(None, {"pixel_values": pixels.numpy()})[0], expected, atol=1e-4)


def test_bundled_names_are_offline_and_lite_sizes_follow_the_variant():
    for name, size in (("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260)):
        backbone = open_backbone(name)
        assert backbone.model_dir.suffix == ".pth" and backbone.processor.resolution == size
    lite2 = build_backbone(variant_config("efficientnet-lite2"))
    assert [len(stage) for stage in lite2.stages] == [1, 3, 3, 4, 4, 5, 1]  # first and last stage not scaled
    assert lite2.stem.conv.out_channels == 32 and lite2.top.conv.out_channels == 1280  # fixed stem and head


# ---- VGG from a user's torchvision weights --------------------------------------------------------------
# torchvision's indices of the convolutions in `features` (ReLU after each, max-pools between the blocks)
TORCHVISION_CONVS = {"vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
                     "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]}


def torchvision_state(arch: str, batch_norm: bool = False) -> dict[str, torch.Tensor]:
    """A state dict named as torchvision's vgg16/vgg19(_bn) saves it, classifier included."""
    from transferlab.backbones.vision.vgg import LAYERS

    state = dict(VggModel(VggConfig(layers=LAYERS[arch], batch_norm=batch_norm)).state_dict())
    state.update({"classifier.0.weight": torch.zeros(2, 3), "classifier.6.bias": torch.zeros(2)})
    return state


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_vgg_parameters_are_named_as_torchvision_names_them(arch):
    state = torchvision_state(arch)
    assert sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")}) == TORCHVISION_CONVS[arch]


def test_vgg_weights_load_from_pth_safetensors_or_a_directory(tmp_path):
    state = torchvision_state("vgg16", batch_norm=True)
    torch.save(state, tmp_path / "vgg16_bn.pth")
    (tmp_path / "st").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "st" / "weights.safetensors")
    for name in (f"vgg16:{tmp_path / 'vgg16_bn.pth'}", f"vgg16:{tmp_path / 'st'}"):
        backbone = open_backbone(name)
        module = backbone.load()
        assert module.config.batch_norm and backbone.processor.resolution == 224
        assert torch.equal(module.features[0].weight, state["features.0.weight"])
        groups = layer_groups(TinyImageClassifier(module))
        assert groups.names == [f"stage.{i}" for i in range(5)] + ["head"]
        assert feature_size(module) == 512
    # a training checkpoint wrapping the state dict, saved from DataParallel
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    assert torch.equal(open_backbone(f"vgg16:{tmp_path / 'ckpt.pt'}").load().features[1].running_var,
                       state["features.1.running_var"])


def test_vgg_mistakes_are_user_errors_that_name_the_fix(tmp_path):
    torch.save(torchvision_state("vgg19"), tmp_path / "vgg19.pth")
    with pytest.raises(UserError, match="vgg19"):
        open_backbone(f"vgg16:{tmp_path / 'vgg19.pth'}")
    with pytest.raises(UserError, match="does not exist"):
        open_backbone(f"vgg16:{tmp_path / 'missing.pth'}")
    torch.save(nn.Linear(2, 2), tmp_path / "pickled_module.pth")  # a whole pickled model: never unpickled
    with pytest.raises(UserError, match="state dict"):
        open_backbone(f"vgg16:{tmp_path / 'pickled_module.pth'}")
    with pytest.raises(UserError, match="exactly one"):
        open_backbone(f"vgg19:{tmp_path}")
