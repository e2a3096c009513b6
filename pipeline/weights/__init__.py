"""Weight resolution: every pretrained file the pipeline reads (RAFT, backbones) comes from a local
file, the cache, or a download for real users, is checksummed, and a missing one is a clear error."""
