"""Pretrained weights from the local caches only: torchvision's ImageNet ResNets and MedicalNet's 3D ResNets under
``torch.hub.get_dir()`` (``TORCH_HOME``) and Ultralytics checkpoints in its weights dir. Nothing here downloads at
run time: a missing file is one ``InputError`` naming the path and the ``vsuite weights pull`` command that fills
it on a connected machine, with the download checked before it lands in the cache.

Torch, torchvision and Ultralytics are imported inside the functions: ``vsuite`` loads this module's CLI.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import InputError

# Pinned enum members, not ``DEFAULT``: a torchvision upgrade must not silently swap the starting weights.
TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
}
ULTRALYTICS_EXAMPLES = ("yolov5nu.pt", "yolov5su.pt")
# Tencent's MedicalNet 3D ResNets (23 data sets), as MONAI's own loader names them on the Hugging Face hub.
MEDICALNET_DEPTHS = (10, 18, 34, 50)
Source = Literal["torchvision", "ultralytics", "medicalnet"]


@dataclass(frozen=True)
class WeightsEntry:
    """One pullable weights file: where it comes from and where the run-time lookup expects it."""

    name: str
    source: Source
    url: str
    path: Path
    check: str  # what ``pull`` verifies, in words


def torch_checkpoint_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints`` when set): where torchvision keeps weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_url(arch: str) -> str:
    """The official URL of ``arch``'s ImageNet weights, from torchvision's weights API."""
    import torchvision

    return torchvision.models.get_weight(TORCHVISION_WEIGHTS[arch]).url


def ultralytics_weights_dir() -> Path:
    """Ultralytics' weights dir (its settings' ``weights_dir``), where a bare name like ``yolov5nu.pt`` resolves."""
    from common.runtime import import_ultralytics

    import_ultralytics()
    from ultralytics.utils import SETTINGS

    path = Path(SETTINGS["weights_dir"])
    return path if path.is_absolute() else path.resolve()  # relative to the working directory, as Ultralytics reads it


def ultralytics_asset_names() -> frozenset[str]:
    """The .pt checkpoints Ultralytics publishes as release assets (its own list)."""
    from common.runtime import import_ultralytics

    import_ultralytics()
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    return frozenset(n for n in GITHUB_ASSETS_NAMES if n.endswith(".pt"))


def ultralytics_url(name: str) -> str:
    """The release URL Ultralytics itself would fetch ``name`` from (its repo and default release)."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_REPO, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters["release"].default
    return f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{release}/{name}"


def medicalnet_name(depth: int) -> str:
    return f"medicalnet_resnet{depth}"


def medicalnet_entry(depth: int) -> WeightsEntry:
    """MedicalNet's resnet``depth`` file: the Hugging Face URL MONAI's loader uses, cached under the torch hub dir."""
    file = f"resnet_{depth}_23dataset.pth"
    url = f"https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{depth}/resolve/main/{file}"
    return WeightsEntry(medicalnet_name(depth), "medicalnet", url, torch_checkpoint_dir() / "medicalnet" / file,
                        "loads as a MedicalNet 3D ResNet backbone (names and shapes)")


def weights_entry(name: str) -> WeightsEntry:
    """The entry ``vsuite weights pull NAME`` works on: ``resnet18|34|50`` (ImageNet), ``medicalnet_resnet18``
    (MedicalNet 3D) or an Ultralytics .pt."""
    for depth in MEDICALNET_DEPTHS:
        if name == medicalnet_name(depth):
            return medicalnet_entry(depth)
    if name in TORCHVISION_WEIGHTS:
        url = torchvision_url(name)
        return WeightsEntry(name, "torchvision", url, torch_checkpoint_dir() / url.rsplit("/", 1)[-1],
                            "sha256 prefix in the file name")
    if name in ultralytics_asset_names():
        return WeightsEntry(name, "ultralytics", ultralytics_url(name), ultralytics_weights_dir() / name,
                            "loads as an Ultralytics checkpoint (safe loader)")
    raise InputError(f"weights {name!r}: unknown; expected one of {', '.join(TORCHVISION_WEIGHTS)} (ImageNet, "
                     f"torchvision), {', '.join(medicalnet_name(d) for d in MEDICALNET_DEPTHS)} (MedicalNet 3D) "
                     f"or an Ultralytics checkpoint such as {', '.join(ULTRALYTICS_EXAMPLES)}")


