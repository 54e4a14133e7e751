# The interactive app on this session (docs/app.md): the live run of every scan the recorder
# handles, the catalog's history with each record's images, and adjusting a record by eye.
#   app_server = serve_app()     # prints the address to open in a browser (this machine only)
#   show_app()                   # in a Jupyter notebook cell instead
# Not in the queue server's RE Worker, which has no one to look at it.
if not _is_re_worker_active():
    from stemcal.app import AppServer as _AppServer
    from stemcal.app import StemcalApp as _StemcalApp
    from stemcal.app import show_in_notebook as _show_in_notebook

    stemcal_app = _StemcalApp(catalog=catalog, recorder=recorder)

    def serve_app(port=0, address="127.0.0.1"):
        """Serve the app from a background thread (``port`` 0: a free one); returns the
        server, whose ``url`` is printed; ``.stop()`` ends it."""
        server = _AppServer(stemcal_app, port=port, address=address).start()
        print(f"stemcal app: {server.url}")
        return server

    def show_app(notebook_url="localhost:8888"):
        """Show the app in this notebook cell (``notebook_url``: the notebook's host:port)."""
        return _show_in_notebook(stemcal_app, notebook_url)
