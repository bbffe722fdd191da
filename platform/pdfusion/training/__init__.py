"""pdfusion.training"""
