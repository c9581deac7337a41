"""The model store: nnU-Net model folders (published layout or results folders) read as untrusted input,
and installing them into the per-user store from folders, archives, URLs and the Hugging Face hub.

`folder` finds and validates a model folder and reads its plans (checked by `plans_names`); `checkpoints`
loads checkpoints weights-only and is the one place that imports torch; `archives` extracts a model from an
untrusted zip; `download` fetches an https:// archive; `hub` fetches `hf:` repositories with huggingface_hub;
`store` installs, lists and removes models. May import `core`.
"""
