"""lrpflow-caffe's demonstrator (``lrpflow-caffe-demo CONFIG FILELIST PREFIX``) end to end on tiny images.

The expected net input is rebuilt here by explicit index arithmetic (resize, cut, RGB→BGR, mean
at the same position), the expected relevance by lrpflow's explainer on that input; output
files are parsed back and checked for format and values.
"""
from __future__ import annotations

import json
import os

import numpy
import pytest

pytest.importorskip("lrpflow_caffe")

import caffe_nets  # noqa: E402
import lrpflow  # noqa: E402
from lrpflow.errors import ConfigError, LrpflowError  # noqa: E402
from lrpflow_caffe import demo  # noqa: E402

CONFIG = """param_file
{proto}

model_file
{model}

mean_file
{mean}

synsetfile
synsets.txt


use_mean_file_asbinaryprotoblob
{mean_mode}

lastlayerindex
{last}

-1 finds lowest softmax layer and inserts at the layer below in the top vector
-2 find the highest innerproduct layer and inserts at this layer in the top vector

firstlayerindex
0

numclasses
7

baseimgsize
16

standalone_outpath
./lrp_output

standalone_rootpath
someimages

epsstab
{eps}

alphabeta_beta
1

relpropformulatype
{rtype}

auxiliaryvariable_maxlayerindexforflatdistinconv
{flat}



"""


def _mean_blob(path, mean):
    """A binaryproto with the legacy 4-D fields, as ILSVRC's imagenet_mean.binaryproto."""
    from lrpflow_caffe import caffe_subset_pb2 as pb

    blob = pb.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    blob.data.extend(mean.astype(numpy.float32).ravel().tolist())
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())


