"""Image files as data: one file, a folder or a glob, read lazily batch by batch (PNG/JPEG/... via
Pillow through imageio, resizing via scikit-image).

Preprocessing follows the toolbox's Caffe demonstrator: resize (``size=(H, W)``, or
``base_size`` then a centre ``crop``), crop/pad to ``crop=(H, W)`` (centred; padding with
``fill_value``), optional RGB→BGR ``channel_swap``, ``mean`` subtraction (a scalar, one
value per channel, or an image-sized array or ``.npy`` file that is centre-cropped to
the input size, like the demonstrator's ``cropped_imagenet_mean``) and division by ``std``
(same forms): ``x = (swap(crop(resize(img))) − mean) / std``. Pixels keep their 0..255 range
(so torchvision's normalisation is ``mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]``)
unless the generic ``scale=``/``shift=`` options of ``open_data`` say otherwise.
Samples are (H, W, C) float32, C = 1 for grayscale (``channels=1``) or 3.

:func:`fit_to_model` completes the options from a model's input (size and channels), which is
how ``lrpflow experiment=images`` needs no ``size=``.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import numpy

from lrpflow.errors import DataFormatError, LrpflowError
from lrpflow.io.files import atomic_write
from lrpflow.io.source import DataSource

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".webp")
GLOB_CHARS = "*?["


def _pair(v: Any, name: str) -> tuple[int, int] | None:
    if v is None:
        return None
    t = (int(v), int(v)) if isinstance(v, (int, numpy.integer)) else tuple(int(a) for a in v)
    if len(t) != 2 or min(t) < 1:
        raise DataFormatError(f"images: {name} must be a positive int or (height, width), got {v!r}")
    return t  # type: ignore[return-value]


def list_images(path: str) -> list[str]:
    """The image files a path names: a file, a folder (sorted, by suffix) or a glob pattern (sorted)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(SUFFIXES))
        if not files:
            raise DataFormatError(f"{path}: folder holds no image files ({', '.join(SUFFIXES)})")
        return files
    if os.path.isfile(path):
        return [path]
    if any(c in path for c in GLOB_CHARS):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise DataFormatError(f"{path}: the pattern matches no files")
        return files
    raise DataFormatError(f"{path}: no such image file or folder")


def _center(img: numpy.ndarray, hw: tuple[int, int], value: float) -> numpy.ndarray:
    """Centre-crop or centre-pad the two leading axes to ``hw``."""
    out = img
    for axis, want in enumerate(hw):
        have = out.shape[axis]
        if have > want:
            a = (have - want) // 2
            out = out[a : a + want] if axis == 0 else out[:, a : a + want]
        elif have < want:
            before = (want - have) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, want - have - before)
            out = numpy.pad(out, widths, constant_values=value)
    return out


class ImageSource(DataSource):
    """Image files read and preprocessed batch by batch."""

    def __init__(self, files: Sequence[str], path: str, size: Any = None, base_size: Any = None, crop: Any = None,
                 mean: Any = None, channels: int | None = None, channel_swap: bool = False,
                 fill_value: float = 0.0, std: Any = None) -> None:
        super().__init__(path)
        self.files = list(files)
        self.size = _pair(size, "size")
        self.base_size = _pair(base_size, "base_size")
        self.crop = _pair(crop, "crop")
        if self.size is not None and self.base_size is not None:
            raise DataFormatError(f"{path}: give size= or base_size= (with crop=), not both")
        self.channel_swap = bool(channel_swap)
        self.fill_value = float(fill_value)
        first = self._load(self.files[0], channels)
        self.channels = first.shape[2]
        if self.channels not in (1, 3):
            raise DataFormatError(f"{path}: channels must be 1 or 3, got {self.channels}")
        self._mean = self._prepare_mean(mean, first.shape)
        self._std = self._prepare_mean(std, first.shape, "std")
        if self._std is not None and not (numpy.isfinite(self._std).all() and (self._std > 0).all()):
            raise DataFormatError(f"{path}: std must be positive and finite, got {std!r}")
        self._raw_shape = (len(self.files), *first.shape)
        self._raw_dtype = numpy.dtype("float32")

    def _prepare_mean(self, mean: Any, shape: tuple[int, ...], what: str = "mean") -> numpy.ndarray | None:
        if mean is None:
            return None
        if isinstance(mean, (str, os.PathLike)):
            from lrpflow.io import load_data

            mean = load_data(mean)
        m = numpy.asarray(mean, dtype=numpy.float32)
        if m.ndim == 3 and m.shape[0] in (1, 3) and m.shape[2] not in (1, 3):  # Caffe (C, H, W) mean
            m = m.transpose(1, 2, 0)
        if m.ndim == 4 and m.shape[0] == 1:
            m = m[0]
        if m.ndim == 3:
            m = _center(m, shape[:2], 0.0)
            if m.shape[:2] != shape[:2]:
                raise DataFormatError(f"{self.path}: {what} of shape {m.shape} does not fit images of shape {shape}")
        if m.ndim not in (0, 1, 3) or (m.ndim >= 1 and m.shape[-1] not in (1, shape[2])):
            raise DataFormatError(f"{self.path}: {what} must be a scalar, one value per channel ({shape[2]}) or an "
                                  f"(H, W, C) image, got shape {m.shape}")
        return m

    def _load(self, file: str, channels: int | None = None) -> numpy.ndarray:
        import imageio.v3 as iio
        import skimage.transform

        try:
            img = numpy.asarray(iio.imread(file, plugin="pillow", index=0))
        except Exception as err:
            raise DataFormatError(f"{file}: not a readable image: {err}") from err
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or img.dtype.kind not in "buif":
            raise DataFormatError(f"{file}: expected a grayscale or colour image, got an array of shape {img.shape} ({img.dtype})")
        if img.shape[2] in (2, 4):  # drop alpha
            img = img[:, :, :-1]
        want = channels if channels is not None else getattr(self, "channels", None)
        if want == 3 and img.shape[2] == 1:
            img = numpy.repeat(img, 3, axis=2)
        elif want == 1 and img.shape[2] == 3:
            img = (img.astype(numpy.float64) @ numpy.array([0.2125, 0.7154, 0.0721]))[:, :, None]
        elif want not in (None, 1, 3):
            raise DataFormatError(f"{self.path}: channels must be 1 or 3, got {want}")
        x = img.astype(numpy.float32)
        target = self.size or self.base_size
        if target is not None and x.shape[:2] != target:
            x = skimage.transform.resize(x, (*target, x.shape[2]), order=1, anti_aliasing=True,
                                         preserve_range=True).astype(numpy.float32)
        if self.crop is not None:
            x = _center(x, self.crop, self.fill_value)
        if self.channel_swap and x.shape[2] == 3:
            x = x[:, :, ::-1]
        if getattr(self, "_mean", None) is not None:
            x = x - self._mean
        if getattr(self, "_std", None) is not None:
            x = x / self._std
        return numpy.ascontiguousarray(x, dtype=numpy.float32)

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        out = numpy.empty((max(0, stop - start), *self._raw_shape[1:]), dtype=numpy.float32)
        for k, file in enumerate(self.files[start:stop]):
            img = self._load(file)
            if img.shape != out.shape[1:]:
                raise DataFormatError(f"{file}: image of shape {img.shape} differs from the first one {out.shape[1:]}; "
                                      f"pass size=(H, W) or crop=(H, W)")
            out[k] = img
        return out


