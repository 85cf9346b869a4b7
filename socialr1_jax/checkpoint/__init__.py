"""Stage: checkpoints. The HF-name/layout table (`hf_layout`), torch-free safetensors I/O
(`safetensors_io`), Orbax checkpoints (`orbax_io`), the converters' streaming writer (`stream`)
and `load_model` for either kind (`loading`)."""
