"""pdfusion.evaluation"""
