"""One module per resource; `meter.api.app` includes their routers."""
