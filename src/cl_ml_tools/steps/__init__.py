"""Steps: one module per pipeline step, named as the step (its rule, table and config key), the shared
step machinery (:mod:`.common`) and the registry that declares every step once (:mod:`.registry`)."""
