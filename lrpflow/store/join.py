"""Joining the shard stores of one sharded run into one file of HDF5 virtual datasets.

:func:`join` references the shards' rows without copying them; ``lrpflow-join`` is its
command line (:func:`join_main`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import h5py
import numpy

from lrpflow.errors import ConfigError, LrpflowError, StoreError
from lrpflow.store.files import write_error
from lrpflow.store.layout import (
    _FLOAT_FILL, _LIBVER, PARTIAL_SUFFIX, StoreLayout, _names_attr, _now, _partial, check_schema, config_diff, create_groups,
    damaged, fixed, read_attrs, set_attrs,
)

logger = logging.getLogger("lrpflow.store")


def joined_rows(ranges: Sequence[Any]) -> list[int] | None:
    """The dataset rows ``[lo, hi]`` of shards with rows ``ranges`` joined in order; None if not contiguous."""
    try:
        pairs = [(int(r[0]), int(r[1])) for r in ranges]
    except (TypeError, ValueError, IndexError):
        return None
    if not pairs or any(a[1] != b[0] for a, b in zip(pairs, pairs[1:])):
        return None
    return [pairs[0][0], pairs[-1][1]]


def join(paths: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str], *, relative: bool = True,
         overwrite: bool = False) -> str:
    """Join finished shard stores into one store of HDF5 virtual datasets (no data is copied).

    Parameters
    ----------
    paths : sequence of path
        The shard stores, in shard order (their rows are concatenated in this order).
    out_path : path
        The joined store; written to ``out_path + ".partial"`` and renamed when complete.
    relative : bool
        Reference the shards by their path relative to the folder of ``out_path``
        (default: the joined file and its shards can move together, and the joined
        file opens from any working directory). False stores absolute paths (the
        joined file can move alone, the shards cannot).
    overwrite : bool
        Replace an existing ``out_path``.

    Returns
    -------
    str
        ``out_path``.

    Notes
    -----
    Every shard must be complete and have the same schema, layout and model digest;
    an :class:`LrpflowError` names the first file that does not. The joined file takes
    its attributes from the first shard and adds ``shards`` (the referenced paths, as
    stored) and ``shard_rows``. Reading it needs the shards where they were; opening a
    joined store whose shard is missing raises instead of reading fill values.
    """
    out = os.path.abspath(os.fspath(out_path))
    srcs = [os.path.abspath(os.fspath(p)) for p in paths]
    if not srcs:
        raise ConfigError("join() needs at least one shard store")
    if len(set(srcs)) != len(srcs):
        dup = sorted({p for p in srcs if srcs.count(p) > 1})
        raise LrpflowError(f"join(): shard(s) given twice: {dup}")
    if out in srcs or _partial(out) in srcs:
        raise LrpflowError(f"join(): the output {out} is one of the shards")
    if os.path.exists(out) and not overwrite:
        raise LrpflowError(f"{out} exists; pass overwrite=True to replace it")

    first_layout: StoreLayout | None = None
    first_attrs: dict[str, Any] = {}
    first_raw: dict[str, Any] = {}
    rows: list[int] = []
    ranges: list[Any] = []
    resumes = 0
    for p in srcs:
        if p.endswith(PARTIAL_SUFFIX) or (not os.path.exists(p) and os.path.exists(_partial(p))):
            raise LrpflowError(f"join(): shard {p} is incomplete (its run has not finished; only a "
                               f"{PARTIAL_SUFFIX} file exists)")
        if not os.path.exists(p):
            raise LrpflowError(f"join(): shard {p} does not exist")
        try:
            f = h5py.File(p, "r")
        except Exception as err:  # noqa: BLE001 - a damaged header: OSError and others
            raise StoreError(f"join(): cannot open shard {p}: {err}") from err
        with f, damaged(p, "the shard"):
            check_schema(f, p)
            attrs = read_attrs(f)
            if not bool(attrs.get("complete", False)):
                raise LrpflowError(f"join(): shard {p} is incomplete (complete attribute is false)")
            layout = StoreLayout.from_file(f, p)
            n = int(attrs["rows_complete"])
            for field, (h5path, _, dt, _) in layout.datasets().items():
                d = f[h5path]
                if d.shape[0] != n or d.dtype != dt:
                    raise StoreError(f"join(): shard {p}: dataset {h5path!r} has {d.shape[0]} rows of {d.dtype}, "
                                       f"expected {n} of {dt}")
            if first_layout is None:
                first_layout, first_attrs = layout, attrs
                first_raw = dict(attrs)
            else:
                diff = first_layout.differences(layout)
                if diff:
                    raise LrpflowError(f"join(): shard {p} has another layout than {srcs[0]}: {'; '.join(diff)}")
                if attrs.get("model_sha256", "") != first_attrs.get("model_sha256", ""):
                    raise LrpflowError(f"join(): shard {p} was computed with another model (model_sha256 "
                                       f"{attrs.get('model_sha256')!r}, first shard {first_attrs.get('model_sha256')!r})")
                diff_cfg = config_diff(first_attrs.get("config", ""), attrs.get("config", ""),
                                       ("data.shard", "data.num_shards"))
                if diff_cfg:
                    logger.warning("join(): shard %s has another config than %s: %s", p, srcs[0], "; ".join(diff_cfg))
            rows.append(n)
            ranges.append(attrs.get("rows"))
            resumes += int(attrs.get("resumes", 0) or 0)
    assert first_layout is not None
    names = [os.path.relpath(p, os.path.dirname(out)) if relative else p for p in srcs]
    total = sum(rows)

    tmp = _partial(out)
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        with h5py.File(tmp, "w", libver=_LIBVER) as f:
            set_attrs(f.attrs, first_raw)
            f.attrs["rows_complete"] = total
            f.attrs["expected_rows"] = total
            f.attrs["resumes"] = resumes
            span = joined_rows(ranges)
            if "rows" in f.attrs:  # the first shard's [lo, hi]: the joined store's rows, or none if not contiguous
                del f.attrs["rows"]
            if span is not None:
                f.attrs["rows"] = numpy.asarray(span, dtype=numpy.int64)
            elif any(r is not None for r in ranges):
                logger.warning("join(): the shards' rows %s are not contiguous; the joined store has no rows attribute",
                               ranges)
            f.attrs["complete"] = True
            f.attrs["shards"] = _names_attr(names)
            f.attrs["shard_rows"] = numpy.asarray(rows, dtype=numpy.int64)
            f.attrs["joined"] = fixed(_now())
            create_groups(f, first_layout)
            for field, (h5path, shape, dt, _) in first_layout.datasets().items():
                vl = h5py.VirtualLayout(shape=(total, *shape), dtype=dt, maxshape=(total, *shape))
                offset = 0
                for name, n in zip(names, rows):
                    if n:
                        # "%" starts a printf-like block specifier in VDS names; "%%" is a literal "%"
                        vl[offset:offset + n] = h5py.VirtualSource(name.replace("%", "%%"), h5path.replace("%", "%%"),
                                                                   shape=(n, *shape))
                    offset += n
                fill = -1 if dt.kind == "i" else (b"" if dt.kind == "S" else _FLOAT_FILL)
                d = f.create_virtual_dataset(h5path, vl, fillvalue=fill)
                if field.startswith(("metrics/", "intermediate/")):
                    d.attrs["name"] = fixed(field.split("/", 1)[1])
                if field.startswith("ledger/"):
                    d.attrs.create("nodes", _names_attr(first_layout.ledger_nodes))
        os.replace(tmp, out)
    except (OSError, RuntimeError) as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise write_error(tmp, err, "joining shards into it") from err
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("joined %d shard(s), %d rows, into %s", len(srcs), total, out)
    return out


def join_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``lrpflow-join OUT IN...``: join finished shard stores.

    Returns
    -------
    int
        0 on success, 2 on an error (message on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="lrpflow-join",
        description="Join finished lrpflow shard result stores into one HDF5 file of virtual datasets "
                    "(rows concatenated in the order given; no data is copied).")
    parser.add_argument("out", help="the joined store to write")
    parser.add_argument("inputs", nargs="+", help="shard stores, in shard order")
    parser.add_argument("--absolute", action="store_true",
                        help="reference shards by absolute path (default: relative to OUT's folder, "
                             "so OUT and its shards can move together)")
    parser.add_argument("-f", "--overwrite", action="store_true", help="replace OUT if it exists")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse wrote the message
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        join(args.inputs, args.out, relative=not args.absolute, overwrite=args.overwrite)
    except (LrpflowError, OSError) as err:
        sys.stderr.write(f"lrpflow-join: error: {err}\n")
        return 2
    return 0
