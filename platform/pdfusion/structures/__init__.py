"""Atomic structures: the `Particle` container, file I/O and the oxide nanoparticle generator."""

from pdfusion.structures.particle import Particle

__all__ = ["Particle"]
