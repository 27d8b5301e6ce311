"""emtools: small Unix-style command-line tools for segmenting 3D electron-microscopy volumes.

Library modules hold pure numpy-in/numpy-out functions; ``emtools.io`` is the only module that
touches files; ``emtools.cli`` holds the thin click layer of each ``em-*`` tool.
"""

__version__ = "0.1.0"
