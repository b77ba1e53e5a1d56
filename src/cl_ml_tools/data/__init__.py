"""Data: what the pipeline stores and is configured by: the tables' schemas and parts, the inventory of the
inputs and its shards, the config schema, and the neighbour search the whole-archive steps share."""
