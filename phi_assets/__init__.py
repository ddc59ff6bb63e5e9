"""phi-factory: the Phi recipe as a graph of versioned Dagster assets, one package per stage."""
