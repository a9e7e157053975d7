"""Files: HDF5 data (reading, validation, the default data) and atomic writes."""
