"""AttnLRP heatmaps/s on a BERT-style encoder against the floor: torch forward + input-embedding gradient.

    python benchmarks/bench_transformer.py --torch-python /work/venv-gen/bin/python [--threads 2]

Model: ``BertForSequenceClassification`` (random weights, nothing downloaded), hidden 64, 2 layers,
4 heads, intermediate 256, sequence 128, batch 16, float32, exported with torch's TorchScript
exporter (opset 17). The torch part (export and floor) runs in ``--torch-python`` (or here, if torch
imports); lrpflow runs in this interpreter. Both use ``--threads`` threads. Prints the median time
per batch, heatmaps/s and the ratio lrpflow / floor (no pass/fail).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HIDDEN, LAYERS, HEADS, SEQ, BATCH, VOCAB = 64, 2, 4, 128, 16, 1000


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def torch_part(out: str, threads: int, repeats: int) -> None:
    """Export the model to ``out/bert.onnx`` and time the floor; writes ``out/floor.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(threads)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=4 * HIDDEN, max_position_embeddings=512, num_labels=2,
                     attn_implementation="eager")
    torch.manual_seed(0)
    m = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(input_ids=x).logits

    import warnings

    warnings.filterwarnings("ignore")
    torch.onnx.export(Wrap(), (ids,), os.path.join(out, "bert.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])

    def floor() -> None:
        e = m.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
        logits = m(inputs_embeds=e).logits
        torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), e)

    t = _median_time(floor, repeats)
    with open(os.path.join(out, "floor.json"), "w") as f:
        json.dump({"seconds": t, "threads": threads}, f)
    import numpy

    numpy.save(os.path.join(out, "ids.npy"), ids.numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-python", default=sys.executable, help="interpreter with torch and transformers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-part", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_part:
        torch_part(args.torch_part, args.threads, args.repeats)
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.torch_python, os.path.abspath(__file__), "--torch-part", tmp, "--threads",
                        str(args.threads), "--repeats", str(args.repeats)], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        import numpy

        import lrpflow

        floor = json.load(open(os.path.join(tmp, "floor.json")))["seconds"]
        ids = numpy.load(os.path.join(tmp, "ids.npy"))
        model = lrpflow.load_model(os.path.join(tmp, "bert.onnx"))
        ex = lrpflow.Explainer(model, composite="attnlrp", dtype="float32", ledger=False)
        t = _median_time(lambda: ex.explain(ids), args.repeats)
    print(f"BERT-style encoder: hidden {HIDDEN}, {LAYERS} layers, sequence {SEQ}, batch {BATCH}, float32, "
          f"{args.threads} threads")
    print(f"  floor (torch forward + input-embedding gradient): {floor * 1e3:8.1f} ms/batch  "
          f"{BATCH / floor:8.1f} heatmaps/s")
    print(f"  lrpflow attnlrp:                                  {t * 1e3:8.1f} ms/batch  {BATCH / t:8.1f} heatmaps/s")
    print(f"  ratio lrpflow / floor: {t / floor:.2f}")


if __name__ == "__main__":
    main()
