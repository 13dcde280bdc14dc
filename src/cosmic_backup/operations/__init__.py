"""The use cases (backup, restore, verify, prune, status...), one module each.

They compose components, the catalog, storage and the format; they never print: what the
operator should see goes through the runtime's `say` and the values they return.
"""
