"""`cpmae review`: a local web page over a batch output folder, and its static report.

``cases`` reads the batch's records and writes decisions (no web dependencies); ``app`` is the
trame / trame-slicer page (imported only by the command); ``report`` writes the static summary.
"""
