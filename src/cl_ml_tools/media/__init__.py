"""Media: what a file is and how to read it (sniffing, image and video decoding, atomic writes). The bottom
layer: it imports nothing else of the package."""
