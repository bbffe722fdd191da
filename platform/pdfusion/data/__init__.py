"""pdfusion.data"""
