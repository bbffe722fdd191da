"""pdfusion.serving"""
