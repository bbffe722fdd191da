"""pdfusion.pdf"""
