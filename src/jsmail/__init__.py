"""jsmail: a mail gateway application framework on Twisted, shaped like qmail."""

__version__ = "0.1.0"