def pull_command(name: str) -> str:
    return f"vsuite weights pull {name}"


def not_cached(what: str, name: str, path: Path) -> InputError:
    """The one offline error: what was asked for, where it was looked for, and how to put it there."""
    return InputError(f"{what}: {path} is not in the local cache (weights are never downloaded at run time); "
                      f"on a connected machine run `{pull_command(name)}` (or copy the file to that path)")


def imagenet_weights(arch: str) -> Path:
    """The cached ImageNet state_dict of ``arch``; InputError when the arch has none or it is not cached."""
    if arch not in TORCHVISION_WEIGHTS:
        raise InputError(f"classifier.weights imagenet: no ImageNet weights for {arch!r}; "
                         f"expected one of {', '.join(TORCHVISION_WEIGHTS)}")
    return cached_path(weights_entry(arch), f"classifier.weights imagenet ({arch})")


def cached_path(entry: WeightsEntry, what: str) -> Path:
    """``entry``'s file in its cache, or the one offline error (``not_cached``) saying ``what`` needed it."""
    if not entry.path.is_file():
        raise not_cached(what, entry.name, entry.path)
    return entry.path


def medicalnet_weights(depth: int) -> Path:
    """The cached MedicalNet resnet``depth`` file; InputError when the depth has none or it is not cached."""
    if depth not in MEDICALNET_DEPTHS:
        raise InputError(f"model.weights medicalnet: no MedicalNet weights for resnet{depth}; expected one of "
                         f"{', '.join(f'resnet{d}' for d in MEDICALNET_DEPTHS)}")
    return cached_path(medicalnet_entry(depth), f"model.weights medicalnet (resnet{depth})")


def medicalnet_state(path: Path, depth: int) -> dict:
    """The backbone state_dict in a MedicalNet file (``module.`` prefixes dropped), checked name by name and shape
    by shape against MONAI's resnet``depth`` built the way MedicalNet trained it; InputError naming ``path``."""
    import torch
    from monai.networks import nets
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or corrupt files
        raise InputError(f"{path}: refused, not a readable torch weights file ({type(exc).__name__})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path}: refused, no state_dict in it")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
    ref = getattr(nets, f"resnet{depth}")(spatial_dims=3, n_input_channels=1, feed_forward=False,
                                         shortcut_type=shortcut, bias_downsample=bias_downsample).state_dict()
    missing = [k for k in ref if k not in state]
    wrong = [k for k in ref if k in state and tuple(getattr(state[k], "shape", ())) != tuple(ref[k].shape)]
    if missing or wrong:
        raise InputError(f"{path}: refused, not a MedicalNet resnet{depth} backbone ({len(missing)} tensors "
                         f"missing, {len(wrong)} of another shape, e.g. {(missing + wrong)[0]})")
    return {k: state[k] for k in ref}


def ultralytics_weights(name: str) -> Path | None:
    """``name`` (a bare file name) in Ultralytics' weights dir; InputError when it is a published checkpoint
    that is not cached there; None when it is neither (the caller reports a missing local file)."""
    path = ultralytics_weights_dir() / name
    if path.is_file():
        return path
    if name in ultralytics_asset_names():
        raise not_cached(f"detector weights {name}", name, path)
    return None


