"""Across devices and hosts: the (data, fsdp, tensor) mesh and partition rules (`sharding`),
multi-host initialisation and per-host batch feeding (`distributed`)."""
