"""Curation (group ``curation``): quality filters, dedup, the educational-value classifier, decontamination."""
