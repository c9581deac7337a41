"""The model store: nnU-Net model folders (published layout or results folders), their plans and
checkpoints read as untrusted input, installing from folders, archives, URLs and the Hugging Face hub,
and the per-user store. May import `core`."""
