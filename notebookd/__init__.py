"""notebookd: one jupyter_server per Unix user, supervised by one daemon."""

__version__ = "0.1.0"
