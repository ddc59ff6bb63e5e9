"""Data ablations (phi-1 Figure 2.1, FineWeb's practice): equal-size models trained on equal tokens of each
data recipe, scored on held-out benchmark-aligned sets, compared with confidence intervals."""
