"""Shared foundations every component and stage builds on: params and dataset config
(:mod:`.config`), Zarr artifact stores (:mod:`.store`), video/frame input (:mod:`.io`), device and
precision (:mod:`.device`), checkpoint files (:mod:`.checkpoint`), pictures (:mod:`.draw`) and
stage plumbing (:mod:`.runtime`). Nothing here imports a component."""
