"""pdfusion.tuning"""
