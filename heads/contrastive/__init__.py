"""CoRe (group-aware contrastive regression, Yu et al., ICCV 2021) and DAE-CoRe: the regression tree, its kernels,
the exemplars a query is compared with, the two heads and their fitters."""
