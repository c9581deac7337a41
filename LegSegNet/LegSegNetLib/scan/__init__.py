"""Reading the scan: `CTVolume` (the CT in Hounsfield units with its geometry and the slab axis
convention) and the readers for NIfTI, NRRD, MetaImage, DICOM and PNG input, with the checks that a file
really is a complete CT before its voxels are used. May import only `core`."""
