"""The team dashboard served at `GET /`: server-rendered HTML and inline SVG, no script and no
network dependency. Its numbers come from meter.reports, the code behind the read API."""
