"""pdfusion.diffusion"""
