"""modelyard.lab: the routing lab, out of the gateway's path.

Labelled data (`datasets`: the row schema, the loader, where the shared data lives; `converters`: the public
datasets), training the learned quality model (`training`), its metrics (`evaluation`), offline policy
replay through the real planner (`replay`) and the on-disk embedding cache (`embedding_cache`). Used by
`modelyard router`, `modelyard replay`, scripts/ and bench/; nothing in the gateway imports it. The model it
trains is loaded and run at request time by `modelyard.routing.learned`.
"""