def sha256_prefix_check(url: str) -> Callable[[str], None]:
    """torch.hub's convention: ``<name>-<sha256 prefix>.<ext>``; the digest must start with that prefix."""
    import torch.hub

    match = torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1])
    if not match:
        raise InputError(f"{url}: the file name carries no sha256 prefix to check against")
    prefix = match.group(1)

    def check(digest: str) -> None:
        if not digest.startswith(prefix):
            raise InputError(f"{url}: sha256 {digest} does not start with {prefix} (the file name's hash): refused")

    return check


def check_ultralytics_checkpoint(path: Path, url: str) -> None:
    """Load ``path`` with Ultralytics' safe loader (tensors and its own network classes, no code) and require a
    model in it: Ultralytics publishes no hashes for its assets, so this is what a pull can verify."""
    from common.runtime import import_ultralytics

    import_ultralytics()
    from torch import nn
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:
        raise InputError(f"{url}: refused, not a loadable Ultralytics checkpoint ({type(exc).__name__})") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module):
        raise InputError(f"{url}: refused, the checkpoint holds no Ultralytics model")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, *, timeout: float = 60) -> str:
    """Stream ``url`` (http(s) or file://) to ``dest``; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                f.write(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise InputError(f"{url}: download failed ({exc}): is this machine online, is the URL right?") from None
    return digest.hexdigest()


def verify(entry: WeightsEntry, path: Path, digest: str, url: str) -> None:
    """Raise InputError unless ``path`` (sha256 ``digest``) passes ``entry``'s check."""
    if entry.source == "torchvision":
        sha256_prefix_check(entry.url)(digest)  # the official file name holds the hash, whatever ``url`` is
    elif entry.source == "medicalnet":  # no hash pinned (MONAI's loader checks none either): check the structure
        medicalnet_state(path, int(entry.name.removeprefix("medicalnet_resnet")))
    else:
        check_ultralytics_checkpoint(path, url)


def pull(name: str, mirror: str | None = None) -> tuple[WeightsEntry, str]:
    """Download ``name`` into its cache and verify it; a cached file that passes the check is kept. ``mirror``:
    a base URL (an internal mirror, http or file://) serving the same file names. Returns (entry, what happened)."""
    entry = weights_entry(name)
    if entry.path.is_file():
        try:
            verify(entry, entry.path, file_sha256(entry.path), str(entry.path))
            return entry, "already cached"
        except InputError:
            pass  # a damaged cached copy: fetch it again
    url = f"{mirror.rstrip('/')}/{entry.path.name}" if mirror else entry.url
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    # same suffix as the target: Ultralytics' loader insists on .pt
    partial = entry.path.with_name(f".{entry.path.stem}.{os.getpid()}.partial{entry.path.suffix}")
    try:
        verify(entry, partial, download(url, partial), url)
        os.replace(partial, entry.path)
    finally:
        partial.unlink(missing_ok=True)
    return entry, f"downloaded from {url}"


def _listing_row(name: str, source: Source, path: Path) -> dict:
    present = path.is_file()
    return {"name": name, "source": source, "path": str(path), "cached": present,
            "mb": round(path.stat().st_size / 1e6, 1) if present else None}


def cache_listing() -> list[dict]:
    """Every ImageNet ResNet, every MedicalNet 3D ResNet, the example Ultralytics checkpoints and any other .pt in
    Ultralytics' weights dir: name, source, cache path, cached or not, size in MB."""
    rows = [_listing_row(n, "torchvision", weights_entry(n).path) for n in TORCHVISION_WEIGHTS]
    rows += [_listing_row(medicalnet_name(d), "medicalnet", medicalnet_entry(d).path) for d in MEDICALNET_DEPTHS]
    weights_dir = ultralytics_weights_dir()
    others = sorted(p.name for p in weights_dir.glob("*.pt")) if weights_dir.is_dir() else []
    for name in dict.fromkeys((*ULTRALYTICS_EXAMPLES, *others)):
        rows.append(_listing_row(name, "ultralytics", weights_dir / name))
    return rows
