"""Text inputs in the pipeline: vocabularies, and ids, mask and tokens stored next to the relevance per token."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lrpflow
from lrpflow.errors import ConfigError, DataFormatError
from lrpflow.io import open_data
from lrpflow.io.tokens import read_vocab
from lrpflow.store import load_results, write_results

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "transformers")


def test_vocab_txt_json_and_tokenizer_json(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n##lo wörld\n", encoding="utf-8")
    assert read_vocab(str(tmp_path / "vocab.txt")).tolist() == ["[PAD]", "hello", "##lo wörld"]
    (tmp_path / "vocab.json").write_text(json.dumps({"Ġthe": 2, "a": 0}))
    assert read_vocab(str(tmp_path / "vocab.json")).tolist() == ["a", "[1]", "Ġthe"]  # a gap reads as [id]
    bpe = {"model": {"type": "BPE", "vocab": {"x": 1, "y": 0}}, "added_tokens": [{"id": 2, "content": "<s>"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(bpe))
    assert read_vocab(str(tmp_path / "tokenizer.json")).tolist() == ["y", "x", "<s>"]
    unigram = {"model": {"type": "Unigram", "vocab": [["▁a", -1.5], ["b", -2.0]]}}
    (tmp_path / "unigram.json").write_text(json.dumps(unigram))
    assert read_vocab(str(tmp_path / "unigram.json")).tolist() == ["▁a", "b"]


@pytest.mark.parametrize("doc, match", [({"a": 10_000_000}, "expected dense ids"), ({"a": -1}, "id \\(integer ≥ 0\\)"),
                                        ({"a": "1"}, "token 'a'"), ([1, 2], "got a JSON list"),
                                        ({"model": {"vocab": 3}}, "model.vocab must be")])
def test_bad_vocabularies_name_the_file_and_field(tmp_path, doc, match):
    p = tmp_path / "v.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(DataFormatError, match=match) as err:
        read_vocab(str(p))
    assert "v.json" in str(err.value)


def test_token_source_with_vocab_and_npz_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(8)))
    (tmp_path / "ids.txt").write_text("5 6 7\n1 2\n")
    src = open_data(str(tmp_path / "ids.txt"), format="tokens", vocab=str(tmp_path / "vocab.txt"))
    assert src.tokens.tolist() == [["t5", "t6", "t7"], ["t1", "t2", "t0"]]  # padding reads as the pad id's token
    (tmp_path / "big.txt").write_text("9\n")
    with pytest.raises(DataFormatError, match="token id 9 is not in the vocabulary"):
        open_data(str(tmp_path / "big.txt"), format="tokens", vocab=str(tmp_path / "vocab.txt"))
    np.savez(tmp_path / "t.npz", ids=np.array([[1, 2, 3]]), mask=np.array([[1, 1, 0]]),
             tokens=np.array([["a", "b", "pad"]]))
    s = open_data(str(tmp_path / "t.npz"), format="tokens", length=4)
    assert s.tokens.tolist() == [["a", "b", "", ""]] and s[:].tolist() == [[1, 2, 0, 0]]
    np.savez(tmp_path / "bad.npz", ids=np.array([[1, 2]]), tokens=np.array([["a"]]))
    with pytest.raises(DataFormatError, match="tokens must be a unicode array shaped like the ids"):
        open_data(str(tmp_path / "bad.npz"), format="tokens")


def test_write_results_keeps_ids_mask_and_tokens(tmp_path):
    model = lrpflow.load_model(os.path.join(FIX, "bert_legacy.onnx"))
    ids = np.load(os.path.join(FIX, "bert.npz"))["ids"]
    exp = lrpflow.explain(model, ids, composite="attnlrp", epsilon=0.0)
    long_token = "é" * 70  # 140 bytes of UTF-8: cut to 64 characters (128 bytes), never split inside one
    tokens = np.array([[f"w{i}" for i in row] for row in ids], dtype=object)
    tokens[0, 0] = long_token
    mask = np.ones(ids.shape, dtype=bool)
    mask[1, -2:] = False
    write_results(exp, tmp_path / "r.h5", input_ids=ids, mask=mask, tokens=tokens)
    r = load_results(tmp_path / "r.h5")
    np.testing.assert_array_equal(r.input_ids, ids)
    np.testing.assert_array_equal(r.mask, mask)
    assert r.tokens[0, 0] == "é" * 64 and r.tokens[1].tolist() == tokens[1].tolist()
    assert r.relevance.shape == ids.shape
    with pytest.raises(ConfigError, match="tokens= needs input_ids="):
        write_results(exp, tmp_path / "s.h5", tokens=tokens)


def test_text_classifier_run_stores_ids_mask_and_tokens(tmp_path):
    pytest.importorskip("onnx")
    ids = np.load(os.path.join(FIX, "bert.npz"))["ids"]
    lines = [" ".join(map(str, ids[0])), " ".join(map(str, ids[1][:-2]))]  # the second sequence is padded
    (tmp_path / "ids.txt").write_text("\n".join(lines) + "\n")
    vocab = [f"tok{i}" for i in range(int(ids.max()) + 1)]
    vocab[0] = "[PAD]"
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    model = os.path.join(FIX, "bert_legacy.onnx")
    cmd = [sys.executable, "-c", "from lrpflow.cli import main; main()", "progress=false",
           f"hydra.run.dir={tmp_path / 'run'}", "experiment=text_classifier", f"model.path={model}",
           f"data.path={tmp_path / 'ids.txt'}", f"data.options.vocab={tmp_path / 'vocab.txt'}", "lrp.epsilon=0.0"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, LRPFLOW_CACHE=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    padded = ids.copy()
    padded[1, -2:] = 0
    r = load_results(tmp_path / "run" / "results.h5")
    np.testing.assert_array_equal(r.input_ids, padded)
    assert r.mask.tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    assert r.tokens.tolist() == [[vocab[i] for i in row] for row in padded]
    want = lrpflow.explain(lrpflow.load_model(model), padded, composite="attnlrp", epsilon=0.0).relevance
    np.testing.assert_allclose(r.relevance, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # token heatmaps of both sequences, padding left out, drawn while the run went on
    run = tmp_path / "run"
    pages = [(run / "heatmaps" / f"00000{i}_tokens.html").read_text() for i in (0, 1)]
    assert [p.count("<span") for p in pages] == [6, 4]
    assert all(f">{vocab[t]}<" in pages[1] for t in padded[1][:4]) and "[PAD]" not in pages[1]
    first = (run / "heatmaps" / "000001_tokens.png").read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tok" in (run / "samples" / "000001.html").read_text()  # the sample page shows the tokens
    # a rerun of the complete job draws missing heatmaps from the store: the same file
    (run / "heatmaps" / "000001_tokens.png").unlink()
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, LRPFLOW_CACHE=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "heatmaps" / "000001_tokens.png").read_bytes() == first
