"""What each metric measures, its scale and its direction: the text the HTML reports show."""
from __future__ import annotations

from typing import Any

#: metric → (explanation, True if higher is better / False if lower / None if neither)
METRIC_HELP: dict[str, tuple[str, bool | None]] = {
    "pixel_flipping": (
        "AOPC, the area over the perturbation curve (Samek et al. 2017): the regions the map calls most "
        "relevant are replaced by the baseline step by step (by default 20 steps up to 20% of the input), "
        "and AOPC is the mean drop of the explained class's logit over the steps. In logit units; higher "
        "is better; a random map gives the floor to compare against.", True),
    "pixel_flipping_auc": (
        "Normalised area under the same most-relevant-first perturbation curve: the mean logit while the "
        "most relevant regions are removed. In logit units; lower is better.", False),
    "conservation": (
        "Conservation error |ΣR_input − ΣR_init| / |ΣR_init| per sample: the share of the explained output "
        "that did not arrive at the input (absorbed by biases and stabilisers, see the ledger). Unitless; "
        "0 means fully conservative; rules with ε or biases are expected above 0.", False),
    "sparseness": (
        "Gini index of |R| (Chalasani et al. 2020): 0 when relevance is spread evenly over every feature, "
        "1 when one feature holds it all. Higher means a more concentrated map.", True),
    "complexity": (
        "Entropy of the relevance shares |R_i| / Σ|R| (Bhatt et al. 2020), in nats, between 0 and log D. "
        "Lower means fewer features carry the explanation.", False),
    "randomization_sanity": (
        "Spearman correlation between the maps of the trained model and of a model whose layers were "
        "randomised (Adebayo et al. 2018), in [−1, 1]. Near 0 is good: the explanation depends on what "
        "the model learned.", False),
    "topk_intersection": (
        "Share of the k most relevant features that lie inside the ground-truth mask, in [0, 1]. "
        "Higher is better.", True),
}


def metric_help(name: str) -> tuple[str, bool | None]:
    """``(text, higher_is_better)`` for a metric; the registered docstring's first line otherwise."""
    if name in METRIC_HELP:
        return METRIC_HELP[name]
    doc = ""
    try:
        from lrpflow.plugins import registries

        impl: Any = registries().metrics.get(name)
        doc = (impl.__doc__ or "").strip().splitlines()[0] if impl.__doc__ else ""
    except Exception:  # noqa: BLE001 - an unknown or broken plugin metric still gets a row
        doc = ""
    return (doc or "A metric registered by a plugin."), None
