"""The detector's HDF5 writers: what a scan's frames become, and the documents that point there.

* :mod:`.scan_file` -- :class:`HDF5StreamWriter`: a triggered scan, one 4D event per file;
* :mod:`.frame_stream` -- :class:`FrameStreamWriter`: a live scan, one frame per index,
  written in SWMR mode and announced while it grows;
* :mod:`.mib_copy` -- the same, keeping a Merlin ``.mib`` copy of each scan;
* :mod:`.base` -- what they share.
"""
