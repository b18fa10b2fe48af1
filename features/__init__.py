"""Stage one: video decoding, clip protocols, the I3D backbone and the HDF5 feature store."""
