"""Route modules; app.py lists them all in one place."""
