"""Finding the legs and the range: body and bone masks on slabs, left/right leg separation, and the
axial range to analyse (`--slices`, `--auto-range`). May import `core` and `scan`."""
