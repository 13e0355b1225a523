"""The four services. Each module exposes `app` for `faststream run services.<name>:app`."""
