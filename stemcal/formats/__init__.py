"""4D-STEM file formats: one module per format, each with its reader check and its writer.

* :mod:`.npy` -- a 4D NumPy array;
* :mod:`.mib` -- Quantum Detectors Merlin ``.mib`` + ``.hdr``;
* :mod:`.dectris` -- DECTRIS-style HDF5 (bitshuffle-LZ4 data file + master);
* :mod:`.dataset` -- by suffix: :func:`open_dataset` (a LiberTEM data set, with
  one-line errors) and :func:`write_dataset`;
* :mod:`.common` -- :class:`DatasetError`, the probes' shared checks, atomic writing.
"""
from .common import (MAX_SIDE, DatasetError, atomic_output, check_destination, write_text)
from .dataset import dataset_files, describe, open_dataset, write_dataset
from .dectris import write_hdf5
from .mib import write_mib
from .npy import write_npy

__all__ = ["open_dataset", "describe", "DatasetError", "MAX_SIDE", "write_dataset",
           "dataset_files", "write_npy", "write_mib", "write_hdf5", "check_destination",
           "atomic_output", "write_text"]
