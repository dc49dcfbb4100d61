"""The operators' dashboard at `/ui` (docs/dashboard.md): server-rendered pages over the admin API's data.

Why server-rendered: no Node build at install or run time, nothing fetched from the internet, one strict
Content-Security-Policy (`script-src 'self'`, no inline script or style), and every page is a client of the
same query functions the JSON admin API answers with, so the UI holds no second source of truth. Charts
are SVG drawn on the server (`charts.py`); one small script (`static/ui.js`) refreshes live pages.
"""
