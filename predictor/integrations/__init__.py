"""Bridges to other tools' plugin systems; each subpackage needs its own extra and is imported only by that tool."""