def read_images(path: str, size: Any = None, base_size: Any = None, crop: Any = None, mean: Any = None,
                channels: int | None = None, channel_swap: bool = False, fill_value: float = 0.0,
                std: Any = None) -> DataSource:
    """Images from a file, a folder or a glob pattern as (N, H, W, C) float32; see the module doc for options."""
    try:
        return ImageSource(list_images(os.fspath(path)), os.fspath(path), size=size, base_size=base_size, crop=crop,
                           mean=mean, channels=channels, channel_swap=channel_swap, fill_value=fill_value, std=std)
    except LrpflowError:
        raise
    except (TypeError, ValueError) as err:
        raise DataFormatError(f"{path}: invalid image options: {err}") from err


def is_image_data(dcfg: Any) -> bool:
    """Whether a data config reads images (``format: images``, or no format and an image folder/file)."""
    fmt = dcfg.get("format")
    if fmt is not None:
        return str(fmt).lower() in ("images", "image")
    path = str(dcfg.get("path") or "")
    return os.path.isdir(path) or path.lower().endswith(SUFFIXES)


def fit_to_model(options: Any, input_shape: Any) -> dict[str, Any]:
    """Image reader ``options`` completed from a model's (internal, H×W×C) ``input_shape``.

    With none of ``size``, ``base_size``, ``crop`` given, images are resized to the model's
    (H, W); with ``base_size`` but no ``crop``, the centre crop is the model's (H, W); without
    ``channels``, the model's channel count (1 or 3). Options that are given stay; a model
    without a fixed image input (``input_shape`` not (H, W, C)) leaves the options as they are.
    """
    out = dict(options or {})
    shape = tuple(input_shape) if input_shape is not None else ()
    if len(shape) != 3:
        return out
    h, w, c = (int(v) for v in shape)
    if out.get("size") is None and out.get("base_size") is None and out.get("crop") is None:
        out["size"] = [h, w]
    elif out.get("base_size") is not None and out.get("crop") is None:
        out["crop"] = [h, w]
    if out.get("channels") is None and c in (1, 3):
        out["channels"] = c
    return out


def write_image(x: Any, path: str) -> None:
    """One image, (H, W), (H, W, C) or (1, H, W, C), uint8 (or floats in [0, 1]), to PNG/JPEG/...; lossless as PNG."""
    import skimage.io

    arr = numpy.asarray(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise DataFormatError(f"{path}: an image file holds one (H, W[, C]) image, got shape {numpy.asarray(x).shape}")
    if arr.dtype != numpy.uint8:
        if arr.dtype.kind != "f" or arr.size and (arr.min() < 0 or arr.max() > 1):
            raise DataFormatError(f"{path}: image values must be uint8 or floats in [0, 1], got {arr.dtype}")
        arr = numpy.round(arr * 255).astype(numpy.uint8)
    atomic_write(path, lambda tmp: skimage.io.imsave(tmp, arr, check_contrast=False))
