"""Annotation rounds: sampling slices to review, exporting corrected slices to an nnU-Net training set,
and training the next round's model. May import everything below the pipeline (`core`, `scan`,
`anatomy`, `models`, `engines`, `measurement`)."""
