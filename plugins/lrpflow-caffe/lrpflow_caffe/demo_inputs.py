"""The demonstrator's inputs: its config file, file list, mean file and image preparation.

- :func:`read_config`: the demonstrator's config file (a key is the first line starting with
  the key name; its value the first token of the next line; other lines are ignored);
- :func:`read_filelist`: ``<path relative to PREFIX> <target>`` per line (−1 top class, −2 the
  five top classes, k ≥ 0 class k);
- :func:`read_mean`: a binaryproto ``BlobProto`` (BGR) or the demonstrator's text format;
- :func:`prepare_image`: longest side → ``baseimgsize``, centre crop to the net's input size,
  0–255, RGB → BGR, minus the mean at the same position;
- :class:`FileListSource`: a file list as a lazy data source (data reader ``caffe_filelist``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from lrpflow.errors import ConfigError, DataFormatError, LrpflowError, ModelFormatError
from lrpflow.io.source import DataSource

log = logging.getLogger("lrpflow_caffe.demo")

_INT_KEYS = ("use_mean_file_asbinaryprotoblob", "lastlayerindex", "firstlayerindex", "numclasses", "baseimgsize",
             "relpropformulatype")
_FLOAT_KEYS = ("epsstab", "alphabeta_beta")
_PATH_KEYS = ("param_file", "model_file", "mean_file", "synsetfile", "standalone_outpath", "standalone_rootpath")
OPTIONAL_KEYS = {"auxiliaryvariable_maxlayerindexforflatdistinconv": 0}
FORMULA_TYPES = {0: "epsilon", 2: "alpha_beta", 11: "sensitivity", 99: "sensitivity", 26: "deconvolution"}


# --- config -----------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """The demonstrator's settings (names as in its config file)."""

    param_file: str
    model_file: str
    mean_file: str
    synsetfile: str
    standalone_outpath: str
    standalone_rootpath: str
    use_mean_file_asbinaryprotoblob: int
    lastlayerindex: int
    firstlayerindex: int
    numclasses: int
    baseimgsize: int
    relpropformulatype: int
    epsstab: float
    alphabeta_beta: float
    auxiliaryvariable_maxlayerindexforflatdistinconv: int = 0
    path: str = "<config>"
    lines: dict[str, int] = field(default_factory=dict)  #: key → line number of its value

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines.get(key, '?')}"


def read_config(path: str) -> DemoConfig:
    """The demonstrator's config: for each key, the first line starting with it; the value is the first token of the next line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the demonstrator config: {getattr(err, 'strerror', None) or err}") from err
    values: dict[str, Any] = {}
    where: dict[str, int] = {}
    for key in (*_PATH_KEYS, *_INT_KEYS, *_FLOAT_KEYS, *OPTIONAL_KEYS):
        found = next((i for i, line in enumerate(lines) if line.strip(" \t").startswith(key)), None)
        if found is None:
            if key in OPTIONAL_KEYS:
                values[key] = OPTIONAL_KEYS[key]
                continue
            raise ConfigError(f"{path}: missing key {key!r} (a line starting with it, the value on the next line)")
        lineno = found + 2  # 1-based number of the value line
        tokens = lines[found + 1].split() if found + 1 < len(lines) else []
        if not tokens:
            raise ConfigError(f"{path}:{lineno}: key {key!r} (line {found + 1}) needs a value on the next line")
        token = tokens[0]
        try:
            values[key] = int(token) if key in _INT_KEYS or key in OPTIONAL_KEYS else \
                float(token) if key in _FLOAT_KEYS else token
        except ValueError:
            kind = "an integer" if key in _INT_KEYS or key in OPTIONAL_KEYS else "a number"
            raise ConfigError(f"{path}:{lineno}: {key} must be {kind}, got {token!r}") from None
        where[key] = lineno
    cfg = DemoConfig(**values, path=path, lines=where)
    _check_config(cfg)
    return cfg


def _check_config(cfg: DemoConfig) -> None:
    if cfg.relpropformulatype not in FORMULA_TYPES:
        raise ConfigError(f"{cfg.where('relpropformulatype')}: relpropformulatype must be one of "
                          f"{', '.join(f'{k} ({v})' for k, v in FORMULA_TYPES.items())}, got {cfg.relpropformulatype}")
    if cfg.use_mean_file_asbinaryprotoblob not in (0, 1, 2):
        raise ConfigError(f"{cfg.where('use_mean_file_asbinaryprotoblob')}: use_mean_file_asbinaryprotoblob must be 0 "
                          f"(text), 1 (binaryproto, BGR) or 2 (binaryproto, RGB), got {cfg.use_mean_file_asbinaryprotoblob}")
    if cfg.numclasses < 1:
        raise ConfigError(f"{cfg.where('numclasses')}: numclasses must be ≥ 1, got {cfg.numclasses}")
    if cfg.baseimgsize < 1:
        raise ConfigError(f"{cfg.where('baseimgsize')}: baseimgsize must be ≥ 1, got {cfg.baseimgsize}")
    if cfg.lastlayerindex < -2:
        raise ConfigError(f"{cfg.where('lastlayerindex')}: lastlayerindex must be −1, −2 or a layer index ≥ 0, "
                          f"got {cfg.lastlayerindex}")
    if cfg.firstlayerindex != 0:
        raise ConfigError(f"{cfg.where('firstlayerindex')}: only firstlayerindex 0 (heatmaps at the input) is supported, "
                          f"got {cfg.firstlayerindex}")
    if not numpy.isfinite(cfg.epsstab) or cfg.epsstab < 0:
        raise ConfigError(f"{cfg.where('epsstab')}: epsstab must be a finite number ≥ 0, got {cfg.epsstab}")
    if not numpy.isfinite(cfg.alphabeta_beta) or cfg.alphabeta_beta < 0:
        raise ConfigError(f"{cfg.where('alphabeta_beta')}: alphabeta_beta must be a finite number ≥ 0, got {cfg.alphabeta_beta}")
    if not cfg.standalone_rootpath:
        raise ConfigError(f"{cfg.where('standalone_rootpath')}: standalone_rootpath must not be empty")
    for key in ("param_file", "model_file", "mean_file", "synsetfile"):
        if not os.path.isfile(getattr(cfg, key)):
            raise ConfigError(f"{cfg.where(key)}: {key} {getattr(cfg, key)!r} is not a file (paths are relative to the "
                              f"working directory {os.getcwd()})")


# --- file list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One line of the file list."""

    path: str  #: ``PREFIX/relpath``, as the C++ builds it
    target: int  #: −1 top class, −2 top five, k ≥ 0 class k
    line: int


