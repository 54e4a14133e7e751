"""The interactive browser app (``stemcal app``; also in the IPython profile and in Jupyter).

It shows a dataset's point, selected, shifted-sum and sum images for a
geometry set with sliders and fields (rotation, flip, overfocus, centre,
descan), re-projected from the fit's reduced cache at every change; *Auto*
(a cold start), *Refine from here* and *Record* (a manual calibration record
with its provenance); the catalog's history with each record's images; and,
in an acquisition session, the live run. Plain Bokeh (a Bokeh server).

* :mod:`.projection` -- the cache re-projected for a geometry (:class:`CacheProjector`);
* :mod:`.sources` -- what is adjusted: a data file or a record's frames;
* :mod:`.actions` -- the jobs: Auto, Refine from here, Record;
* :mod:`.progress` -- their progress, stage by stage; :mod:`.worker` -- the
  latest-request-wins redraw thread; :mod:`.background` -- work off the page's thread;
* :mod:`.controls`, :mod:`.figures` -- sliders and fields, image rows (Bokeh models);
* :mod:`.adjust_tab`, :mod:`.history_tab`, :mod:`.live_tab` -- the tabs of a page;
* :mod:`.application` -- :class:`StemcalApp`, what the app holds, and its pages;
* :mod:`.server` -- serving it: :func:`serve`, :class:`AppServer`, :func:`show_in_notebook`.
"""
from .application import StemcalApp
from .server import AppServer, serve, show_in_notebook
from .sources import Sizes

__all__ = ["StemcalApp", "AppServer", "serve", "show_in_notebook", "Sizes"]
