"""The objective prompt evaluator: requests, sample records, ACC, IFR, ECE, AUROC, PR-P, PR-N, the composite,
and bootstrap intervals."""