def read_filelist(path: str, prefix: str) -> list[Entry]:
    """``<path relative to PREFIX> <target>`` per line; blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the file list: {getattr(err, 'strerror', None) or err}") from err
    out = []
    for i, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise ConfigError(f"{path}:{i}: expected '<image path> <target>' (target −1, −2 or a class index), got {line!r}")
        try:
            target = int(tokens[1])
        except ValueError:
            raise ConfigError(f"{path}:{i}: the target must be −1, −2 or a class index ≥ 0, got {tokens[1]!r}") from None
        if target < -2:
            raise ConfigError(f"{path}:{i}: the target must be −1, −2 or a class index ≥ 0, got {target}")
        out.append(Entry(f"{prefix}/{tokens[0]}", target, i))
    if not out:
        raise ConfigError(f"{path}: the file list names no images")
    return out


# --- mean and images ----------------------------------------------------------------------------


def read_mean(path: str, mode: int) -> numpy.ndarray:
    """The mean image as (C, H, W) in the net's channel order (BGR).

    ``mode`` 1: a binaryproto BlobProto in BGR (ILSVRC's ``imagenet_mean.binaryproto``, legacy
    4-D fields); 2: a binaryproto in RGB (channels reversed here); 0: the demonstrator's text
    format ``C``, ``H W``, then per channel the values with the row index running fastest
    (``value[h + w·H]``, as ``compute_heatmaps.cpp`` reads them).
    """
    if mode in (1, 2):
        from lrpflow_caffe.protofiles import read_blob_binary

        try:
            arr = read_blob_binary(path)
        except ModelFormatError as err:
            raise DataFormatError(str(err)) from err
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3:
            raise DataFormatError(f"{path}: a mean blob must be (1, C, H, W) or (C, H, W), got shape {arr.shape}")
        return arr[::-1].astype(numpy.float64) if mode == 2 else arr.astype(numpy.float64)
    try:
        with open(path, encoding="utf-8") as f:
            tokens = f.read().split()
    except (OSError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: cannot read the text mean file: {getattr(err, 'strerror', None) or err}") from err
    try:
        c, h, w = (int(t) for t in tokens[:3])
        values = numpy.array([float(t) for t in tokens[3:]])
    except ValueError as err:
        raise DataFormatError(f"{path}: a text mean file holds C, H, W then numbers: {err}") from err
    if min(c, h, w) < 1 or values.size != c * h * w:
        raise DataFormatError(f"{path}: header says {c}×{h}×{w} = {c * h * w} values, the file holds {values.size}")
    return values.reshape(c, w, h).transpose(0, 2, 1)  # value[h + w·H] per channel


def _load_rgb(path: str) -> numpy.ndarray:
    """An image as (H, W, 3) float64 in 0..255 (grayscale repeated, alpha dropped)."""
    import imageio.v3 as iio

    try:
        img = numpy.asarray(iio.imread(path, plugin="pillow", index=0))
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad image
        raise DataFormatError(f"{path}: not a readable image: {err}") from err
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or min(img.shape[:2]) < 1:
        raise DataFormatError(f"{path}: expected a grayscale or colour image, got an array of shape {img.shape}")
    if img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if img.shape[2] == 1:
        img = numpy.repeat(img, 3, axis=2)
    scale = 255.0 / numpy.iinfo(img.dtype).max if img.dtype.kind in "ui" else 255.0
    return img.astype(numpy.float64) * scale


def prepare_image(path: str, in_hw: tuple[int, int], baseimgsize: int, mean: numpy.ndarray | None
                  ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """``(net input (C, H, W) BGR minus mean, image as inputted (H, W, 3) RGB in [0, 1])``.

    The image is resized (bilinear, anti-aliased) so its longest side is ``baseimgsize``, then
    cut to the input size: ``(baseimgsize − max(H, W)) // 2`` off the long side, centred on
    the short side (edge pixels repeated where the short side is shorter than the input).
    The mean is cut around its centre the same way and subtracted at the same position.
    """
    import skimage.transform

    img = _load_rgb(path)
    rows, cols = img.shape[:2]
    r = baseimgsize / (cols if cols > rows else rows)
    size = (max(1, int(round(rows * r))), max(1, int(round(cols * r))))
    if size != (rows, cols):
        img = skimage.transform.resize(img, (*size, 3), order=1, anti_aliasing=True, preserve_range=True)
    hei, wid = img.shape[:2]
    inh, inw = in_hw
    border = (baseimgsize - max(inh, inw)) // 2

    def cut(a: numpy.ndarray, axis: int, n: int, long_side: bool) -> numpy.ndarray:
        if long_side:
            start = border
        elif a.shape[axis] >= n:
            start = (a.shape[axis] - n) // 2
        else:  # shorter than the input: centre it, repeat the edge pixels
            before = (n - a.shape[axis]) // 2
            widths = [(0, 0)] * a.ndim
            widths[axis] = (before, n - a.shape[axis] - before)
            return numpy.pad(a, widths, mode="edge")
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, start + n)
        out = a[tuple(index)]
        if out.shape[axis] != n:
            raise DataFormatError(f"{path}: the resized image ({hei}×{wid}) is smaller than the net input ({inh}×{inw})")
        return out

    crop = cut(cut(img, 0, inh, hei > wid), 1, inw, hei <= wid)
    bgr = crop[:, :, ::-1].transpose(2, 0, 1)
    if mean is not None:
        mh, mw = mean.shape[1:]
        bm = min((mh - inh) // 2, (mw - inw) // 2)
        top = bm if hei > wid else (mh - inh) // 2
        left = bm if hei <= wid else (mw - inw) // 2
        bgr = bgr - mean[:, top : top + inh, left : left + inw]
    return numpy.ascontiguousarray(bgr), crop / 255.0


class FileListSource(DataSource):
    """The images of a demonstrator file list, prepared lazily (:func:`prepare_image`); labels are the targets.

    An image that cannot be read gives zeros and is listed in ``failed`` (row → message), so
    the other images of its batch are still processed.
    """

    def __init__(self, entries: Sequence[Entry], path: str, in_hw: tuple[int, int], baseimgsize: int,
                 mean: numpy.ndarray | None) -> None:
        super().__init__(path)
        self.entries = list(entries)
        self.in_hw = (int(in_hw[0]), int(in_hw[1]))
        self.baseimgsize = int(baseimgsize)
        self.mean = mean
        self._raw_shape = (len(self.entries), 3, *self.in_hw)
        self._raw_dtype = numpy.dtype("float64")  # prepared in float64; the explainer casts to its dtype
        self.labels = numpy.array([e.target for e in self.entries], dtype=numpy.int64)
        self.failed: dict[int, str] = {}
        self.as_inputted: dict[int, numpy.ndarray] = {}  #: row → (H, W, 3) RGB in [0, 1], for the rows read last
        if mean is not None and (mean.shape[0] != 3 or mean.shape[1] < self.in_hw[0] or mean.shape[2] < self.in_hw[1]):
            raise DataFormatError(f"{path}: the mean image {mean.shape} must have 3 channels and be at least the net "
                                  f"input size {self.in_hw}")

    def _rows(self, start: int, stop: int) -> numpy.ndarray:
        out = numpy.zeros((max(0, stop - start), *self._raw_shape[1:]), dtype=self._raw_dtype)
        self.as_inputted = {}
        for k, entry in enumerate(self.entries[start:stop]):
            try:
                x, shown = prepare_image(entry.path, self.in_hw, self.baseimgsize, self.mean)
            except (LrpflowError, OSError, ValueError) as err:
                self.failed[start + k] = str(err)
                log.error("%s (file list line %d): %s", entry.path, entry.line, err)
                continue
            out[k] = x
            self.as_inputted[start + k] = shown
        return out


def read_filelist_source(path: str, prefix: str = ".", size: Sequence[int] = (227, 227), base_size: int = 256,
                         mean: str | None = None, mean_format: int = 1) -> FileListSource:
    """Data reader ``caffe_filelist``: a demonstrator file list as a lazy source of net inputs (N, 3, H, W)."""
    entries = read_filelist(os.fspath(path), prefix)
    m = None if mean is None else read_mean(mean, int(mean_format))
    return FileListSource(entries, os.fspath(path), (int(size[0]), int(size[1])), int(base_size), m)
