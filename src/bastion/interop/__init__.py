"""Hugging Face interoperability without torch: configs (hf_config.py), parameter names and safetensors files
(hf_files.py). The torch side (loading weights into a plan, exporting a checkpoint) is runtime/hf_weights.py."""
