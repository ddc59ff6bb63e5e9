"""The base models the data stages use (group ``synthetic``): ``generator_model``, the LLM that annotates
and generates."""
