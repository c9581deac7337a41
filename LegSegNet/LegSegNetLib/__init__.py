"""LegSegNet core: Slicer-independent CT reading, leg range selection, segmentation engines,
body-composition quantification and reports. Shared by the `legsegnet` command line, the worker
process and the 3D Slicer module."""

__version__ = "0.1.0"
