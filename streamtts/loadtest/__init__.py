"""``streamtts loadtest``: client loops against a running server (tools, not needed by the
server): ``run`` (the loops and the command), ``session`` (the behaviours), ``wire`` (one
session's frames, checked) and ``report`` (the summary)."""
