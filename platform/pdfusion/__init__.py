"""pdfusion: nanoparticle structures from their pair distribution function, by conditional diffusion.

The data path, one package each: structures -> pdf -> data -> diffusion -> evaluation;
training/, tuning/ and serving/ hold the Ray-facing library code that jobs/ and serve/ call.
"""

__version__ = "0.1.0"