def _mean_text(path, mean):
    """The demonstrator's text mean: C, H W, then per channel value[h + w·H]."""
    c, h, w = mean.shape
    vals = [f"{v:.9g}" for ch in range(c) for col in range(w) for v in mean[ch, :, col]]
    with open(path, "w") as f:
        f.write(f"{c}\n{h} {w}\n" + "\n".join(vals) + "\n")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A LeNet-like net (input 3×12×12, 7 classes), a 16×18 mean, four images, in tmp_path (the cwd)."""
    monkeypatch.chdir(tmp_path)
    rng = numpy.random.default_rng(3)
    proto, model = caffe_nets.write_net(tmp_path, "lenet", caffe_nets.LENET, caffe_nets.lenet_weights(rng))
    mean = rng.uniform(90, 140, (3, 16, 18)).astype(numpy.float32)
    _mean_blob(tmp_path / "mean.binaryproto", mean)
    _mean_text(tmp_path / "mean.txt", mean)
    (tmp_path / "synsets.txt").write_text("\n".join(f"n{i:08d} class {i}" for i in range(7)) + "\n")
    img_dir = tmp_path / "data" / "someimages" / "sub"
    img_dir.mkdir(parents=True)
    images = {"wide.png": rng.integers(0, 256, (10, 14, 3)), "tall.png": rng.integers(0, 256, (21, 15, 3)),
              "gray.png": rng.integers(0, 256, (16, 16)), "square.png": rng.integers(0, 256, (16, 16, 3))}
    for name, arr in images.items():
        lrpflow.io.save_data(arr.astype(numpy.uint8), img_dir / name)
    (tmp_path / "files.txt").write_text("someimages/sub/wide.png -1\n\nsomeimages/sub/tall.png -2\n"
                                        "someimages/sub/gray.png 3\nsomeimages/sub/square.png 0\n")
    return {"dir": tmp_path, "proto": "lenet.prototxt", "model": "lenet.caffemodel", "mean": mean, "images": images}


def write_config(ws, name="config.txt", mean="mean.binaryproto", mean_mode=1, last=-1, eps=0.01, rtype=0, flat=0):
    text = CONFIG.format(proto=ws["proto"], model=ws["model"], mean=mean, mean_mode=mean_mode, last=last, eps=eps,
                         rtype=rtype, flat=flat)
    (ws["dir"] / name).write_text(text)
    return name


def reference_input(ws, name):
    """The net input of the demonstrator for one image, by explicit index arithmetic (C++ semantics)."""
    import skimage.transform

    img = ws["images"][name].astype(numpy.float64)
    if img.ndim == 2:
        img = numpy.repeat(img[:, :, None], 3, axis=2)
    rows, cols = img.shape[:2]
    r = 16 / (cols if cols > rows else rows)
    size = (int(round(rows * r)), int(round(cols * r)))
    if size != (rows, cols):
        img = skimage.transform.resize(img, (*size, 3), order=1, anti_aliasing=True, preserve_range=True)
    hei, wid = img.shape[:2]
    border = (16 - 12) // 2
    crop = numpy.zeros((12, 12, 3))
    for h in range(12):
        for w in range(12):
            if hei > wid:
                hh = border + h
                ww = (wid - 12) // 2 + w if wid >= 12 else min(max(w - (12 - wid) // 2, 0), wid - 1)
            else:
                ww = border + w
                hh = (hei - 12) // 2 + h if hei >= 12 else min(max(h - (12 - hei) // 2, 0), hei - 1)
            crop[h, w] = img[hh, ww]
    mean = ws["mean"]  # (3, 16, 18) BGR
    bm = min((16 - 12) // 2, (18 - 12) // 2)
    top, left = (bm, (18 - 12) // 2) if hei > wid else ((16 - 12) // 2, bm)
    x = numpy.zeros((3, 12, 12))
    for c in range(3):  # net channel c (BGR) = image channel 2 − c minus mean channel c
        x[c] = crop[:, :, 2 - c] - mean[c, top : top + 12, left : left + 12]
    return x, crop


def parse_rawhm(path):
    lines = open(path).read().split("\n")
    assert lines[0] == "3" and lines[1] == "12 12"
    rows = lines[2:-1]
    assert len(rows) == 36 and lines[-1] == ""
    for row in rows:
        assert row.endswith(" ") and not row.endswith("  ") and len(row.split(" ")) == 13
    vals = numpy.array([[float(v) for v in row.split()] for row in rows]).reshape(3, 12, 12)
    return vals, rows


NAMES = ["wide.png", "tall.png", "gray.png", "square.png"]
TARGETS = [-1, -2, 3, 0]


def test_demo_end_to_end_files_and_values(workspace):
    ws = workspace
    cfg = write_config(ws)
    assert demo.main([cfg, "files.txt", "data"]) == 0
    model = lrpflow.load_model(ws["proto"], weights=ws["model"])
    out = ws["dir"] / "lrp_output" / "someimages" / "sub"
    for name, target in zip(NAMES, TARGETS):
        x, crop = reference_input(ws, name)
        y = model.run(model.to_nhwc(x[None].astype(numpy.float32)))[0][0].astype(numpy.float64)  # softmax output
        order = numpy.argsort(-y, kind="stable")
        classes = order[:1] if target == -1 else order[:5] if target == -2 else [target]
        exp = lrpflow.Explainer(model, composite={"default": {"rule": "epsilon", "epsilon": 0.01},
                                                  "overrides": [{"kind": "avg_pool", "rule": "z"}, {"kind": "add", "rule": "z"}]})
        trace = exp.forward(x[None])
        mask = numpy.zeros((1, 7))
        mask[0, classes] = 1
        ref = exp.explain(trace=trace, target=numpy.asarray(trace.logits) * mask).relevance[0]
        base = str(out / name)
        vals, rows = parse_rawhm(base + "_rawhm.txt")
        numpy.testing.assert_allclose(vals, ref[::-1], rtol=2e-5, atol=1e-6 * numpy.abs(ref).max())  # R, G, B order
        assert rows[0] == "".join(f"{v:g} " for v in vals[0, 0])  # %g, 6 significant digits
        top = [line.split() for line in open(base + "_toptenscores.txt").read().splitlines()]
        assert len(top) == 7 and [int(c) for c, _ in top] == list(order)
        numpy.testing.assert_allclose([float(p) for _, p in top], y[order], rtol=1e-5)
        shown = lrpflow.io.load_data(base + "_as_inputted_into_the_dnn.png")[0]
        numpy.testing.assert_allclose(shown, crop, atol=1.0)  # RGB, 0..255 after rounding
        hm = lrpflow.io.load_data(base + "_heatmap.png")[0]
        v = vals.mean(axis=0)
        pos = numpy.clip(v / v.max(), 0, 1) * (v >= 0)
        numpy.testing.assert_allclose(hm[:, :, 0], numpy.round(pos * 255), atol=1)
        numpy.testing.assert_allclose(hm[:, :, 2], numpy.round(numpy.clip(-v / v.max(), 0, 1) * (v < 0) * 255), atol=1)
        assert not (out / (name + "_top10scores.txt")).exists()


def test_text_mean_equals_binaryproto_mean(workspace):
    ws = workspace
    a = demo.read_mean("mean.binaryproto", 1)
    b = demo.read_mean("mean.txt", 0)
    numpy.testing.assert_allclose(a, ws["mean"], rtol=1e-6)
    numpy.testing.assert_allclose(b, ws["mean"], rtol=1e-6)
    numpy.testing.assert_allclose(demo.read_mean("mean.binaryproto", 2), ws["mean"][::-1], rtol=1e-6)
    demo.main([write_config(ws, "c1.txt"), "files.txt", "data"])
    first, _ = parse_rawhm("lrp_output/someimages/sub/tall.png_rawhm.txt")
    demo.main([write_config(ws, "c0.txt", mean="mean.txt", mean_mode=0), "files.txt", "data"])
    second, _ = parse_rawhm("lrp_output/someimages/sub/tall.png_rawhm.txt")
    numpy.testing.assert_allclose(second, first, rtol=1e-4, atol=1e-5 * numpy.abs(first).max())


@pytest.mark.parametrize("rtype", [0, 2, 11, 99, 26])
def test_every_relpropformulatype(workspace, rtype):
    ws = workspace
    cfg = write_config(ws, rtype=rtype, last=-2)
    d = demo.Demonstrator(cfg, "files.txt", "data", dtype="float64", write=False)
    assert d.start == "ip2"  # −2: the highest InnerProduct
    d.run(batch_size=3)
    x = numpy.stack([reference_input(ws, n)[0] for n in NAMES])
    model = d.explain_model
    if rtype in (0, 2):
        default = {"rule": "epsilon", "epsilon": 0.01} if rtype == 0 else {"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0}
        exp = lrpflow.Explainer(model, composite={"default": default, "overrides": [{"kind": "avg_pool", "rule": "z"}]},
                                dtype="float64")
    else:
        exp = lrpflow.Explainer(model, rule="gradient" if rtype != 26 else "deconvnet", dtype="float64")
    for i, res in enumerate(d.results):
        trace = exp.forward(x[i : i + 1])
        mask = numpy.zeros((1, 7))
        mask[0, list(res.classes)] = 1
        r0 = mask if rtype in (11, 99, 26) else trace.logits * mask
        ref = exp.explain(trace=trace, target=r0).relevance[0]
        if rtype in (11, 99):
            ref = numpy.repeat(numpy.sqrt((ref ** 2).sum(axis=0, keepdims=True)), 3, axis=0)
            assert (res.rawhm >= 0).all()
        numpy.testing.assert_allclose(res.rawhm, ref, rtol=1e-6, atol=1e-9 * max(1.0, numpy.abs(ref).max()))
        assert len(res.classes) == (5 if TARGETS[i] == -2 else 1)


def test_float32_agrees_with_float64(workspace):
    ws = workspace
    cfg = write_config(ws)
    r = {}
    for dtype in ("float32", "float64"):
        d = demo.Demonstrator(cfg, "files.txt", "data", dtype=dtype, write=False)
        d.run()
        r[dtype] = numpy.stack([res.rawhm for res in d.results])
    scale = numpy.abs(r["float64"]).max()
    assert numpy.abs(r["float32"] - r["float64"]).max() <= 1e-4 * scale


def test_lastlayerindex_k_and_flat_on_first_conv(workspace):
    ws = workspace
    d = demo.Demonstrator(write_config(ws, last=6, flat=1), "files.txt", "data", write=False)
    assert d.start == "ip1"  # layer 6 (Input is layer 0)
    comp = d.method["composite"]
    assert comp["overrides"][0] == {"name": "conv1", "rule": "flat"}
    assert not any(o.get("name") == "conv2" for o in comp["overrides"])
    d.run()
    assert all(numpy.isfinite(res.rawhm).all() for res in d.results)


def test_missing_image_is_reported_and_the_others_processed(workspace, capsys):
    ws = workspace
    os.remove(ws["dir"] / "data" / "someimages" / "sub" / "tall.png")
    (ws["dir"] / "data" / "someimages" / "sub" / "square.png").write_bytes(b"not an image")
    assert demo.main([write_config(ws), "files.txt", "data"]) == 1
    err = capsys.readouterr().err
    assert "files.txt:3" in err and "tall.png" in err and "files.txt:5" in err and "square.png" in err
    out = ws["dir"] / "lrp_output" / "someimages" / "sub"
    assert (out / "wide.png_rawhm.txt").exists() and (out / "gray.png_rawhm.txt").exists()
    assert not (out / "tall.png_rawhm.txt").exists()


def test_config_errors_name_file_and_line(workspace):
    ws = workspace
    cfg = write_config(ws)
    text = (ws["dir"] / cfg).read_text()
    (ws["dir"] / "bad1.txt").write_text(text.replace("epsstab\n0.01", "epsstab\nlots"))
    with pytest.raises(ConfigError, match=r"bad1.txt:\d+: epsstab must be a number, got 'lots'"):
        demo.read_config("bad1.txt")
    (ws["dir"] / "bad2.txt").write_text(text.replace("numclasses\n7\n", ""))
    with pytest.raises(ConfigError, match="bad2.txt: missing key 'numclasses'"):
        demo.read_config("bad2.txt")
    (ws["dir"] / "bad3.txt").write_text(text.replace("relpropformulatype\n0", "relpropformulatype\n5"))
    with pytest.raises(ConfigError, match=r"bad3.txt:\d+: relpropformulatype must be one of"):
        demo.read_config("bad3.txt")
    (ws["dir"] / "bad4.txt").write_text(text.replace("epsstab\n0.01", "epsstab\n\n0.01"))
    with pytest.raises(ConfigError, match=r"bad4.txt:\d+: key 'epsstab'.*needs a value"):
        demo.read_config("bad4.txt")
    (ws["dir"] / "list1.txt").write_text("someimages/sub/wide.png -1\nsomeimages/sub/tall.png top\n")
    with pytest.raises(ConfigError, match="list1.txt:2: the target must be"):
        demo.read_filelist("list1.txt", "data")
    (ws["dir"] / "list2.txt").write_text("someimages/sub/wide.png\n")
    with pytest.raises(ConfigError, match="list2.txt:1: expected"):
        demo.read_filelist("list2.txt", "data")
    (ws["dir"] / "list3.txt").write_text("elsewhere/wide.png -1\n")
    with pytest.raises(ConfigError, match="list3.txt:1: .*does not contain standalone_rootpath 'someimages'"):
        demo.Demonstrator(cfg, "list3.txt", "data")
    (ws["dir"] / "list4.txt").write_text("someimages/sub/wide.png 7\n")
    with pytest.raises(ConfigError, match="list4.txt:1: target class 7 is not below numclasses 7"):
        demo.Demonstrator(cfg, "list4.txt", "data")
    (ws["dir"] / "bad5.txt").write_text(text.replace("lenet.prototxt", "nothere.prototxt"))
    with pytest.raises(ConfigError, match=r"bad5.txt:2: param_file 'nothere.prototxt' is not a file"):
        demo.read_config("bad5.txt")
    assert demo.main(["bad5.txt", "files.txt", "data"]) == 2


def test_config_quirks_first_matching_line_and_first_token(tmp_path, workspace):
    ws = workspace
    cfg = write_config(ws)
    text = (ws["dir"] / cfg).read_text()
    # a free-text line starting with a key name comes first: it wins, as in the C++ (first line starting with the key)
    text = "some notes about this config\n\n" + text.replace("epsstab\n0.01", "epsstab  \n0.5 ignored words")
    (ws["dir"] / "quirk.txt").write_text(text)
    c = demo.read_config("quirk.txt")
    assert c.epsstab == 0.5 and c.lastlayerindex == -1 and c.numclasses == 7
    assert c.auxiliaryvariable_maxlayerindexforflatdistinconv == 0


def test_caffe_demo_experiment_writes_results_h5(workspace):
    from hydra import compose, initialize_config_module

    from lrpflow.pipeline import run
    from lrpflow.store import load

    ws = workspace
    cfg_file = write_config(ws)
    with initialize_config_module(config_module="lrpflow.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=caffe_demo", f"caffe.config={cfg_file}",
                                                       "caffe.filelist=files.txt", "caffe.prefix=data",
                                                       f"paths.output_dir={ws['dir'] / 'out'}", "progress=false",
                                                       "data.batch_size=3"])
    run(cfg)
    data = load(ws["dir"] / "out" / "results.h5")
    assert data["relevance"].shape == (4, 3, 12, 12)
    assert data["target"].shape == (4, 5) and list(data["label"]) == TARGETS
    summary = json.loads((ws["dir"] / "out" / "summary.json").read_text())
    assert summary["outputs"]["caffe_demo"]["heatmaps"] == 4 and summary["outputs"]["caffe_demo"]["start_node"] == "ip2"
    vals, _ = parse_rawhm(ws["dir"] / "lrp_output" / "someimages" / "sub" / "gray.png_rawhm.txt")
    numpy.testing.assert_allclose(vals, data["relevance"][2][::-1], rtol=1e-5, atol=1e-6 * numpy.abs(vals).max())
    os.remove(ws["dir"] / "data" / "someimages" / "sub" / "wide.png")
    with initialize_config_module(config_module="lrpflow.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=caffe_demo", f"caffe.config={cfg_file}",
                                                       "caffe.filelist=files.txt", "caffe.prefix=data",
                                                       f"paths.output_dir={ws['dir'] / 'out2'}", "progress=false"])
    with pytest.raises(LrpflowError, match="1 image.*wide.png"):
        run(cfg)
    assert (ws["dir"] / "out2" / "results.h5").exists()  # the store is complete before the job fails


def test_filelist_data_reader(workspace):
    ws = workspace
    src = lrpflow.io.open_data("files.txt", format="caffe_filelist", prefix="data", size=(12, 12), base_size=16,
                               mean="mean.txt", mean_format=0)
    assert src.shape == (4, 3, 12, 12) and list(src.labels) == TARGETS
    x = src[0:4]
    for i, name in enumerate(NAMES):
        numpy.testing.assert_allclose(x[i], reference_input(ws, name)[0], rtol=1e-6, atol=1e-4)


def test_demo_on_the_zoo_dag_with_flat_on_grouped_convolutions(workspace):
    """Zoo-like net (grouped conv, BN+Scale, LRN, Eltwise, AVE/MAX, Concat) from a training snapshot."""
    ws = workspace
    rng = numpy.random.default_rng(8)
    (ws["dir"] / "zoo.prototxt").write_text(caffe_nets.ZOO)
    _, snap = caffe_nets.write_net(ws["dir"], "zoo_snap", caffe_nets.ZOO, caffe_nets.zoo_weights(rng), snapshot=True)
    mean = rng.uniform(90, 140, (3, 20, 20))
    _mean_blob(ws["dir"] / "mean20.binaryproto", mean)
    text = CONFIG.format(proto="zoo.prototxt", model="zoo_snap.caffemodel", mean="mean20.binaryproto", mean_mode=1,
                         last=-1, eps=0.01, rtype=0, flat=8).replace("baseimgsize\n16", "baseimgsize\n18")
    (ws["dir"] / "zoo.txt").write_text(text)
    d = demo.Demonstrator("zoo.txt", "files.txt", "data", dtype="float64", write=False)
    assert d.start == "fc2"  # −1: the input of the lowest Softmax
    over = d.method["composite"]["overrides"]
    assert {"name": "conv1+bn1", "rule": "flat"} in over  # conv1 (index 1) with its folded BatchNorm
    assert {"name": "conv2a", "rule": "flat"} in over  # index 8, group 2: the core flat stays within groups
    assert d.explain_model.node("conv2a").layer.groups == 2
    assert not any(o.get("name") == "conv2b" for o in over)  # index 10 > 8
    d.run(batch_size=4)
    exp = lrpflow.Explainer(d.explain_model, composite=d.method["composite"], dtype="float64")
    for res in d.results:
        x, _ = demo.prepare_image(res.entry.path, (17, 17), 18, mean.astype(numpy.float32).astype(numpy.float64))
        trace = exp.forward(x[None])
        mask = numpy.zeros((1, 12))
        mask[0, list(res.classes)] = 1
        ref = exp.explain(trace=trace, target=numpy.asarray(trace.logits) * mask).relevance[0]
        numpy.testing.assert_allclose(res.rawhm, ref, rtol=1e-9, atol=1e-12)
        assert numpy.isfinite(res.rawhm).all() and numpy.abs(res.rawhm).sum() > 0



def test_console_script(workspace):
    import shutil
    import subprocess

    exe = shutil.which("lrpflow-caffe-demo")
    if exe is None:
        pytest.skip("lrpflow-caffe-demo is not on PATH (plugin installed without scripts)")
    done = subprocess.run([exe, write_config(workspace), "files.txt", "data", "--dtype", "float64"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 heatmaps written under ./lrp_output" in done.stdout
    assert (workspace["dir"] / "lrp_output" / "someimages" / "sub" / "square.png_toptenscores.txt").exists()
