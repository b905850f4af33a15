"""``cpmae audit``: re-identification attack and brain-preservation audit of de-identification methods.

methods (the compared methods, one signature), utility (brain and downstream metrics),
renders (face pictures + cache), attack (Siamese attacker and scoring), dataset (which scans),
runner (one audit run), report (report.html, results.json, results.csv).
"""
