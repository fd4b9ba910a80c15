"""The LRP conventions lrpflow follows, each with the paper or peer it follows.

``CONVENTIONS`` is the text ``lrpflow-info`` shows; ``ENTRIES`` the same as (name, text)
pairs. docs/conventions.md is the long form with the references.
"""
from __future__ import annotations

#: (name, text) of every convention, in the order shown
ENTRIES: tuple[tuple[str, str], ...] = (
    ("rule scope",
     "A rule given by name (explain(rule=X), a composite's default or input-layer rule) acts on layers "
     "with weights: kinds 'dense' and 'conv'. Every other linear map - sum, average and global-average "
     "pooling, mean reductions, sums of activations (residual Add), Resize, an unfolded BatchNorm - "
     "gets the proportional rule 'norm', whatever the rule's own epsilon or alpha; MaxPool is "
     "winner-take-all; elementwise activations pass relevance through; shape layers move it. Overrides "
     "by kind ('pool', 'add', 'max_pool'), node name or index still set any rule. As zennit's composites "
     "and iNNvestigate's analyzers do (Montavon et al. 2019, 'Layer-wise relevance propagation: an "
     "overview'). The toolbox surface (Sequential.lrp, set_lrp_parameters) keeps the toolbox's own "
     "per-layer rules, SumPool included."),
    ("norm",
     "R_i = sum_j x_i w_ij R_j / (z_j + s*sign(z_j)), s = 1e-16, sign(0) = +1: relevance in proportion to "
     "each input's share of the output; conserves exactly without a bias wherever z_j != 0 (zennit's Norm)."),
    ("epsilon sign",
     "LRP-epsilon divides by z_j + eps*sign(z_j) with sign(0) = +1 (the LRP toolbox and zennit), so a zero "
     "output still passes R_j/eps times its contributions; eps = 0 passes nothing through a zero output."),
    ("generalised gamma",
     "gamma: where the plain output z_j > 0, z_ij + gamma*(z_ij)+ over its sum plus b_j + gamma*b_j+ (the "
     "positive contributions favoured; for inputs >= 0 this is x(W + gamma W+)); where z_j < 0 the mirror "
     "image with (z_ij)- and b_j-; where z_j = 0 nothing. gamma = 0 is LRP-epsilon with eps = the "
     "stabiliser. Montavon et al. 2019; Andeol et al. 2021; zennit's Gamma."),
    ("batchnorm folding",
     "load_model folds every BatchNorm into the Conv/Linear that feeds it (fold_batchnorm=True; the "
     "default for every format but lrpflow's own HDF5 files, read as saved): "
     "W' = W s, b' = (b - mu) s + beta, s = gamma / sqrt(var + eps), computed and kept in float64, so a "
     "float64 explanation of the folded model is exact. fold_batchnorm=False keeps BN as an affine layer; "
     "like every BN that follows no Conv/Linear it gets 'norm', the z-rule with its shift absorbing (as "
     "iNNvestigate's BN handler; zennit passes relevance through an unmerged BN). Hui & "
     "Binder 2019; zennit's MergeBatchNorm canonizers. The merges are listed in model.canonizers."),
    ("zbox and wsquare",
     "z^B (zbox) and w^2 (wsquare) have no bias term (Montavon et al. 2017); zennit keeps the bias in "
     "z^B's x*W term and squares it in w^2 unless zero_params=['bias'] is given."),
    ("stabilisers",
     "Defaults: epsilon 1e-6; the denominators of z, z+, alpha-beta, gamma, z^B and norm 1e-16 "
     "(the toolbox's); zennit's composites default to 1e-6 - pass stabilizer=1e-16 to compare."),
    ("layouts",
     "ONNX models take and return NCHW (model.layout, explanation.layout); lrpflow's own models NHWC. "
     "Every renderer takes layout= ('NHWC' or 'NCHW'); without it a (C, H, W) sample is recognised only "
     "where the shape is unambiguous (at most 4 channels first, more than 4 columns last)."),
)

#: the conventions as one text (``lrpflow-info`` shows it)
CONVENTIONS = "\n\n".join(f"{name}: {text}" for name, text in ENTRIES)

__all__ = ["CONVENTIONS", "ENTRIES"]
